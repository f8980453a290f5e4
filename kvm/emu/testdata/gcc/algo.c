/* More typical -O2 code: loops, hashing, sorting, bit manipulation. */
#include <stdint.h>
#include <stddef.h>

uint32_t crc32(const uint8_t *p, size_t n)
{
	uint32_t c = ~0u;
	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0xedb88320u : c >> 1;
	}
	return ~c;
}

uint64_t fnv(const char *s) { uint64_t h = 1469598103934665603ull; while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ull; return h; }

void isort(long *a, int n)
{
	for (int i = 1; i < n; i++) {
		long v = a[i];
		int j = i - 1;
		while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
		a[j + 1] = v;
	}
}

static void swap(long *a, long *b) { long t = *a; *a = *b; *b = t; }
void qsort_(long *a, long lo, long hi)
{
	while (lo < hi) {
		long p = a[(lo + hi) / 2], i = lo, j = hi;
		while (i <= j) {
			while (a[i] < p) i++;
			while (a[j] > p) j--;
			if (i <= j) swap(&a[i++], &a[j--]);
		}
		if (j - lo < hi - i) { qsort_(a, lo, j); lo = i; } else { qsort_(a, i, hi); hi = j; }
	}
}

unsigned long gcd(unsigned long a, unsigned long b) { while (b) { unsigned long t = a % b; a = b; b = t; } return a; }
int isqrt(unsigned long x) { unsigned long r = 0, b = 1ul << 62; while (b > x) b >>= 2; while (b) { if (x >= r + b) { x -= r + b; r = (r >> 1) + b; } else r >>= 1; b >>= 2; } return (int)r; }
long sum16(const short *p, int n) { long s = 0; for (int i = 0; i < n; i++) s += p[i]; return s; }
unsigned char sat_add(unsigned char a, unsigned char b) { unsigned s = a + b; return s > 255 ? 255 : s; }
int bitrev(unsigned x) { int r = 0; for (int i = 0; i < 32; i++) { r = (r << 1) | (x & 1); x >>= 1; } return r; }
long fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
unsigned long mulmod(unsigned long a, unsigned long b, unsigned long m) { return (unsigned long)((unsigned __int128)a * b % m); }
long divs(long a, int b) { return a / b; }
unsigned mod3(unsigned a) { return a % 3; }
int cmp3(long a, long b) { return (a > b) - (a < b); }
long lsearch(const long *a, long n, long v) { for (long i = 0; i < n; i++) if (a[i] == v) return i; return -1; }
void fill(int *a, int n, int v) { for (int i = 0; i < n; i++) a[i] = v; }
void clear(char *a, unsigned n) { __builtin_memset(a, 0, n); }
void cpy(char *a, const char *b) { __builtin_memcpy(a, b, 200); }
struct node { struct node *l, *r; long key; };
struct node *find(struct node *t, long k) { while (t && t->key != k) t = k < t->key ? t->l : t->r; return t; }
int count_bits_loop(unsigned long x) { int n = 0; while (x) { x &= x - 1; n++; } return n; }
int8_t s8(int8_t a, int8_t b) { return (int8_t)(a / b); }
uint16_t u16div(uint16_t a, uint16_t b) { return a / b; }
