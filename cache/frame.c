/* frame: frame table, states, per-frame waiting, mappers; see frame.h. */
#include "frame.h"
#include "cache_i.h" /* a file's number in mappings */

#include <errno.h>
#include <linux/futex.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FREE_END UINT64_MAX
#define FILES_BYTES ((size_t)MAP_FILES_MAX * sizeof(uintptr_t))

uint32_t frame_file_number(struct frame_table *t, struct cfile *f)
{
	uint32_t n = t->files_free;

	if (n) {
		t->files_free = (uint32_t)(t->files[n] >> 1);
	} else if (t->files_high < MAP_FILES_MAX) {
		n = t->files_high++;
	} else {
		return 0;
	}
	t->files[n] = (uintptr_t)f;
	return n;
}

void frame_file_release(struct frame_table *t, uint32_t n)
{
	if (!n)
		return;
	t->files[n] = (uintptr_t)t->files_free << 1 | 1;
	t->files_free = n;
}

int frame_table_init(struct frame_table *t, uint32_t limit, uint32_t capacity)
{
	size_t data_bytes = (size_t)capacity << 12;
	size_t meta_bytes = (size_t)capacity * sizeof(struct frame);

	memset(t, 0, sizeof(*t));
	if (capacity < FID_FIRST + 1 || limit > capacity)
		return -EINVAL;
	/* Reserve address space only: frames are touched when first used. */
	t->arena = mmap(NULL, data_bytes, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (t->arena == MAP_FAILED)
		return -ENOMEM;
	t->frames = mmap(NULL, meta_bytes, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (t->frames == MAP_FAILED) {
		munmap(t->arena, data_bytes);
		return -ENOMEM;
	}
	/* Touched as numbers are given: a page per 512 files. */
	t->files = mmap(NULL, FILES_BYTES, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (t->files == MAP_FAILED) {
		munmap(t->frames, meta_bytes);
		munmap(t->arena, data_bytes);
		return -ENOMEM;
	}
	t->files_high = 1; /* 0: no file */
	t->capacity = capacity;
	t->limit = limit;
	t->free_head = FREE_END;
	t->high = FID_FIRST;
	t->clock_hand = FID_FIRST;
	/* The zero frame: never written, so it stays the kernel's zero page. */
	atomic_store(&t->frames[FID_ZERO].flags, F_ZERO | F_UPTODATE | F_STABLE);
	t->used = 1;
	return 0;
}

void frame_table_fini(struct frame_table *t)
{
	if (t->arena)
		munmap(t->arena, (size_t)t->capacity << 12);
	if (t->frames)
		munmap(t->frames, (size_t)t->capacity * sizeof(struct frame));
	if (t->files)
		munmap(t->files, FILES_BYTES);
	memset(t, 0, sizeof(*t));
}

uint32_t frame_alloc_locked(struct frame_table *t)
{
	uint32_t fid;
	struct frame *fr;

	if (t->used >= t->limit)
		return FID_NONE;
	if (t->free_head != FREE_END) {
		fid = (uint32_t)t->free_head;
		fr = &t->frames[fid];
		t->free_head = fr->m.next_free;
		if (!(atomic_load(&fr->flags) & F_DISCARDED))
			t->free_touched--;
	} else if (t->high < t->capacity) {
		fid = t->high++;
		fr = &t->frames[fid];
	} else {
		return FID_NONE;
	}
	memset(fr, 0, sizeof(*fr));
	t->used++;
	return fid;
}

void frame_free_locked(struct frame_table *t, uint32_t fid)
{
	struct frame *fr = &t->frames[fid];

	if (fid < FID_FIRST || (atomic_load(&fr->flags) & F_FREE))
		abort(); /* double free or the zero frame: a bug, never data */
	if (fr->nmappers > 1)
		free(fr->m.rmap);
	if (frame_unshared(fr))
		t->nr_unshared--; /* freed with its mapper (teardown) */
	if (atomic_exchange(&fr->flags, F_FREE) & F_VOLATILE)
		atomic_fetch_sub(&t->nr_volatile, 1);
	t->free_touched++;
	atomic_store(&fr->pins, 0);
	__atomic_store_n(&fr->nmappers, 0, __ATOMIC_RELAXED);
	fr->m.next_free = t->free_head;
	t->free_head = fid;
	t->used--;
}

void frame_discard_free_locked(struct frame_table *t, unsigned n)
{
	uint64_t fid = t->free_head;

	while (n-- && fid != FREE_END) {
		struct frame *fr = &t->frames[fid];

		if (!(atomic_load(&fr->flags) & F_DISCARDED)) {
			madvise(t->arena + (fid << 12), 1u << 12,
				MADV_DONTNEED);
			atomic_fetch_or(&fr->flags, F_DISCARDED);
			t->free_touched--;
		}
		fid = fr->m.next_free;
	}
}

static long futex(_Atomic uint32_t *addr, int op, uint32_t val)
{
	return syscall(SYS_futex, (uint32_t *)addr, op, val, NULL, NULL, 0);
}

void frame_wait_io(struct frame *fr)
{
	for (;;) {
		uint32_t f = atomic_load(&fr->flags);

		if (!(f & F_IO))
			return;
		if (!(f & F_WAITERS) &&
		    !atomic_compare_exchange_weak(&fr->flags, &f,
						  f | F_WAITERS))
			continue;
		futex(&fr->flags, FUTEX_WAIT_PRIVATE, f | F_WAITERS);
	}
}

void frame_end_io(struct frame *fr, bool ok)
{
	uint32_t old, new;

	old = atomic_load(&fr->flags);
	do {
		new = old & ~(F_IO | F_WAITERS);
		new |= ok ? F_UPTODATE : F_ERROR;
	} while (!atomic_compare_exchange_weak(&fr->flags, &old, new));
	if (old & F_WAITERS)
		futex(&fr->flags, FUTEX_WAKE_PRIVATE, INT_MAX);
}

static size_t rmap_size(uint32_t cap)
{
	return sizeof(struct rmap) + cap * sizeof(struct mapping);
}

static struct mapping mapping_of(const struct cfile *f, uint64_t index)
{
	return (struct mapping){ (uint64_t)f->map_number << MAP_INDEX_BITS |
				 index };
}

int frame_add_mapper(struct frame_table *t, uint32_t fid, struct cfile *f,
		     uint64_t index)
{
	struct frame *fr = &t->frames[fid];
	struct rmap *r;
	bool was;

	if (index > MAP_INDEX_MAX)
		return -EFBIG;
	if (fid == FID_ZERO) {
		t->nr_zero_maps++;
		return 0;
	}
	switch (fr->nmappers) {
	case 0:
		fr->m.owner = mapping_of(f, index);
		frame_clear(fr, F_ORPHAN);
		break;
	case 1:
		r = malloc(rmap_size(4));
		if (!r)
			return -ENOMEM;
		r->n = 2;
		r->cap = 4;
		r->m[0] = fr->m.owner;
		r->m[1] = mapping_of(f, index);
		fr->m.rmap = r;
		t->rmap_bytes += rmap_size(4);
		t->nr_shared++;
		t->nr_sharing++;
		break;
	default:
		r = fr->m.rmap;
		if (r->n == r->cap) {
			struct rmap *nr = realloc(r, rmap_size(r->cap * 2));

			if (!nr)
				return -ENOMEM;
			t->rmap_bytes += rmap_size(nr->cap * 2) -
					 rmap_size(nr->cap);
			nr->cap *= 2;
			r = nr;
			fr->m.rmap = r;
		}
		r->m[r->n++] = mapping_of(f, index);
		t->nr_sharing++;
		break;
	}
	was = frame_unshared(fr);
	/* read without map_lock as a hint (rw.c needs_frame) */
	__atomic_store_n(&fr->nmappers, fr->nmappers + 1, __ATOMIC_RELAXED);
	frame_recount_unshared(t, fr, was);
	return 0;
}

bool frame_del_mapper(struct frame_table *t, uint32_t fid, struct cfile *f,
		      uint64_t index)
{
	struct frame *fr = &t->frames[fid];
	struct mapping m = mapping_of(f, index);
	struct rmap *r;
	bool was;

	if (fid == FID_ZERO) {
		t->nr_zero_maps--;
		return false;
	}
	if (fr->nmappers == 0)
		abort();
	if (fr->nmappers == 1) {
		if (fr->m.owner.v != m.v)
			abort();
		was = frame_unshared(fr);
		__atomic_store_n(&fr->nmappers, 0, __ATOMIC_RELAXED);
		frame_recount_unshared(t, fr, was);
		fr->m.owner.v = 0;
		frame_set(fr, F_ORPHAN);
		return true;
	}
	r = fr->m.rmap;
	for (uint32_t i = 0; i < r->n; i++) {
		if (r->m[i].v == m.v) {
			r->m[i] = r->m[--r->n];
			break;
		}
	}
	__atomic_store_n(&fr->nmappers, fr->nmappers - 1, __ATOMIC_RELAXED);
	frame_recount_unshared(t, fr, false);
	t->nr_sharing--;
	if (fr->nmappers == 1) {
		struct mapping last = r->m[0];

		t->rmap_bytes -= rmap_size(r->cap);
		free(r);
		fr->m.owner = last;
		t->nr_shared--;
	}
	return false;
}

unsigned frame_mappers(struct frame_table *t, uint32_t fid,
		       struct mapper *out, unsigned max)
{
	struct frame *fr = &t->frames[fid];
	unsigned n = 0;

	if (fr->nmappers == 1 && max) {
		out[0] = frame_owner(t, fr);
		n = 1;
	} else if (fr->nmappers > 1) {
		for (uint32_t i = 0; i < fr->m.rmap->n && n < max; i++)
			out[n++] = frame_mapper(t, fr->m.rmap->m[i]);
	}
	return n;
}
