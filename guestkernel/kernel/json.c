// SPDX-License-Identifier: GPL-2.0
/*
 * json.c: recursive-descent JSON parser into a flat token array, with a
 * depth limit and a token limit, for the agent's requests (untrusted input
 * from the host side of COM2).
 */
#include "json.h"

struct jp {
	const char *s;
	size_t n, pos;
	struct jtok *t;
	int max, cnt;
};

static void skip_ws(struct jp *p)
{
	while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' ||
				 p->s[p->pos] == '\r'))
		p->pos++;
}

static int new_tok(struct jp *p, enum jtype type, uint32_t start)
{
	if (p->cnt >= p->max)
		return -E2BIG;
	struct jtok *t = &p->t[p->cnt];
	t->type = type;
	t->start = start;
	t->end = start;
	t->size = 0;
	t->next = 0;
	return p->cnt++;
}

static int is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static int parse_string(struct jp *p)
{
	p->pos++; /* opening quote */
	uint32_t start = (uint32_t)p->pos;
	while (p->pos < p->n) {
		unsigned char c = p->s[p->pos];
		if (c == '"') {
			int i = new_tok(p, J_STR, start);
			if (i < 0)
				return i;
			p->t[i].end = (uint32_t)p->pos;
			p->t[i].next = (uint32_t)p->cnt;
			p->pos++;
			return i;
		}
		if (c < 0x20)
			return -EINVAL;
		if (c == '\\') {
			p->pos++;
			if (p->pos >= p->n)
				return -EINVAL;
			c = p->s[p->pos];
			if (c == 'u') {
				for (int k = 1; k <= 4; k++)
					if (p->pos + k >= p->n || !is_hex(p->s[p->pos + k]))
						return -EINVAL;
				p->pos += 4;
			} else if (!strchr("\"\\/bfnrt", c)) {
				return -EINVAL;
			}
		}
		p->pos++;
	}
	return -EINVAL;
}

static int parse_value(struct jp *p, int depth);

static int parse_container(struct jp *p, int depth, int obj)
{
	if (depth >= JSON_MAX_DEPTH)
		return -E2BIG;
	int i = new_tok(p, obj ? J_OBJ : J_ARR, (uint32_t)p->pos);
	if (i < 0)
		return i;
	p->pos++;
	skip_ws(p);
	if (p->pos < p->n && p->s[p->pos] == (obj ? '}' : ']')) {
		p->pos++;
		p->t[i].end = (uint32_t)p->pos;
		p->t[i].next = (uint32_t)p->cnt;
		return i;
	}
	for (;;) {
		skip_ws(p);
		if (obj) {
			if (p->pos >= p->n || p->s[p->pos] != '"')
				return -EINVAL;
			int k = parse_string(p);
			if (k < 0)
				return k;
			skip_ws(p);
			if (p->pos >= p->n || p->s[p->pos] != ':')
				return -EINVAL;
			p->pos++;
		}
		int v = parse_value(p, depth + 1);
		if (v < 0)
			return v;
		p->t[i].size++;
		skip_ws(p);
		if (p->pos >= p->n)
			return -EINVAL;
		char c = p->s[p->pos++];
		if (c == ',')
			continue;
		if (c == (obj ? '}' : ']'))
			break;
		return -EINVAL;
	}
	p->t[i].end = (uint32_t)p->pos;
	p->t[i].next = (uint32_t)p->cnt;
	return i;
}

static int parse_value(struct jp *p, int depth)
{
	skip_ws(p);
	if (p->pos >= p->n)
		return -EINVAL;
	char c = p->s[p->pos];
	if (c == '{' || c == '[')
		return parse_container(p, depth, c == '{');
	if (c == '"')
		return parse_string(p);
	uint32_t start = (uint32_t)p->pos;
	if (c == '-' || (c >= '0' && c <= '9')) {
		while (p->pos < p->n && strchr("0123456789+-.eE", p->s[p->pos]) && p->s[p->pos])
			p->pos++;
		int i = new_tok(p, J_NUM, start);
		if (i < 0)
			return i;
		p->t[i].end = (uint32_t)p->pos;
		p->t[i].next = (uint32_t)p->cnt;
		return i;
	}
	static const char *const lits[] = { "true", "false", "null" };
	for (size_t k = 0; k < 3; k++) {
		size_t l = strlen(lits[k]);
		if (p->n - p->pos >= l && !strncmp(p->s + p->pos, lits[k], l)) {
			p->pos += l;
			int i = new_tok(p, J_LIT, start);
			if (i < 0)
				return i;
			p->t[i].end = (uint32_t)p->pos;
			p->t[i].next = (uint32_t)p->cnt;
			return i;
		}
	}
	return -EINVAL;
}

