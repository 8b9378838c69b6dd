/*
 * cache: the page cache that serves every file read and write of a mount.
 *
 * Owns the frames (frame.h), one page index per cached file (pidx.h), the
 * backing I/O (bio.h), writeback and eviction. It knows nothing of FUSE: the
 * front end turns requests into the calls below, and dedup/ plugs in through
 * struct cache_share_ops to merge identical frames.
 *
 * Objects:
 *   struct cache  one per mount; frames, budget, counters, threads.
 *   struct cfile  one per backing inode (device, inode number) that has
 *                 been opened for I/O; reference counted (cfile_get/
 *                 cfile_put). Its pages belong to the backing file, not to
 *                 the front end's inode: after the last reference the
 *                 cfile is kept with its clean pages until eviction takes
 *                 the last one, and cfile_open() of the same inode finds
 *                 it again (revalidated: a file changed meanwhile drops
 *                 its pages). Kept files hold their descriptors up to
 *                 detached_fds_max, the least recently used give theirs
 *                 back first; a fresh open brings them back.
 *
 * Invariants:
 *   - cfile->size is the file's size as the mount sees it; backing size may
 *     lag behind while dirty pages are not yet written back.
 *   - A page the cache holds is what a read returns; a page it does not hold
 *     is read from the backing file (or is zero past the backing EOF).
 *   - Data a caller wrote reaches the backing file on cache_fsync(), on
 *     cache_flush_file() and within writeback_ms otherwise; cache_destroy()
 *     writes everything back first.
 *
 * Locking (order, outermost first):
 *   cfile->write_range      a writer holds the pages it writes (writes to
 *                           disjoint pages run side by side); truncate,
 *                           fallocate, clone and appends hold the whole
 *                           file (rangelock.h).
 *   cfile->inval_lock (rw)  exclusive for truncate, punch, invalidation;
 *                           shared for fills and writeback, so a page read
 *                           from disk can never predate a truncate/punch.
 *   cfile->wb_mutex         one writeback pass of the file at a time.
 *   cfile->pidx_lock (rw)   the file's page index and size.
 *   cache->map_lock (mutex) frame mappers (rmap), the stable/physical
 *                           tables of dedup/, the free list, the clock hand.
 *   Read hits take only pidx_lock shared and pin the frame. Eviction holds
 *   map_lock and only *tries* pidx locks, so it never inverts the order.
 *   No thread waits for a free frame while it holds a pidx_lock.
 *
 * Errors: functions return 0 (or a byte count) or -errno. Backing I/O
 * errors reach the caller as that errno; a writeback that fails keeps the
 * page dirty and reports the error on the next fsync/flush of the file.
 */
#ifndef SAMEPAGE_CACHE_H
#define SAMEPAGE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define CACHE_PAGE_SIZE 4096u
#define CACHE_PAGE_SHIFT 12
/* Largest request the front end hands us (FUSE max_pages = 256). */
#define CACHE_MAX_IO_PAGES 256u

struct cache;
struct cfile;

struct cache_config {
	uint64_t size_bytes;       /* memory budget for frames */
	unsigned detached_fds_max; /* kept files that keep descriptors
				    * (0: 256) */
	unsigned writeback_ms;     /* dirty pages reach disk within this;
				    * 0: write-through, every write is on
				    * the backing file when it returns */
	bool     readonly;         /* mount is read-only: never open for write */
	bool     noatime;          /* reads leave the backing files' atime
				    * (O_NOATIME where the daemon may) */
	bool     watch_pressure;   /* shrink on memory pressure (pressure.h) */
};

