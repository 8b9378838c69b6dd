/*
 * cache_i: the insides of struct cache and struct cfile, shared by the
 * cache's own files and by dedup/ (which meets the cache at frames and
 * mappers). The locking rules are those of cache.h and frame.h.
 */
#ifndef SAMEPAGE_CACHE_I_H
#define SAMEPAGE_CACHE_I_H

#include "cache.h"
#include "frame.h"
#include "pidx.h"
#include "rangelock.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <time.h>

#ifdef NDEBUG
#define CACHE_BUG_ON(cond) ((void)0)
#else
#define CACHE_BUG_ON(cond) assert(!(cond))
#endif

struct cstat_atomic {
	_Atomic uint64_t hits, misses, evictions, backing_read_bytes,
		backing_write_bytes, backing_reads, backing_writes,
		writeback_errors, cow_breaks, invalidations, clone_shares,
		pressure_shrinks, pressure_bytes, readahead_pages,
		direct_read_pages;
};

struct cfile_ident {
	dev_t dev;
	ino_t ino;
	uint64_t size;
	int64_t mtime_ns, ctime_ns;
	uid_t uid;
};

/* The same file, unchanged: what every cached page and stored record of a
 * backing file is checked against (uid is not part of the content). */
static inline bool cfile_ident_equal(const struct cfile_ident *a,
				     const struct cfile_ident *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns;
}

_Static_assert(FID_ZERO == PIDX_COUNTED_FID, "pidx counts zero mappings");

enum cfile_state {
	CF_ATTACHED,    /* referenced */
	CF_PUTTING,     /* the last reference is being dropped */
	CF_DETACHED,    /* kept with its clean pages, no reference */
};

struct cfile {
	struct cache *cache;                /* immutable */
	_Atomic int refs;                   /* 0 -> 1 only under files_lock */
	enum cfile_state state;             /* files_lock */
	bool keyed;                         /* files_lock: in cache->by_key */
	uint32_t map_number;                /* immutable: in frame mappings */
	dev_t key_dev;                      /* immutable: the backing inode */
	ino_t key_ino;
	struct cfile *lru_next, *lru_prev;  /* files_lock: kept, oldest first */
	int old_fd;                         /* read-only fd replaced by a
					     * writable one, closed at free */
	int path_fd;                        /* dup of the caller's fd */
	int fd;                             /* I/O fd (inval_lock to swap) */
	bool fd_direct;                     /* fd has O_DIRECT */
	bool fd_writable;
	int wfd;                            /* buffered fd for tail pages */
	pthread_rwlock_t inval_lock;
	pthread_rwlock_t pidx_lock;
	struct range_lock write_range;      /* pages being written; all of
					     * them for truncate and clone */
	pthread_mutex_t wb_mutex;           /* one writeback pass at a time */
	struct pidx pidx;                   /* pidx_lock */
	uint64_t size;                      /* pidx_lock */
	uint64_t backing_size;              /* pidx_lock; size on disk */
	uint64_t fill_seq;                  /* pidx_lock (write): fills begun,
					     * so that dedup asks what holds
					     * for a whole fill once */
	/* written under pidx_lock (write), read under pidx_lock */
	struct cfile_ident ident;
	_Atomic int64_t mtime_ns;           /* last write through the mount */
	_Atomic int wb_err;                 /* pending writeback error */
	_Atomic bool orphan;
	_Atomic bool kernel_mode;           /* cfile_set_kernel_mode() */
	_Atomic uint64_t sharing_found;     /* cfile_sharing_found() */
	_Atomic uint64_t generation;        /* cfile_generation() */
	void *owner;                        /* front end's object */
	uint16_t scope;                     /* dedup scope tag */
	/* dirty list, under cache->wb_lock */
	struct cfile *wb_next, *wb_prev;
	bool on_wb_list;
	int64_t dirtied_ns;
	/* all files, under cache->files_lock */
	struct cfile *all_next, *all_prev;
	/* owned by dedup, under pidx_lock; freed with the cfile */
	void *extents;                      /* reflink extent map */
	void *persist;                      /* stored fingerprints window */
	/* readahead (readahead.c): where a sequential reader is expected
	 * next (atomic), the window (0: no stream; stored under ra_lock,
	 * read without it), how far ahead is asked for (ra_lock) */
	pthread_mutex_t ra_lock;
	_Atomic uint64_t ra_next;
	_Atomic uint32_t ra_win;
	uint64_t ra_end;
};

struct cache {
	struct cache_config cfg;
	struct frame_table ft;              /* see frame.h for its locks */
	pthread_mutex_t map_lock;
	pthread_cond_t frames_freed;        /* with map_lock */
	uint64_t frees;                     /* map_lock: frames freed so far */
	_Atomic bool alloc_stall_logged;    /* said once per stall */
	_Atomic int wb_last_err;            /* last writeback result, 0 ok */
	struct cache_share_ops share;       /* set once before use */
	struct cstat_atomic st;
	_Atomic uint64_t nr_dirty;
	_Atomic uint64_t generations;       /* cfile generations given */
	/* writeback */
	pthread_mutex_t wb_lock;
	pthread_cond_t wb_cond;
	struct cfile wb_head;               /* dirty files, oldest first */
	bool wb_stop, wb_kick;
	pthread_t wb_thread;
	uint64_t reaped_at;                 /* wb thread: evictions then */
	bool wb_started;
	/* all files, for stats and sync */
	pthread_mutex_t files_lock;
	struct cfile files_head;
	uint64_t nr_files;
	void *by_key;                       /* files_lock: tsearch, dev+ino */
	struct cfile lru_head;              /* files_lock: kept files */
	uint64_t nr_detached;               /* files_lock */
	uint64_t nr_detached_fds;           /* files_lock: kept with fds */
	uint64_t reattaches;                /* files_lock */
	pthread_cond_t detach_done;         /* files_lock: a put finished */
	_Atomic bool closing;               /* cache_destroy: keep nothing */
	struct pressure *pressure;          /* pressure.c; NULL if none */
	struct readahead *ra;               /* readahead.c */
};