int json_parse(const char *s, size_t n, struct jtok *t, int max)
{
	struct jp p = { s, n, 0, t, max, 0 };
	int r = parse_value(&p, 0);
	if (r < 0)
		return r;
	skip_ws(&p);
	if (p.pos != n)
		return -EINVAL;
	return p.cnt;
}

static int tok_eq(const char *s, const struct jtok *t, const char *lit)
{
	size_t l = strlen(lit);
	return t->type == J_STR && t->end - t->start == l && !strncmp(s + t->start, lit, l);
}

int json_get(const char *s, const struct jtok *t, int ntok, int obj, const char *key)
{
	if (obj < 0 || obj >= ntok || t[obj].type != J_OBJ)
		return -1;
	int i = obj + 1;
	for (uint32_t k = 0; k < t[obj].size && i + 1 < ntok; k++) {
		int v = i + 1;
		if (tok_eq(s, &t[i], key))
			return v;
		i = (int)t[v].next;
	}
	return -1;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return c - 'A' + 10;
}

int json_str(const char *s, const struct jtok *t, int tok, char *out, size_t outsz)
{
	if (tok < 0 || t[tok].type != J_STR || outsz == 0)
		return -EINVAL;
	size_t o = 0;
	for (uint32_t i = t[tok].start; i < t[tok].end; i++) {
		char c = s[i];
		if (c == '\\') {
			c = s[++i];
			switch (c) {
			case 'n': c = '\n'; break;
			case 't': c = '\t'; break;
			case 'r': c = '\r'; break;
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'u': {
				unsigned v = 0;
				for (int k = 1; k <= 4; k++)
					v = v * 16 + hexval(s[i + k]);
				i += 4;
				if (v >= 0x80) {
					/* UTF-8 encode the BMP code point (surrogates kept as is) */
					char enc[3];
					size_t el;
					if (v < 0x800) {
						enc[0] = 0xc0 | (v >> 6);
						enc[1] = 0x80 | (v & 0x3f);
						el = 2;
					} else {
						enc[0] = 0xe0 | (v >> 12);
						enc[1] = 0x80 | ((v >> 6) & 0x3f);
						enc[2] = 0x80 | (v & 0x3f);
						el = 3;
					}
					if (o + el >= outsz)
						return -E2BIG;
					memcpy(out + o, enc, el);
					o += el;
					continue;
				}
				c = (char)v;
				break;
			}
			default:
				break; /* \" \\ \/ */
			}
		}
		if (o + 1 >= outsz)
			return -E2BIG;
		out[o++] = c;
	}
	out[o] = 0;
	return (int)o;
}

int json_int(const char *s, const struct jtok *t, int tok, int64_t *v)
{
	if (tok < 0 || t[tok].type != J_NUM)
		return -EINVAL;
	const char *p = s + t[tok].start;
	size_t n = t[tok].end - t[tok].start;
	int neg = 0;
	if (n && *p == '-') {
		neg = 1;
		p++;
		n--;
	}
	uint64_t u;
	if (parse_u64(p, n, &u) || u > (uint64_t)INT64_MAX)
		return -EINVAL;
	*v = neg ? -(int64_t)u : (int64_t)u;
	return 0;
}

int json_u64(const char *s, const struct jtok *t, int tok, uint64_t *v)
{
	if (tok < 0 || (t[tok].type != J_NUM && t[tok].type != J_STR))
		return -EINVAL;
	const char *p = s + t[tok].start;
	size_t n = t[tok].end - t[tok].start;
	if (t[tok].type == J_NUM && n > 2 && p[0] == '0')
		return -EINVAL; /* JSON has no leading zeros (nor hex numbers) */
	return parse_u64(p, n, v);
}

void json_escape(struct seq_file *m, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = s[i];
		if (c == '"' || c == '\\') {
			seq_putc(m, '\\');
			seq_putc(m, c);
		} else if (c == '\n') {
			seq_puts(m, "\\n");
		} else if (c == '\r') {
			seq_puts(m, "\\r");
		} else if (c == '\t') {
			seq_puts(m, "\\t");
		} else if (c < 0x20 || c == 0x7f) {
			seq_printf(m, "\\u%04x", c);
		} else {
			seq_putc(m, c);
		}
	}
}