/* Counters; all monotonic except the gauges marked (g). */
struct cache_stats {
	uint64_t cache_bytes;          /* (g) resident frame bytes */
	uint64_t cache_limit_bytes;    /* (g) budget */
	uint64_t metadata_bytes;       /* (g) all the daemon's anonymous
					* memory beyond its frames, measured
					* (RssAnon, here Pss_Anon, less
					* cache_bytes and free_frame_bytes) */
	uint64_t free_frame_bytes;     /* (g) free frames whose memory the
					* kernel was not given back */
	uint64_t frames_dirty;         /* (g) */
	uint64_t files_cached;         /* (g) */
	uint64_t hits;                 /* pages served from a resident frame */
	uint64_t misses;               /* pages a read had to fill */
	uint64_t readahead_pages;      /* pages filled ahead of a stream */
	uint64_t evictions;
	uint64_t backing_read_bytes;
	uint64_t backing_write_bytes;
	uint64_t backing_reads;        /* I/O requests issued */
	uint64_t backing_writes;
	uint64_t writeback_errors;
	uint64_t cow_breaks;
	uint64_t invalidations;        /* pages dropped because their data
					* changed: truncate, punch, clone
					* over them, a file changed behind
					* the mount (not eviction, not a
					* file's cache being let go) */
	uint64_t pages_shared;         /* (g) frames with more than one mapper */
	uint64_t pages_sharing;        /* (g) mappings beyond the first */
	uint64_t zero_maps;            /* (g) pages mapped to the zero frame */
	uint64_t pages_unshared;       /* (g) one mapper, in a dedup tree */
	uint64_t pages_volatile;       /* (g) written, not yet a candidate */
	uint64_t rmap_bytes;           /* (g) mapper lists of shared frames */
	uint64_t clone_shares;         /* pages shared by cache_clone_range */
	uint64_t pressure_shrinks;     /* shrinks on memory pressure events */
	uint64_t pressure_bytes;       /* frame bytes those shrinks freed */
	uint64_t files_kept;           /* (g) files kept with pages, closed */
	uint64_t file_reattaches;      /* kept files opened again */
	uint64_t uring_fallbacks;      /* (g) threads doing I/O without
					* io_uring (preadv/pwritev) */
	uint64_t direct_read_pages;    /* pages of kernel-mode files (and
					* past 4 PiB) read from the backing
					* file, no frame taken (not misses) */
};

int cache_create(const struct cache_config *cfg, struct cache **out);
/* Writes back all dirty pages, stops threads, frees everything. Returns the
 * first writeback error, if any (pages that could not be written are lost
 * only then, and the caller logs it). */
int cache_destroy(struct cache *c);
void cache_get_stats(struct cache *c, struct cache_stats *st);
int cache_set_limit(struct cache *c, uint64_t bytes);

/*
 * Open the cache object of a backing file. path_fd is an O_PATH (or any) fd
 * of the backing inode; the cache opens its own I/O descriptors through
 * /proc/self/fd. want_write asks for a writable descriptor (re-opened if an
 * existing cfile only has a read-only one). On success *out holds a new
 * reference.
 */
int cfile_open(struct cache *c, int path_fd, bool want_write,
	       struct cfile **out);
/* A writable backing descriptor for a file opened read-only so far; the
 * old one stays open until the file is freed (a request may use it).
 * When the backing file refuses: the error of its read-write open
 * (-EPERM: immutable or append-only, -ETXTBSY: a running program), else
 * -EACCES. cfile_open() with want_write fails the same way. */
int cfile_make_writable(struct cfile *f);
void cfile_get(struct cfile *f);
/* Drops a reference; the last one writes back and frees the cfile. */
void cfile_put(struct cfile *f);
/* Close-to-open: compare the backing file's identity with the one recorded
 * when the pages were cached; drop pages and adopt the new size if it
 * changed (and nothing is dirty). Called by open. */
int cfile_revalidate(struct cfile *f);
/*
 * Kernel mode: the kernel caches the file's pages (the front end opens it
 * without direct I/O), so the cache keeps none of its own. A read takes
 * no frame: pages the cache holds anyway (dirty, or mapping a frame other
 * files share) are copied from their frames, the rest read from the
 * backing file into the read context's buffer. A write lands in the
 * cache as in shared mode, and its pages are dropped once written back
 * (writeback_ms, fsync, the last close). Switching a file to kernel mode
 * writes its dirty pages back and drops its private clean ones. The front
 * end switches only while no handle of the file is open.
 */
int cfile_set_kernel_mode(struct cfile *f, bool on);
bool cfile_kernel_mode(struct cfile *f);
/* Pages a kernel-mode read found held by other files too (a resident
 * frame with the same bytes, or a page another kernel-mode file read
 * lately): evidence that the file shares, for the front end's choice of
 * mode at its next open. Kept while the file is in shared mode; reset
 * when it enters kernel mode and when it changed behind the mount. */
uint64_t cfile_sharing_found(struct cfile *f);
/* Changes when cfile_revalidate() finds the file changed behind the
 * mount, and differs between two objects of one file: while it stays the
 * same, pages the kernel cached for the file are still true. */
uint64_t cfile_generation(struct cfile *f);
/* The size as the mount sees it. */
uint64_t cfile_size(struct cfile *f);
/* Latest write time through the mount (ns since epoch, 0 if none): the
 * front end reports max(backing mtime, this) as mtime. */
int64_t cfile_mtime_ns(struct cfile *f);
bool cfile_has_dirty(struct cfile *f);
/* The file was unlinked and has no more names: dirty pages need not reach
 * the disk any more. */
void cfile_set_orphan(struct cfile *f, bool orphan);

/*
 * Reads return pinned frames so the reply can point into them. The context
 * lives on the caller's stack or thread; no allocation per request.
 */
