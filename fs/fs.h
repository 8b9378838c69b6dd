/*
 * fs: the state of one samepagefs mount, shared by the FUSE operations.
 *
 * Owns struct spfs: the backing directory, the inode table, the cache and
 * dedup objects, and the few mount-wide settings the operations consult.
 * The FUSE layer finds it through fuse_req_userdata(). The operations
 * themselves are in ops.h, the control interface in ctl.h.
 *
 * Invariants: every field is set before the session loop starts and is
 * immutable afterwards (the objects it points to have their own locks).
 * The state directory, when it lies inside the backing directory, is
 * invisible through the mount: lookup says ENOENT, readdir skips it, and it
 * can be neither created, replaced nor renamed.
 *
 * Errors: only fs/ turns -errno into fuse_reply_err(req, -ret).
 */
#ifndef SAMEPAGE_FS_FS_H
#define SAMEPAGE_FS_FS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <semaphore.h>
#include <stdbool.h>
#include <string.h>
#include <sys/types.h>

#include "inode.h"

struct cache;
struct dedup;
struct opts;

struct spfs {
	const struct opts *opts;
	const char   *backing;       /* canonical path of the backing dir */
	size_t        backing_len;
	struct itab   itab;
	struct cache *cache;
	struct dedup *dedup;
	bool          readonly;
	bool          allow_mmap;    /* files not direct_io: shared mmap works */
	bool          as_root;       /* euid 0: create as the caller */
	bool          backing_acls;  /* the backing fs stores POSIX ACLs */
	bool          caller_umask;  /* modes come unmasked (POSIX ACLs on) */
	uid_t         owner_uid;     /* getuid(): may tune the daemon */
	double        timeout;       /* entry and attribute validity, s */

	_Atomic bool  read_ahead_set; /* bdi_set_read_ahead() was tried */

	struct fuse_session *se;     /* set before requests are served */
	sem_t         inval_slots;   /* request threads that may wait in
				      * fuse_lowlevel_notify_inval_inode */

	pthread_t     prune;         /* store pruning pass, if started */
	bool          prune_started;

	/* The state directory, opened before the mount: when it lies under
	 * the mount point (a backing dir mounted over), its path would lead
	 * through the mount that is not serving yet. */
	int           state_fd;
	char          state_path[32]; /* /proc/self/fd/N of state_fd */

	bool          hide;          /* the state dir is inside backing */
	dev_t         hide_dev;      /* its parent directory */
	ino_t         hide_ino;
	const char   *hide_name;
};

extern const struct fuse_lowlevel_ops spfs_ops;

static inline struct spfs *spfs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static inline struct inode *spfs_inode(struct spfs *fs, fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID)
		return fs->itab.root;
	return (struct inode *)(uintptr_t)ino;
}

static inline fuse_ino_t spfs_ino(struct spfs *fs, struct inode *in)
{
	if (in == fs->itab.root)
		return FUSE_ROOT_ID;
	return (fuse_ino_t)(uintptr_t)in;
}

/* Is name in directory dir the hidden state directory? */
static inline bool spfs_hidden(struct spfs *fs, struct inode *dir,
			       const char *name)
{
	return fs->hide && dir->ino == fs->hide_ino &&
	       dir->dev == fs->hide_dev && !strcmp(name, fs->hide_name);
}

#endif
