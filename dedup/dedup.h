/*
 * dedup: one copy of each distinct page content in the cache.
 *
 * Owns the fingerprints (XXH3-128), the stable tree (resident clean frames
 * keyed by fingerprint; content immutable while in it), the unstable tree
 * of the scanner, the zero frame, the physical-extent table of reflinked
 * pages, the SHA-256 digests of frames that pages may be mapped to
 * without being read (warm restart, persist_i.h) and the scanner thread.
 * Plugs into the cache through struct cache_share_ops (frame.h), so the
 * cache never includes this.
 *
 * Invariants:
 *   - Two mappings share a frame only after memcmp() confirmed equal
 *     content while both frames were resident.
 *   - A frame in the stable tree is never written: a writer gets a private
 *     copy (COW break) or, if it is the only mapper, takes it out first.
 *   - A frame mapped by max_page_sharing mappers is not merged into
 *     further; an identical frame starts a new chain entry (F_CHAIN,
 *     counted in stable_chains while it is in the stable tree).
 *   - A page is mapped without being read only to a stable frame whose
 *     own SHA-256 equals the one stored for the page: never on XXH3
 *     alone, which a crafted collision defeats.
 *
 * Locking: the stable, unstable and physical tables and the digests are
 * protected by cache->map_lock (see cache.h). The scanner takes a file's
 * pidx_lock before map_lock, like every other path; a digest pass takes
 * its own digest_lock before map_lock.
 */
#ifndef SAMEPAGE_DEDUP_H
#define SAMEPAGE_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cache;
struct cfile;
struct dedup;

enum dedup_scope {
	DEDUP_SCOPE_GLOBAL,         /* any two files may share a frame */
	DEDUP_SCOPE_UID,            /* only files of the same owner */
	DEDUP_SCOPE_NONE,           /* no merging at all */
};

struct dedup_config {
	enum dedup_scope scope;
	bool     run;               /* scanner running */
	unsigned pages_to_scan;     /* per batch */
	unsigned sleep_millisecs;   /* between batches */
	unsigned max_page_sharing;  /* mappers per frame at most */
	bool     use_zero_pages;    /* merge zero pages into one frame */
	bool     smart_scan;        /* skip pages that keep failing to merge */
	const char *state_dir;      /* LMDB store; NULL: no persistence */
	uint64_t store_quota;       /* bytes the store may use (0: default) */
	bool     rebuild_state;     /* start afresh from an unusable store */
};
void dedup_config_defaults(struct dedup_config *cfg);

struct dedup_stats {
	uint64_t pages_shared;      /* frames mapped more than once */
	uint64_t pages_sharing;     /* mappings beyond the first: the saving */
	uint64_t pages_unshared;    /* clean frames in the trees, one mapper */
	uint64_t pages_volatile;    /* written frames out of the trees */
	uint64_t full_scans;
	uint64_t content_merges;    /* merges confirmed by memcmp() */
	uint64_t reflink_merges;
	uint64_t zero_pages;        /* mappings of the zero frame */
	uint64_t hashes_computed;   /* XXH3 fingerprints */
	uint64_t digests_computed;  /* SHA-256 digests (persistence) */
	uint64_t stable_chains;     /* stable frames that exist because an
				     * identical one had max_page_sharing
				     * mappers (a gauge) */
	uint64_t metadata_bytes;    /* the trees and the digests (add the
				     * cache's own) */
	uint64_t store_hits;        /* pages mapped unread by a stored
				     * fingerprint (its SHA-256 checked) */
	uint64_t store_merges;      /* those mapped onto a resident frame,
				     * not the zero frame: merges made on
				     * the SHA-256, without memcmp() */
	uint64_t store_files;       /* the whole store, resident or not */
	uint64_t store_pages;
	uint64_t store_distinct;
	uint64_t store_bytes;
	uint64_t store_paused;      /* 1: persistence paused after a failure */
	uint64_t store_queue_full;  /* records dropped: the store's queue
				     * was full */
	int64_t  general_profit;    /* bytes saved minus dedup metadata */
};

/* Errors: those of the store (store.h: -EPROTO other format, -EBADMSG
 * corrupt or not a store, -EACCES/-ENOTDIR for state_dir), -ENOMEM. */
int dedup_create(struct cache *c, const struct dedup_config *cfg,
		 struct dedup **out);
void dedup_destroy(struct dedup *d);
void dedup_get_stats(struct dedup *d, struct dedup_stats *st);
/* Run-time knobs by name (run, pages_to_scan, sleep_millisecs,
 * max_page_sharing, use_zero_pages, smart_scan). -EINVAL for an unknown
 * key or a bad value. */
int dedup_set_knob(struct dedup *d, const char *key, const char *value);
/* Writes "key value\n" lines of all knobs into buf; returns the length or
 * -ERANGE if buf is too small. */
int dedup_format_knobs(struct dedup *d, char *buf, size_t len);
/* Record now the shared pages that still wait for the scanner to digest
 * them (see persist_i.h). At unmount, before the files drop their pages: a
 * page is recorded through its mapping. */
void dedup_flush(struct dedup *d);
/* What is known, without reading its pages, that f shares pages with
 * other files: an extent shared with another file (a reflinked clone, by
 * FIEMAP), or records of content (not only of zero pages) in the store
 * under the identity f has now (its pages were shared before). No lock
 * held. */
bool dedup_file_shares(struct dedup *d, struct cfile *f);
/* Has f, cached in shared mode, stopped sharing? Asked again only once
 * two more full scans have run since *since (dedup_full_scans() when it
 * entered shared mode, updated here): then true if no extent of it is
 * shared with another file and it has resident pages, none mapping a
 * frame another page maps. Its store records are then forgotten. No lock
 * held. */
bool dedup_file_stopped_sharing(struct dedup *d, struct cfile *f,
				uint64_t *since);
uint64_t dedup_full_scans(struct dedup *d);
/* A file lost its last name (through the mount): its stored records go. */
void dedup_file_deleted(struct dedup *d, uint64_t dev, uint64_t ino);
/* Drop the stored records of files that no longer exist: exists() says
 * whether (dev, ino) is still a file. Slow (a pass over the store); run it
 * from a background thread. */
typedef bool (*dedup_exists_cb)(void *arg, uint64_t dev, uint64_t ino);
int dedup_prune_missing(struct dedup *d, dedup_exists_cb exists, void *arg);

/* Start a full scan and wait until it finishes (or return at once if
 * wait is false). */
int dedup_scan_now(struct dedup *d, bool wait);

#endif