struct cache_read_ctx {
	unsigned     niov;
	size_t       bytes;
	struct iovec iov[CACHE_MAX_IO_PAGES + 2];
	uint32_t     fids[CACHE_MAX_IO_PAGES + 2]; /* pinned frames, 0 = none */
	void        *bounce;   /* used only under memory pressure */
};
void cache_read_ctx_init(struct cache_read_ctx *rc);
void cache_read_ctx_fini(struct cache_read_ctx *rc);
/* Fill rc->iov with len bytes at off (short only at EOF). Call
 * cache_read_release() after the reply, also on error. */
int cache_read(struct cfile *f, uint64_t off, size_t len,
	       struct cache_read_ctx *rc);
void cache_read_release(struct cfile *f, struct cache_read_ctx *rc);
/* Convenience for callers that want a copy (tests, copy_file_range). */
ssize_t cache_pread(struct cfile *f, void *buf, size_t len, uint64_t off);

/* Write len bytes at off; with append, at the end of file (*off_out says
 * where). Returns bytes written or -errno (-EFBIG past INT64_MAX). Bytes
 * past 4 PiB, where frames cannot map pages, are written and read
 * uncached (direct.c). */
ssize_t cache_write(struct cfile *f, const void *buf, size_t len,
		    uint64_t off, bool append, uint64_t *off_out);

/* Set the size; drops pages past it and zeroes the tail of the last one;
 * truncates the backing file. */
int cache_truncate(struct cfile *f, uint64_t size);
/* fallocate(2) on the file: mode as for fallocate. Writes back and drops
 * the affected cached pages around the backing call. */
int cache_fallocate(struct cfile *f, int mode, uint64_t off, uint64_t len);
/* lseek SEEK_DATA / SEEK_HOLE after writing back dirty pages. */
off_t cache_lseek(struct cfile *f, off_t off, int whence);

/* copy_file_range as a clone on the backing file system (FICLONERANGE):
 * page-aligned offsets; len is cut to whole pages unless it ends at the
 * source's EOF. The destination then maps the source's resident frames.
 * Returns bytes cloned, or -errno: -EINVAL/-EOPNOTSUPP/-EXDEV/-ENOTTY mean
 * "cannot clone this", and the caller copies instead. */
ssize_t cache_clone_range(struct cfile *src, uint64_t soff, struct cfile *dst,
			  uint64_t doff, size_t len);

/* Write back dirty pages of the file; with datasync=false/true also
 * fsync/fdatasync the backing file. Returns a pending writeback error. */
int cache_fsync(struct cfile *f, bool datasync);
int cache_flush_file(struct cfile *f);
/* Write back everything (syncfs, unmount). */
int cache_sync_all(struct cache *c);

/* Drop every cached page of the file (clean ones; dirty ones are written
 * back first). */
int cache_invalidate_file(struct cfile *f);

/* Fault injection for tests (builds with -Dfailpoints=true): key
 * fail_read or fail_write, value ERRNO, ERRNO:once or 0 (off); or a pause
 * point, key pause_NAME (pause.h). -ENOTSUP in other builds, -EINVAL for a
 * bad key or value. */
int cache_failpoint_set(const char *key, const char *value);

/* The front end's object for this file (its inode), for reports. */
void cfile_set_owner(struct cfile *f, void *owner);
void *cfile_owner(struct cfile *f);

/* Frames by number of mappers, like zdb -DD: bucket 0 holds frames with 1
 * mapper, bucket b >= 1 those with 2^(b-1)+1 .. 2^b mappers. */
#define CACHE_HIST_BUCKETS 24
struct cache_histogram {
	uint64_t frames[CACHE_HIST_BUCKETS];    /* resident frames */
	uint64_t mappings[CACHE_HIST_BUCKETS];  /* pages that map them */
};
void cache_get_histogram(struct cache *c, struct cache_histogram *h);

/* What a file shares: its resident pages, how many of them map a frame that
 * other mappings use too, and per other file how many pages it shares with
 * it (cb is called under map_lock: record, do not block). */
struct cfile_share_summary {
	uint64_t resident_pages;
	uint64_t shared_pages;     /* frames with more than one mapper */
	uint64_t zero_pages;       /* pages mapped to the zero frame */
	uint64_t reflink_pages;    /* shared through a physical extent */
	uint64_t dirty_pages;
};
typedef void (*cfile_sharer_cb)(void *arg, struct cfile *other,
				uint64_t pages);
int cfile_share_report(struct cfile *f, cfile_sharer_cb cb, void *arg,
		       struct cfile_share_summary *out);

/* Backing descriptor for metadata work (fstat, fallocate, clone); owned by
 * the cfile, valid while the caller holds a reference. */
int cfile_backing_fd(struct cfile *f);

#endif
