// SPDX-License-Identifier: GPL-2.0
/* console.c: polled 16550 UARTs, printk with a ring buffer, panic. */
#include "kernel.h"

#define UART_RBR 0
#define UART_THR 0
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_DR 0x01
#define LSR_THRE 0x20

#define LOG_BUF_SIZE 65536

static char log_buf[LOG_BUF_SIZE];
static uint64_t log_head; /* total bytes ever logged */
static spinlock_t console_lock = SPINLOCK_INIT;
static volatile int oops_in_progress;

int console_printk[4] = {
	CONSOLE_LOGLEVEL_DEFAULT, /* console_loglevel */
	MESSAGE_LOGLEVEL_DEFAULT, /* default_message_loglevel */
	1,                        /* minimum_console_loglevel */
	CONSOLE_LOGLEVEL_DEFAULT, /* default_console_loglevel */
};

notrace void uart_init(uint16_t port)
{
	outb(port + UART_IER, 0x00); /* polled: no UART interrupts */
	outb(port + UART_LCR, 0x80); /* DLAB: 115200 baud */
	outb(port + 0, 0x01);
	outb(port + 1, 0x00);
	outb(port + UART_LCR, 0x03); /* 8N1 */
	outb(port + UART_FCR, 0x07);
	outb(port + UART_MCR, 0x03); /* DTR, RTS */
}

notrace void uart_putc(uint16_t port, char c)
{
	/* bounded wait: a host that never drains must not hang the guest */
	for (int i = 0; i < 100000 && !(inb(port + UART_LSR) & LSR_THRE); i++)
		cpu_relax();
	outb(port + UART_THR, (uint8_t)c);
}

notrace int uart_getc(uint16_t port)
{
	if (!(inb(port + UART_LSR) & LSR_DR))
		return -1;
	return inb(port + UART_RBR);
}

/*
 * uart_write: with the FIFO on (uart_init), THRE set means the 16-byte
 * transmit FIFO is empty, so one LSR poll covers 16 bytes: half the port
 * accesses (VM exits) of polling before every byte.
 */
notrace void uart_write(uint16_t port, const char *s, size_t n, int crlf)
{
	int room = 0;
	for (size_t i = 0; i < n; i++) {
		int need = (crlf && s[i] == '\n') ? 2 : 1;
		if (room < need) {
			for (int k = 0; k < 100000 && !(inb(port + UART_LSR) & LSR_THRE); k++)
				cpu_relax();
			room = 16;
		}
		if (need == 2)
			outb(port + UART_THR, '\r');
		outb(port + UART_THR, (uint8_t)s[i]);
		room -= need;
	}
}

static notrace void console_emit(const char *s, size_t n) { uart_write(PORT_COM1, s, n, 1); }

notrace void console_write(const char *s, size_t n)
{
	if (oops_in_progress) {
		console_emit(s, n);
		return;
	}
	uint64_t f = spin_lock_irqsave(&console_lock);
	console_emit(s, n);
	spin_unlock_irqrestore(&console_lock, f);
}

int vprintk(const char *fmt, va_list ap)
{
	char buf[512];
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	/* the log level, if the message starts with one (KERN_*) */
	const char *text = buf;
	int level = READ_ONCE(default_message_loglevel);
	if (n >= 2 && buf[0] == KERN_SOH[0] && buf[1] >= '0' && buf[1] <= '7') {
		level = buf[1] - '0';
		text += 2;
		n -= 2;
	}
	uint64_t f = 0;
	if (!oops_in_progress)
		f = spin_lock_irqsave(&console_lock);
	for (int i = 0; i < n; i++)
		log_buf[(log_head + i) % LOG_BUF_SIZE] = text[i];
	log_head += n;
	if (level < READ_ONCE(console_loglevel) || oops_in_progress)
		console_emit(text, n);
	if (!oops_in_progress)
		spin_unlock_irqrestore(&console_lock, f);
	return n;
}

int printk(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vprintk(fmt, ap);
	va_end(ap);
	return n;
}

/*
 * dmesg_read copies the ring out under the console lock, then emits it
 * with interrupts on (emitting may mean many port writes). The snapshot
 * buffer is guarded by a sleeping flag, not a spinlock, for that reason.
 */
void dmesg_read(void (*emit)(void *ctx, const char *s, size_t n), void *ctx)
{
	static char snap[LOG_BUF_SIZE];
	static volatile uint32_t snap_busy;
	while (__atomic_exchange_n(&snap_busy, 1, __ATOMIC_ACQUIRE))
		msleep(1);
	uint64_t f = spin_lock_irqsave(&console_lock);
	uint64_t head = log_head;
	uint64_t n = head < LOG_BUF_SIZE ? head : LOG_BUF_SIZE;
	for (uint64_t i = 0; i < n; i++)
		snap[i] = log_buf[(head - n + i) % LOG_BUF_SIZE];
	spin_unlock_irqrestore(&console_lock, f);
	emit(ctx, snap, n);
	__atomic_store_n(&snap_busy, 0, __ATOMIC_RELEASE);
}

notrace __noreturn void panic(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	irq_disable();
	oops_in_progress = 1;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	console_emit("Kernel panic: ", 14);
	console_emit(buf, strlen(buf));
	console_emit("\n", 1);
	power_off(100);
}

/* /proc/sys/kernel/printk: console_printk[], tab-separated, as in Linux */
int printk_sysctl_show(struct seq_file *m, void *v)
{
	(void)v;
	seq_printf(m, "%d\t%d\t%d\t%d\n", READ_ONCE(console_printk[0]), READ_ONCE(console_printk[1]),
		   READ_ONCE(console_printk[2]), READ_ONCE(console_printk[3]));
	return 0;
}

/* a write sets the first values given (1 to 4 numbers), as Linux's does */
int printk_sysctl_write(const char *data, size_t n)
{
	int v[4], nv = 0;
	size_t i = 0;
	while (i < n) {
		while (i < n && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n'))
			i++;
		size_t start = i;
		while (i < n && data[i] != ' ' && data[i] != '\t' && data[i] != '\n')
			i++;
		if (i == start)
			break;
		uint64_t x;
		if (nv == 4 || parse_u64(data + start, i - start, &x) || x > 0x7fffffff)
			return -EINVAL;
		v[nv++] = (int)x;
	}
	if (!nv)
		return -EINVAL;
	for (int k = 0; k < nv; k++)
		WRITE_ONCE(console_printk[k], v[k]);
	return 0;
}
