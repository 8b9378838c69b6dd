/*
 * frame: the 4 KiB page frames of the cache, their states and mappers.
 *
 * Owns one arena of frame data (a virtual reservation; a frame's memory is
 * touched only when it is first used) and the array of struct frame. Frame
 * ids are indexes; 0 means none, FID_ZERO is the permanent zero frame.
 *
 * Per-frame metadata is kept small (48 bytes, 1.2% of a page): the common
 * frame with one mapper holds its owner (file, page) inline in 8 bytes; a
 * list of 8-byte mappings is allocated only when it is shared (struct
 * rmap).
 *
 * States (flags, atomic, also the futex word for per-frame waiting):
 *   FREE      on the free list.
 *   IO        being filled; content not valid yet. Waiters sleep on it.
 *   UPTODATE  content valid.
 *   DIRTY     newer than the backing file (the owner's pidx tags it too).
 *   WB        being written back (pinned meanwhile).
 *   VOLATILE  written through the mount since it was last in the trees.
 *   STABLE    in dedup's stable tree: content immutable while set.
 *   ZERO      the zero frame: immutable, never evicted, no rmap.
 *   ORPHAN    no mapper left; freed when the last pin goes.
 *   REF       referenced since the clock hand last passed.
 *   ERROR     the fill failed.
 *
 * Locking:
 *   flags     atomic bit operations; IO/UPTODATE/ERROR change only by the
 *             filler, DIRTY/VOLATILE/WB under the owner's pidx_lock (write).
 *   pins      atomic; taken under the owner's pidx_lock or map_lock.
 *   nmappers, owner/rmap, fp, phys, scan fields: cache->map_lock.
 *   The content of a frame that is not STABLE and has one mapper is
 *   changed only by the holder of that mapper's pidx_lock (write side).
 */
#ifndef SAMEPAGE_FRAME_H
#define SAMEPAGE_FRAME_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cache;
struct cfile;

#define FID_NONE 0u
#define FID_ZERO 1u         /* == PIDX_COUNTED_FID */
#define FID_FIRST 2u

enum {
	F_FREE = 1u << 0,          /* with F_DISCARDED: its memory given back */
	F_IO = 1u << 1,
	F_UPTODATE = 1u << 2,
	F_DIRTY = 1u << 3,
	F_WB = 1u << 4,
	F_VOLATILE = 1u << 5,
	F_STABLE = 1u << 6,
	F_ZERO = 1u << 7,
	F_ORPHAN = 1u << 8,
	F_REF = 1u << 9,
	F_ERROR = 1u << 10,
	F_WAITERS = 1u << 11,
	F_HASHED = 1u << 12,   /* fp holds the scanner's last checksum */
	F_UNSTABLE = 1u << 13, /* in the scanner's unstable table */
	F_PHYS = 1u << 14,     /* phys names a shared extent block */
	F_PERSISTED = 1u << 15, /* fp is the one the store has for it */
	F_DIGEST = 1u << 16,   /* dedup holds a SHA-256 of the content */
	/* Clock passes a shared frame survives unreferenced (2 bits, only
	 * the clock changes them, under map_lock). */
	F_CREDIT_SHIFT = 17,
	F_CREDIT = 3u << 17,
	F_DISCARDED = 1u << 19,
	F_AHEAD = 1u << 20,    /* filled by readahead */
	F_CHAIN = 1u << 21,    /* dedup: a stable frame made because an
				* identical one had max_page_sharing
				* mappers (counted in stable_chains) */
};

/*
 * A mapping (file, page index) is stored in 8 bytes: the file's number in
 * the frame table's file table (MAP_FILE_BITS) and the page index (the
 * rest: files up to 4 PiB). struct mapper is its unpacked view.
 */
#define MAP_FILE_BITS 24
#define MAP_INDEX_BITS (64 - MAP_FILE_BITS)
#define MAP_INDEX_MAX ((1ull << MAP_INDEX_BITS) - 1)
#define MAP_FILES_MAX (1u << MAP_FILE_BITS)

struct mapping {
	uint64_t v;                 /* file number << MAP_INDEX_BITS | index */
};

struct mapper {
	struct cfile *file;
	uint64_t index;
};

struct rmap {
	uint32_t n, cap;
	struct mapping m[];
};

