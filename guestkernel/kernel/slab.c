// SPDX-License-Identifier: GPL-2.0
/*
 * slab.c: kmalloc, kzalloc and kfree (Linux's slab API, kernel_api.h).
 *
 * A small general-purpose allocator on top of kmalloc_pages(), the page
 * heap, which never takes memory back. Requests up to 4080 bytes come from
 * power-of-two size classes (32 to 4096 bytes, a 16-byte header included)
 * carved out of whole pages, one free list per class; a larger request gets
 * a run of pages of its own, which kfree keeps on a list of free runs for
 * the next large request it fits (first fit, not split). So memory is
 * reused but never returned to the page heap.
 *
 * Never sleeps: one spinlock, taken with interrupts off, and every gfp_t
 * behaves like GFP_ATOMIC. Each object starts 16 bytes after a header
 * holding its class and the size asked for, and a magic that tells a live
 * object from a free one: kfree of a pointer kmalloc did not return, or of
 * an object already freed, is reported (WARN) and ignored instead of
 * corrupting a free list.
 */
#include "kernel.h"

#define KMALLOC_HDR 16
#define KMALLOC_MIN_SHIFT 5 /* 32 bytes */
#define KMALLOC_MAX_SHIFT 12 /* 4096 bytes */
#define KMALLOC_CLASSES (KMALLOC_MAX_SHIFT - KMALLOC_MIN_SHIFT + 1)
#define KMALLOC_LARGE 0x80000000u /* cls: a page run; the low bits count its pages */
#define KMALLOC_LIVE 0x4b4d4c56u  /* "VLMK" */
#define KMALLOC_FREE 0x4b4d4652u  /* "RFMK" */
#define PAGE_SIZE 4096UL

struct kmalloc_hdr {
	uint32_t magic;
	uint32_t cls;  /* class index, or KMALLOC_LARGE | pages */
	uint64_t size; /* bytes asked for (0 while free) */
};
_Static_assert(sizeof(struct kmalloc_hdr) == KMALLOC_HDR, "kmalloc header");

/* A free object's (or run's) first payload word links it into its list. */
struct kmalloc_free {
	struct kmalloc_free *next;
};

static spinlock_t slab_lock = SPINLOCK_INIT;
static struct kmalloc_free *free_lists[KMALLOC_CLASSES];
static struct kmalloc_free *free_runs;
static struct kmalloc_stats stats;

static inline struct kmalloc_hdr *hdr_of(const void *p) { return (struct kmalloc_hdr *)((uintptr_t)p - KMALLOC_HDR); }

/* refill: carve a new page into objects of class c (slab_lock held). */
static int refill(unsigned int c)
{
	size_t osize = 1UL << (c + KMALLOC_MIN_SHIFT);
	char *page = kmalloc_pages(PAGE_SIZE);
	if (!page)
		return -ENOMEM;
	stats.pages++;
	for (size_t off = 0; off + osize <= PAGE_SIZE; off += osize) {
		struct kmalloc_hdr *h = (struct kmalloc_hdr *)(page + off);
		h->magic = KMALLOC_FREE;
		h->cls = c;
		h->size = 0;
		struct kmalloc_free *f = (struct kmalloc_free *)(h + 1);
		f->next = free_lists[c];
		free_lists[c] = f;
	}
	return 0;
}

/* large_alloc: a run of at least pages pages (slab_lock held). */
static void *large_alloc(uint64_t pages)
{
	for (struct kmalloc_free **pp = &free_runs; *pp; pp = &(*pp)->next) {
		struct kmalloc_hdr *h = hdr_of(*pp);
		if ((h->cls & ~KMALLOC_LARGE) >= pages) {
			void *p = *pp;
			*pp = (*pp)->next;
			return p;
		}
	}
	if (pages > (KMALLOC_LARGE - 1))
		return NULL;
	struct kmalloc_hdr *h = kmalloc_pages(pages * PAGE_SIZE);
	if (!h)
		return NULL;
	stats.pages += pages;
	h->cls = KMALLOC_LARGE | (uint32_t)pages;
	return h + 1;
}

void *kmalloc(size_t size, gfp_t flags)
{
	(void)flags;
	void *p = NULL;
	uint64_t f = spin_lock_irqsave(&slab_lock);
	if (size <= (1UL << KMALLOC_MAX_SHIFT) - KMALLOC_HDR) {
		unsigned int c = 0;
		while ((1UL << (c + KMALLOC_MIN_SHIFT)) < size + KMALLOC_HDR)
			c++;
		if (free_lists[c] || !refill(c)) {
			p = free_lists[c];
			free_lists[c] = free_lists[c]->next;
		}
	} else if (size <= (1UL << 40)) { /* more than the RAM there can be: fail at once */
		p = large_alloc((size + KMALLOC_HDR + PAGE_SIZE - 1) / PAGE_SIZE);
	}
	if (p) {
		struct kmalloc_hdr *h = hdr_of(p);
		h->magic = KMALLOC_LIVE;
		h->size = size;
		stats.objects++;
		stats.bytes += size;
		stats.allocs++;
	} else {
		stats.failures++;
	}
	spin_unlock_irqrestore(&slab_lock, f);
	return p;
}

void *kzalloc(size_t size, gfp_t flags)
{
	void *p = kmalloc(size, flags);
	if (p)
		memset(p, 0, size);
	return p;
}

/* kmalloc_object: p is (by its address) the start of an object kmalloc may have returned */
static int kmalloc_object(const void *p)
{
	uintptr_t a = (uintptr_t)p;
	return (a & (KMALLOC_HDR - 1)) == 0 && a >= heap_start + KMALLOC_HDR && a < READ_ONCE(heap_next);
}

void kfree(const void *p)
{
	if (!p)
		return;
	if (!kmalloc_object(p)) {
		__atomic_fetch_add(&stats.bad_frees, 1, __ATOMIC_RELAXED);
		WARN(1, "kfree: %p is not a kmalloc object\n", p);
		return;
	}
	struct kmalloc_hdr *h = hdr_of(p);
	uint64_t f = spin_lock_irqsave(&slab_lock);
	if (h->magic != KMALLOC_LIVE) {
		uint32_t magic = h->magic;
		stats.bad_frees++;
		spin_unlock_irqrestore(&slab_lock, f);
		WARN(1, "kfree: %p %s\n", p, magic == KMALLOC_FREE ? "freed twice" : "is not a kmalloc object");
		return;
	}
	stats.objects--;
	stats.bytes -= h->size;
	stats.frees++;
	h->magic = KMALLOC_FREE;
	h->size = 0;
	struct kmalloc_free *o = (struct kmalloc_free *)p;
	if (h->cls & KMALLOC_LARGE) {
		o->next = free_runs;
		free_runs = o;
	} else {
		o->next = free_lists[h->cls];
		free_lists[h->cls] = o;
	}
	spin_unlock_irqrestore(&slab_lock, f);
}

void kmalloc_stats(struct kmalloc_stats *st)
{
	uint64_t f = spin_lock_irqsave(&slab_lock);
	*st = stats;
	spin_unlock_irqrestore(&slab_lock, f);
}
