/*
 * inode: the table of backing inodes the kernel knows about.
 *
 * Owns one struct inode per backing inode that a lookup has returned to the
 * kernel. Each holds an O_PATH descriptor of the backing inode, so no path
 * is ever resolved again after the lookup, and is keyed by (st_dev, st_ino)
 * so that hard links and repeated lookups meet in one object, and so in one
 * struct cfile of the cache. The FUSE node id is the object's address; the
 * root (FUSE_ROOT_ID) is the backing directory and is never freed.
 *
 * Lifetime: an inode lives while the kernel holds lookups on it (nlookup,
 * counted as in every low-level FUSE file system: +1 per entry replied,
 * -n per forget) or while someone pinned it (itab_find_pin(),
 * itab_pin_locked(): a short reference for work that must not race with a
 * forget, such as the share report or dropping an unused cfile).
 * The last of the two frees it, dropping its cfile reference, which writes
 * the file's dirty pages back. The pages stay: the cache keeps them for
 * the backing file and the next inode of that file finds them again.
 *
 * Its cfile is made at the first open and kept after the last close, so
 * that a reopen costs nothing. Kept, but not forever: each cfile costs
 * descriptors, and the kernel may keep inodes of a large tree for long.
 * The cfiles of closed files form an LRU list; past idle_max the oldest
 * reference is dropped (the inode stays; the cache keeps the pages).
 *
 * Locking (no lock is taken while holding another of this module):
 *   itab->lock     the hash chains, nlookup, pins, the idle list, and the
 *                  owner field of the cfiles when it goes to NULL
 *                  (cfile_set_owner(cf, NULL) happens under it, so that a
 *                  holder of itab->lock that finds an owner through
 *                  cfile_owner() sees a live inode it may pin).
 *   inode->lock    cf, cf_writable, the open counters,
 *                  mtime_floor_ns, the caching mode fields.
 *   cache locks    (cache.h) may be taken under either of the above; the
 *                  cache never calls back into this module.
 *   fd, dev, ino and type are immutable after creation. While a handle of
 *   the file is open (nopen > 0) cf is stable, and the I/O path reads it
 *   without the lock (inode_cf); everyone else takes a reference under the
 *   lock (inode_cfile_ref).
 *
 * Errors: functions return 0 or -errno.
 */
#ifndef SAMEPAGE_FS_INODE_H
#define SAMEPAGE_FS_INODE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

struct cache;
struct cfile;

struct inode {
	int           fd;          /* O_PATH | O_NOFOLLOW; immutable */
	dev_t         dev;         /* immutable */
	ino_t         ino;         /* immutable */
	mode_t        type;        /* S_IFMT bits; immutable */

	struct inode *hnext;       /* itab->lock */
	uint64_t      nlookup;     /* itab->lock */
	unsigned      pins;        /* itab->lock */
	struct inode *idle_prev;   /* itab->lock: LRU of unused cfiles */
	struct inode *idle_next;   /* itab->lock */
	bool          idle;        /* itab->lock: on that list */

	pthread_mutex_t lock;
	struct cfile *cf;          /* lock; see above for lockless readers */
	bool          cf_writable; /* lock */
	unsigned      nopen;       /* lock: open file handles */
	unsigned      nwriters;    /* lock: handles open for writing */
	int64_t       mtime_floor_ns; /* lock: cfile_mtime_ns() when the
	                               * mtime was last set explicitly */
	/* Caching mode (fs/ops_file.c), chosen at the first open of a
	 * period in which the file has handles open, the same for all of
	 * them; mode_set goes back to false with the last release. */
	bool          mode_set;    /* lock */
	bool          mode_ever;   /* lock: a mode was ever chosen */
	bool          kernel_mode; /* lock: the kernel caches the file */
	bool          kcache_valid; /* lock: the kernel's pages of the file
	                             * were true at cfile generation
	                             * kcache_gen */
	uint64_t      kcache_gen;  /* lock */
	uint64_t      shared_since; /* lock: dedup's full scans when the
	                             * file entered shared mode or was
	                             * last asked whether it stopped
	                             * sharing (auto) */
	bool          maybe_suid;  /* atomic: a setuid/setgid mode was seen */
};