struct frame {
	_Atomic uint32_t flags;
	_Atomic uint32_t pins;
	uint32_t nmappers;          /* map_lock */
	uint8_t scan_skip;          /* smart scan: passes left to skip */
	uint8_t scan_fails;         /* smart scan: consecutive failures */
	uint16_t scope;             /* dedup scope tag (owner uid bucket) */
	union {                     /* map_lock */
		struct mapping owner;   /* nmappers == 1 */
		struct rmap *rmap;      /* nmappers > 1 */
		uint64_t next_free;     /* FREE */
	} m;
	uint64_t fp[2];             /* fingerprint (STABLE) or checksum */
	uint64_t phys;              /* physical address + 1 (PHYS) */
};

/* Callbacks through which dedup/ takes part without the cache knowing it.
 * All run with map_lock held unless said otherwise. */
struct cache_share_ops {
	void *ctx;
	/* Hash a freshly filled frame; no lock held, frame owned by caller. */
	void (*hash_fill)(void *ctx, struct frame *fr, const void *data);
	/* Fresh frame fid is mapped at (f, index); merge it if an identical
	 * frame is resident. f's pidx_lock is held for writing. Returns the
	 * fid now mapped there (fid itself if not merged). */
	uint32_t (*merge_fill)(void *ctx, struct cfile *f, uint64_t index,
			       uint32_t fid);
	/* A STABLE/UNSTABLE/PHYS frame is about to change or be freed: take it
	 * out of dedup's tables. */
	void (*forget)(void *ctx, uint32_t fid);
	/* Before a fill: map (f, index) without I/O to a resident frame
	 * known to hold the same data (same physical block of a reflink, or
	 * the fingerprint persisted for this page), or to the zero frame for
	 * an unwritten extent. Returns that fid (mapped and counted) or 0.
	 * f's pidx_lock is held for writing, map_lock is NOT (taken inside);
	 * f->fill_seq names the fill, whose pages are looked up in a row. */
	uint32_t (*lookup_fill)(void *ctx, struct cfile *f, uint64_t index);
	/* The fresh frame fid is about to be filled for (f, index): note what
	 * is known of it (physical block, persisted fingerprint). Same locks
	 * as lookup_fill. */
	void (*note_fill)(void *ctx, struct cfile *f, uint64_t index,
			  uint32_t fid);
	/* Pages [first, first + n) of f changed on disk through the mount
	 * (writeback, truncate, punch, clone); f's identity is updated.
	 * f's pidx_lock held for writing; map_lock NOT held. */
	void (*file_changed)(void *ctx, struct cfile *f, uint64_t first,
			     uint64_t n);
	/* f is going away for good (unlinked); no lock held. */
	void (*file_gone)(void *ctx, struct cfile *f);
	/* A page of the kernel-mode file f, read without a frame: do other
	 * files hold the same bytes (a resident frame, or a page another
	 * kernel-mode file read lately)? A hint for the choice of mode;
	 * nothing is mapped. Marks the other kernel-mode file too. No lock
	 * held. */
	bool (*probe)(void *ctx, struct cfile *f, const void *data);
};

struct frame_table {
	struct frame *frames;
	unsigned char *arena;
	uint32_t capacity;          /* frames reserved (ids < capacity) */
	uint32_t limit;             /* budget in frames (map_lock; stored
				     * atomically, read without it too) */
	uint32_t used;              /* allocated, incl. zero frame (map_lock) */
	uint32_t high;              /* ids >= high never used (map_lock) */
	uint32_t free_touched;      /* free frames holding memory (map_lock) */
	uint64_t free_head;         /* map_lock */
	uint32_t clock_hand;        /* map_lock */
	/* file number -> file, for mappings (map_lock; a number is given
	 * before the file maps anything and taken back after it maps
	 * nothing). A free slot holds the next free number << 1 | 1. */
	uintptr_t *files;
	uint32_t files_high;        /* numbers >= this never given */
	uint32_t files_free;        /* first free number below it, or 0 */
	/* gauges under map_lock */
	uint64_t nr_shared, nr_sharing, nr_zero_maps, rmap_bytes;
	/* frames in a dedup tree (STABLE or UNSTABLE) with one mapper, kept
	 * by frame_tree_flags and the mapper changes (map_lock) */
	uint64_t nr_unshared;
	/* frames with VOLATILE set (frame_set_volatile) */
	_Atomic uint64_t nr_volatile;
};

static inline void *frame_data_of(const struct frame_table *t, uint32_t fid)
{
	return t->arena + ((size_t)fid << 12);
}

static inline struct frame *frame_of(const struct frame_table *t,
				     uint32_t fid)
{
	return &t->frames[fid];
}

