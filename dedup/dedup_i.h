/*
 * dedup_i: the insides of struct dedup, shared by dedup.c (merge on fill,
 * forget, knobs, stats) and scan.c (the scanner thread). Tables are under
 * cache->map_lock; knobs are atomics read without a lock.
 */
#ifndef SAMEPAGE_DEDUP_I_H
#define SAMEPAGE_DEDUP_I_H

#include "dedup.h"
#include "fp.h"
#include "store.h"
#include "stree.h"
#include "u64map.h"

#include "cache_i.h"

#include <pthread.h>
#include <stdatomic.h>

#define DEDUP_MAX_DEVS 64

struct dedup {
	struct cache *c;
	enum dedup_scope scope;             /* immutable */
	_Atomic bool run, use_zero_pages, smart_scan;
	_Atomic unsigned pages_to_scan, sleep_millisecs, max_page_sharing;
	struct stree stable;                /* map_lock */
	struct stree unstable;              /* map_lock */
	struct stree phys;                  /* map_lock */
	struct store *store;                /* NULL: no persistence */
	_Atomic uint64_t store_hits;        /* pages mapped by a stored fp */
	_Atomic uint64_t store_merges;      /* those onto a resident frame */
	/* persist_dtab.c: SHA-256 digests of frames (see persist_i.h).
	 * Mapped with the store, capacity entries each, touched only where
	 * used. */
	uint8_t (*digest)[FP_DIGEST_LEN];   /* map_lock; valid with F_DIGEST */
	struct stree dtab;                  /* map_lock: the STABLE frames with
					     * F_DIGEST, by the digest's first
					     * 8 bytes */
	uint32_t *want;                     /* map_lock: ring of frames that
					     * wait for a digest */
	uint8_t *want_bits;                 /* map_lock: fid is in the ring */
	uint32_t want_head, want_len;       /* map_lock */
	uint32_t ncap;                      /* immutable: entries of the three */
	pthread_mutex_t digest_lock;        /* one digest pass at a time */
	unsigned char *digest_buf;          /* digest_lock */
	_Atomic bool record_partial;        /* record the mappers
					     * that are not busy (unmount) */
	_Atomic uint64_t digests_computed;
	dev_t devs[DEDUP_MAX_DEVS];         /* map_lock: id - 1 -> device */
	pthread_mutex_t scope_lock;         /* scopes, scope_next */
	struct u64map scopes;               /* uid + 1 -> scope tag */
	unsigned scope_next;
	/* probe.c: fingerprints of pages kernel-mode files read, sampled
	 * (key from the fingerprint and scope -> the reader's file number),
	 * in two generations: the newer one takes the puts, and when it is
	 * full the older one goes, so the newest reads are always known */
	struct u64map ghost[2];             /* map_lock */
	unsigned ghost_new;                 /* map_lock: the newer one */
	size_t ghost_max;                   /* immutable: entries at most,
					     * both generations */
	unsigned ndevs;
	_Atomic uint64_t content_merges, reflink_merges, hashes_computed,
		full_scans;
	_Atomic uint64_t stable_chains;     /* gauge: frames with F_CHAIN,
					     * changed under map_lock */
	/* scanner */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t scan_lock;
	pthread_cond_t scan_cond;           /* knob change, forced scan */
	pthread_cond_t scan_done;           /* a full scan ended */
	bool stop;                          /* scan_lock */
	uint64_t forced_until;              /* scan_lock: run until full_scans */
	uint32_t cursor;                    /* scanner thread only */
};

/* probe.c: cache_share_ops.probe (see frame.h). */
bool dedup_probe(void *ctx, struct cfile *f, const void *data);

/* Scope tag of the pages of f (0 for the global scope, one tag per owner
 * for the uid scope). Frames merge only when their tags match. */
#define SCOPE_NOMERGE 0xFFFFu
uint16_t dedup_scope_of(struct dedup *d, struct cfile *f);

