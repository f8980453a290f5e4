/* SPDX-License-Identifier: GPL-2.0 */
/* json.h: a small, bounded JSON parser (jsmn style) and string escaping. */
#ifndef KLP_JSON_H
#define KLP_JSON_H

#include "kernel.h"

enum jtype { J_NONE, J_OBJ, J_ARR, J_STR, J_NUM, J_LIT };

struct jtok {
	uint8_t type;
	uint32_t start, end; /* byte range; strings exclude the quotes */
	uint32_t size;       /* members (object: keys) */
	uint32_t next;       /* index of the token after this subtree */
};

#define JSON_MAX_DEPTH 16

/* json_parse returns the number of tokens, or -EINVAL / -E2BIG. */
int json_parse(const char *s, size_t n, struct jtok *t, int max);
/* value token of key in object tok obj, or -1 */
int json_get(const char *s, const struct jtok *t, int ntok, int obj, const char *key);
/* unescape a string token into out (NUL-terminated); length or -EINVAL/-E2BIG */
int json_str(const char *s, const struct jtok *t, int tok, char *out, size_t outsz);
/* integer token -> *v; 0 or -EINVAL */
int json_int(const char *s, const struct jtok *t, int tok, int64_t *v);
/* unsigned 64-bit: a non-negative integer number, or a string "123" / "0x7b" */
int json_u64(const char *s, const struct jtok *t, int tok, uint64_t *v);
/* append s[0:n] JSON-escaped (without quotes) */
void json_escape(struct seq_file *m, const char *s, size_t n);

#endif