struct itab {
	pthread_mutex_t lock;
	struct inode  **buckets;   /* lock */
	size_t          nbuckets;  /* lock; a power of two */
	size_t          count;     /* lock */
	struct inode   *idle_first; /* lock: least recently closed */
	struct inode   *idle_last;  /* lock */
	size_t          nidle;     /* lock */
	size_t          idle_max;  /* immutable after itab_init() */
	struct inode   *root;      /* immutable after itab_init() */
	/* files with handles open, by caching mode (inode->kernel_mode) */
	_Atomic uint64_t open_kernel, open_shared;
	_Atomic uint64_t mode_switches; /* a file's mode changed at open */
};

/* Takes ownership of root_fd (an O_PATH descriptor of the backing dir).
 * idle_max: how many closed files keep their cfile. */
int itab_init(struct itab *t, int root_fd, size_t idle_max);
/* Frees every inode (dropping the cfiles writes their pages back). */
void itab_destroy(struct itab *t);

/*
 * The inode of the backing object that fd (O_PATH) refers to, st its
 * attributes: found (fd is closed) or inserted (fd is kept), with one more
 * lookup counted. Never fails once st is known except for -ENOMEM.
 */
int itab_lookup_fd(struct itab *t, int fd, const struct stat *st,
		   struct inode **out);
/* Count one more kernel lookup of an inode already known (link, root). */
void itab_ref(struct itab *t, struct inode *in);
void itab_forget(struct itab *t, struct inode *in, uint64_t nlookup);

/* Find a known inode and pin it, or NULL. */
struct inode *itab_find_pin(struct itab *t, dev_t dev, ino_t ino);
/* Pin an inode; the caller holds t->lock (itab_lock). */
void itab_pin_locked(struct inode *in);
void itab_unpin(struct itab *t, struct inode *in);
void itab_lock(struct itab *t);
void itab_unlock(struct itab *t);

/*
 * The inode's cfile, opened at the first need, with a reference for the
 * caller. want_write makes sure it has a writable backing descriptor.
 */
int inode_cfile(struct cache *c, struct inode *in, bool want_write,
		struct cfile **out);
/* The cfile if there is one, with a reference for the caller, or NULL. */
struct cfile *inode_cfile_ref(struct inode *in);

/*
 * Open accounting for file handles: the cfile of an open file stays (*out
 * is valid, without a reference of its own, until inode_release()). The
 * release of the last writer writes the file back first and returns that
 * writeback's error.
 */
int inode_open(struct itab *t, struct cache *c, struct inode *in,
	       bool want_write, struct cfile **out);
int inode_release(struct itab *t, struct inode *in, bool was_writer);

/* Loads cf without the lock: only for a file with an open handle. */
static inline struct cfile *inode_cf(struct inode *in)
{
	return __atomic_load_n(&in->cf, __ATOMIC_ACQUIRE);
}

/* st_size and the times of a regular file as the mount sees them: the
 * cache may hold data and writes that the backing inode does not show yet. */
void inode_fix_attr(struct inode *in, struct stat *st);
/* fstat of the backing inode, fixed up. */
int inode_stat(struct inode *in, struct stat *st);
/*
 * A write by a caller without CAP_FSETID clears setuid, and setgid if the
 * file is group-executable or the caller is not in its group (in_group
 * says, asked only then), as on a local fs. The kernel leaves it to us
 * for direct I/O writes and fallocate, and the writeback, done as root,
 * would keep them. Cheap unless the inode was ever seen with such a mode.
 * *killed: whether the mode changed.
 */
int inode_kill_suid(struct inode *in, bool (*in_group)(void *arg, gid_t gid),
		    void *arg, bool *killed);

#endif