static inline struct mapper frame_mapper(const struct frame_table *t,
					 struct mapping m)
{
	return (struct mapper){
		(struct cfile *)t->files[m.v >> MAP_INDEX_BITS],
		m.v & MAP_INDEX_MAX };
}

/* The only mapper of a frame with nmappers == 1; map_lock held. */
static inline struct mapper frame_owner(const struct frame_table *t,
					const struct frame *fr)
{
	return frame_mapper(t, fr->m.owner);
}

static inline uint32_t frame_flags(struct frame *fr)
{
	return atomic_load_explicit(&fr->flags, memory_order_acquire);
}

static inline void frame_set(struct frame *fr, uint32_t bits)
{
	atomic_fetch_or(&fr->flags, bits);
}

static inline void frame_clear(struct frame *fr, uint32_t bits)
{
	atomic_fetch_and(&fr->flags, ~bits);
}

/* Counted in nr_unshared: in a dedup tree, one mapper. */
static inline bool frame_unshared(const struct frame *fr)
{
	return fr->nmappers == 1 &&
	       (atomic_load(&fr->flags) & (F_STABLE | F_UNSTABLE));
}

/* fr's tree flags or mappers changed; was: frame_unshared() before.
 * map_lock held. */
static inline void frame_recount_unshared(struct frame_table *t,
					  const struct frame *fr, bool was)
{
	if (frame_unshared(fr) == was)
		return;
	if (was)
		t->nr_unshared--;
	else
		t->nr_unshared++;
}

/* Clear, then set, the tree flags (F_STABLE, F_UNSTABLE, and others with
 * them) of a frame, keeping nr_unshared; map_lock held. Every change of
 * F_STABLE or F_UNSTABLE goes through here. */
static inline void frame_tree_flags(struct frame_table *t, struct frame *fr,
				    uint32_t clear, uint32_t set)
{
	bool was = frame_unshared(fr);

	if (clear)
		frame_clear(fr, clear);
	if (set)
		frame_set(fr, set);
	frame_recount_unshared(t, fr, was);
}

/* F_VOLATILE, counted in nr_volatile; the owner's pidx_lock (write) or
 * map_lock held. */
static inline void frame_set_volatile(struct frame_table *t, struct frame *fr)
{
	if (!(atomic_fetch_or(&fr->flags, F_VOLATILE) & F_VOLATILE))
		atomic_fetch_add(&t->nr_volatile, 1);
}

static inline void frame_clear_volatile(struct frame_table *t,
					struct frame *fr)
{
	if (atomic_fetch_and(&fr->flags, ~(uint32_t)F_VOLATILE) & F_VOLATILE)
		atomic_fetch_sub(&t->nr_volatile, 1);
}

static inline void frame_pin(struct frame *fr)
{
	atomic_fetch_add(&fr->pins, 1);
}

int frame_table_init(struct frame_table *t, uint32_t limit,
		     uint32_t capacity);
void frame_table_fini(struct frame_table *t);

/* Allocation and freeing; map_lock held. A new frame has no mapper, no
 * pin, flags 0. */
uint32_t frame_alloc_locked(struct frame_table *t);
void frame_free_locked(struct frame_table *t, uint32_t fid);

/* Give the memory of the n frames freed last back to the kernel: a frame
 * is written whole before it is used again. map_lock held. */
void frame_discard_free_locked(struct frame_table *t, unsigned n);

/* Wait until IO is clear. */
void frame_wait_io(struct frame *fr);
/* End a fill: clear IO, set UPTODATE or ERROR, wake waiters. */
void frame_end_io(struct frame *fr, bool ok);

/* A number for file f in mappings, or 0 when all MAP_FILES_MAX are
 * taken; map_lock held. Taken back once f maps nothing. */
uint32_t frame_file_number(struct frame_table *t, struct cfile *f);
void frame_file_release(struct frame_table *t, uint32_t number);

/* Mapper bookkeeping; map_lock held. Adding may allocate (-ENOMEM), and
 * refuses a page index past MAP_INDEX_MAX (-EFBIG). */
int frame_add_mapper(struct frame_table *t, uint32_t fid, struct cfile *f,
		     uint64_t index);
/* Returns true if the frame lost its last mapper (it is then ORPHAN and,
 * if unpinned, freed). */
bool frame_del_mapper(struct frame_table *t, uint32_t fid, struct cfile *f,
		      uint64_t index);
/* Visit each mapper; map_lock held. */
unsigned frame_mappers(struct frame_table *t, uint32_t fid,
		       struct mapper *out, unsigned max);

#endif
