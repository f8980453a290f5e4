// SPDX-License-Identifier: GPL-2.0
/*
 * json_harness.c: runs the guest's JSON parser (kernel/json.c) on the host
 * under AddressSanitizer/UBSan. Input on stdin: records of a 4-byte little
 * endian length and that many bytes. For each record it parses, looks up
 * "execute"/"arguments"/"id"/"path", unescapes strings and numbers, and
 * escapes the input back, as the agent does. Prints one line per record:
 * the token count (or the negative errno).
 */
#include <stdio.h>
#include <stdlib.h>
#include "json.h"

int main(void)
{
	static struct jtok toks[256];
	static char out[8192], esc[65536];
	unsigned char hdr[4];
	while (fread(hdr, 1, 4, stdin) == 4) {
		size_t n = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (size_t)hdr[3] << 24;
		char *buf = malloc(n ? n : 1);
		if (!buf || fread(buf, 1, n, stdin) != n)
			return 2;
		int nt = json_parse(buf, n, toks, 256);
		printf("%d\n", nt);
		if (nt > 0) {
			const char *keys[] = { "execute", "arguments", "id", "path", "addr" };
			for (int k = 0; k < 5; k++) {
				int v = json_get(buf, toks, nt, 0, keys[k]);
				int64_t i;
				uint64_t u;
				json_str(buf, toks, v, out, sizeof(out));
				json_int(buf, toks, v, &i);
				json_u64(buf, toks, v, &u);
				int a = json_get(buf, toks, nt, 1 < nt ? 2 : 0, keys[k]);
				json_str(buf, toks, a, out, 16);
			}
			for (int t = 0; t < nt; t++)
				json_str(buf, toks, t, out, sizeof(out));
		}
		struct seq_file m;
		seq_init(&m, esc, sizeof(esc));
		json_escape(&m, buf, n);
		free(buf);
	}
	return 0;
}