static inline void *cache_frame_data(struct cache *c, uint32_t fid)
{
	return frame_data_of(&c->ft, fid);
}

static inline struct frame *cache_frame(struct cache *c, uint32_t fid)
{
	return frame_of(&c->ft, fid);
}

void cache_set_share_ops(struct cache *c, const struct cache_share_ops *ops);

/* Drop a pin; frees an ORPHAN frame whose last pin this was. */
void cache_frame_unpin(struct cache *c, uint32_t fid);

/* Allocate a frame; with wait, evicts and waits for writeback as needed
 * (the caller must hold no pidx_lock), but gives up once no frame at all
 * came back for 10 s (logged once). Returns 0 when none: then
 * cache_alloc_errno() says why. */
uint32_t cache_frame_alloc(struct cache *c, bool wait);
/* The error for a request that could get no frame: the writeback error
 * that keeps dirty frames from being freed, else -ENOMEM. */
int cache_alloc_errno(struct cache *c);
void cache_frame_release(struct cache *c, uint32_t fid);
/* Evict up to n clean frames; map_lock held. Returns how many. */
unsigned cache_evict_locked(struct cache *c, unsigned n);

/* Remove the mapping (f, index) -> fid; pidx_lock (write) held, takes
 * map_lock. */
void cache_unmap_page(struct cache *c, struct cfile *f, uint64_t index,
		      uint32_t fid);
/* The same with map_lock already held. */
void cache_unmap_page_locked(struct cache *c, struct cfile *f,
			     uint64_t index, uint32_t fid);

/* rw.c: fill missing pages (see there); how: FILL_* */
#define FILL_BLOCK 1u   /* may wait for a frame */
#define FILL_AHEAD 2u   /* readahead */
int fill_pages(struct cfile *f, const uint64_t *idx, uint32_t *out,
	       unsigned n, unsigned how);

/* direct.c: kernel mode (cache.h). A read of a kernel-mode file (or one
 * reaching past CACHE_MAPPED_END), as
 * cache_read (len capped to a request, not yet to the size); and the drop
 * of the file's private clean pages in [first, end) (no lock held). */
int cache_read_direct(struct cfile *f, uint64_t off, size_t len,
		      struct cache_read_ctx *rc);
/* Write bytes that lie wholly past the pages a frame can map
 * (CACHE_MAPPED_END) to the backing file, uncached; the caller holds the
 * range lock and inval_lock shared. Bytes written, or -errno. */
ssize_t cache_write_unmapped(struct cfile *f, const void *buf, size_t len,
			     uint64_t off);
/* Where the pages a frame can map end (MAP_INDEX_MAX: 4 PiB). */
#define CACHE_MAPPED_END ((MAP_INDEX_MAX + 1) << CACHE_PAGE_SHIFT)
void cache_drop_private(struct cfile *f, uint64_t first, uint64_t end);
/* cache.c: drop the page (f, index) -> fid if f is its only mapper and it
 * is clean and unpinned; f's pidx_lock (write) and map_lock held. */
bool cache_drop_page_locked(struct cache *c, struct cfile *f, uint64_t index,
			    uint32_t fid);
/* rw.c: the context's buffer, page aligned, room for a whole request. */
int cache_read_bounce(struct cache_read_ctx *rc);
/* rw.c: a read found the disk ending at eof, short of bsize (the backing
 * size when it started): adopt it unless the mount has data of its own
 * there. pidx_lock (write) held. */
void cache_shrunk_behind_locked(struct cfile *f, uint64_t eof,
				uint64_t bsize);

/* readahead.c: a read of pages [first, last] of f has been served. */
void cache_readahead(struct cfile *f, uint64_t first, uint64_t last);
int cache_ra_start(struct cache *c);
/* Stop readahead for good (dedup_destroy, cache_destroy); queued work is
 * dropped, a fill under way finishes first. */
void cache_ra_stop(struct cache *c);

/* writeback.c */
int cache_wb_start(struct cache *c);
void cache_wb_stop(struct cache *c);
void cache_wb_mark_dirty(struct cache *c, struct cfile *f);
void cache_wb_kick(struct cache *c);
/* Write back dirty pages of f; inval_lock held (shared or exclusive).
 * Passes over one file run one at a time (wb_mutex), so when it returns
 * every write of f's pages issued before the call is on disk, and no
 * block ever has two writes in flight. */
int cfile_writeback_locked(struct cfile *f);

/* cfile.c */
int cfile_stat_ident(struct cfile *f, struct cfile_ident *id);
/* A new descriptor of f's backing file with open flags (and O_NOATIME
 * under cfg.noatime, where the daemon may); the fd or -errno. */
int cfile_reopen(struct cfile *f, int flags);
/* Free kept files whose pages were all evicted (all: every kept file). */
void cache_reap_kept(struct cache *c, bool all);
/* Drop all pages (dirty ones too: caller wrote them back or does not want
 * them); inval_lock held exclusive. inval: their data changed (counted as
 * invalidations), rather than the file's cache being let go. */
void cfile_drop_pages_locked(struct cfile *f, uint64_t first, uint64_t end,
			     bool inval);

int64_t cache_now_ns(void);

/* ms from now on CLOCK_REALTIME, for pthread_cond_timedwait. */
static inline void cache_deadline(struct timespec *ts, unsigned ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

#endif
