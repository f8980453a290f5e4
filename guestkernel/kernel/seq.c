// SPDX-License-Identifier: GPL-2.0
/* seq.c: seq_file output into a caller-provided buffer. */
#include "kernel.h"

void seq_init(struct seq_file *m, char *buf, size_t size)
{
	m->buf = buf;
	m->size = size;
	m->count = 0;
	m->overflow = 0;
	if (size)
		buf[0] = 0;
}

int seq_write(struct seq_file *m, const void *p, size_t n)
{
	size_t room = m->size > m->count + 1 ? m->size - m->count - 1 : 0;
	if (n > room) {
		n = room;
		m->overflow = 1;
	}
	memcpy(m->buf + m->count, p, n);
	m->count += n;
	if (m->size)
		m->buf[m->count] = 0;
	return m->overflow ? -1 : 0;
}

int seq_putc(struct seq_file *m, char c) { return seq_write(m, &c, 1); }

int seq_puts(struct seq_file *m, const char *s) { return seq_write(m, s, strlen(s)); }

int seq_vprintf(struct seq_file *m, const char *fmt, va_list ap)
{
	size_t room = m->size > m->count ? m->size - m->count : 0;
	int n = vsnprintf(m->buf + m->count, room, fmt, ap);
	if (n < 0)
		return -1;
	if ((size_t)n >= room) {
		m->overflow = 1;
		m->count = room ? m->size - 1 : m->count;
		return -1;
	}
	m->count += n;
	return 0;
}

int seq_printf(struct seq_file *m, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = seq_vprintf(m, fmt, ap);
	va_end(ap);
	return r;
}