static inline bool scope_match(uint16_t a, uint16_t b)
{
	return a == b && a != SCOPE_NOMERGE;
}
/* Try to merge frame fid mapped once at (f, index) into an identical
 * frame: the zero frame or a stable one. f's pidx_lock (write) and
 * map_lock held. Returns the frame now mapped there, or 0 if none; then
 * *full says whether an identical stable frame of the scope was there
 * but had max_page_sharing mappers. */
uint32_t dedup_merge_stable(struct dedup *d, struct cfile *f, uint64_t index,
			    uint32_t fid, bool *full);
/* Move mapping (f, index) from fid to target (already confirmed equal). */
int dedup_remap(struct dedup *d, struct cfile *f, uint64_t index,
		uint32_t fid, uint32_t target);
/* Make fid a stable frame (one mapper). chain: an identical stable frame
 * is full (dedup_merge_stable), so fid is one more frame of that content,
 * marked F_CHAIN and counted in stable_chains while it stays stable.
 * map_lock held. */
void dedup_make_stable(struct dedup *d, uint32_t fid, uint16_t scope,
		       bool chain);

/* reflink.c: map (f, index) to the resident frame of its physical block
 * (or the zero frame for an unwritten extent), or note a fill's block. */
uint32_t reflink_lookup(struct dedup *d, struct cfile *f, uint64_t index);
void reflink_note(struct dedup *d, struct cfile *f, uint64_t index,
		  uint32_t fid);
void dedup_move_phys(struct dedup *d, uint32_t fid, uint32_t target);
/* One of the first extents of f is shared with another file (FIEMAP,
 * without a sync: no I/O). No lock held. */
bool reflink_file_shared(struct cfile *f);
/* The mount changed f on disk: its extent map is no longer true. f's
 * pidx_lock (write) held, map_lock not. */
void reflink_changed(struct dedup *d, struct cfile *f);

/* persist*.c: the LMDB store seen from the cache's side (persist_i.h) */
int persist_open(struct dedup *d, const struct dedup_config *cfg);
void persist_close(struct dedup *d);
uint32_t persist_lookup(struct dedup *d, struct cfile *f, uint64_t index);
void persist_note(struct dedup *d, struct cfile *f, uint64_t index,
		  uint32_t fid);
/* (f, index) now maps target, shared; map_lock held, and f's pidx_lock
 * (write), under which f's identity is read. */
void persist_shared(struct dedup *d, struct cfile *f, uint64_t index,
		    uint32_t target);
/* A fill read data into fr, whose XXH3 is h (not yet in fr->fp): if
 * persist_note found a record for the page, take the frame's digest and
 * check the record against both. No lock held, frame owned (IO). */
void persist_fill_digest(struct dedup *d, struct frame *fr, const void *data,
			 const struct fp *h);
/* Give up to budget stable frames that wait for one a digest and queue
 * the records of the shared ones' mappers; no lock held (takes
 * digest_lock, then map_lock). Returns how many waited (0: none). */
unsigned persist_digest_work(struct dedup *d, unsigned budget);
/* fid became STABLE (dedup_make_stable): into dtab if it has a digest.
 * map_lock held. */
void persist_stable(struct dedup *d, uint32_t fid);
/* fid is about to leave the trees (the forget callback). map_lock held. */
void persist_forget(struct dedup *d, uint32_t fid);
/* fid, just filled, merged into stable target (contents compared equal):
 * target gets fid's digest if it has none. map_lock held. */
void persist_merged(struct dedup *d, uint32_t fid, uint32_t target);
/* A single-mapper frame outside the stable tree, about to be scanned:
 * whatever digest it carries may be stale. map_lock held. */
void persist_unstable(struct dedup *d, uint32_t fid);
/* Memory of the digests and the want ring actually in use. */
uint64_t persist_meta_bytes(struct dedup *d);
void persist_changed(struct dedup *d, struct cfile *f, uint64_t first,
		     uint64_t n);
void persist_gone(struct dedup *d, struct cfile *f);
void persist_stats(struct dedup *d, struct dedup_stats *st);

int dedup_scan_start(struct dedup *d);
void dedup_scan_stop(struct dedup *d);

#endif
