/*
 * ops: the FUSE low-level operations of samepagefs.
 *
 * Split by what they touch: ops_node.c the namespace and attributes
 * (lookup, forget, getattr, setattr, mknod, mkdir, symlink, link, unlink,
 * rmdir, rename, readlink, statfs), ops_dir.c directory handles, ops_file.c
 * file handles and the data path through the cache, ops_xattr.c extended
 * attributes and the control names, ops_ioctl.c inode flags (chattr),
 * ops.c the table, init and destroy.
 *
 * Invariants: a request is answered exactly once. Every entry replied
 * counts one lookup of its inode (readdirplus too, and it forgets the
 * entry it could not fit). Regular files are opened with direct_io: the
 * kernel keeps no copy of their pages, the cache is the only one. Locks are
 * left to the kernel (no getlk/setlk/flock), which gives the local
 * semantics of one host. Permissions are checked by the kernel
 * (default_permissions); files are created with the caller's ids.
 *
 * Locking: the handlers take only the locks of inode.h and of the cache;
 * none is held across a reply. Once a reply is sent the kernel may release
 * the handle or forget the inode at once, so a handler touches neither
 * after replying unless it holds a reference (read keeps its cfile).
 *
 * Errors: helpers return 0 or -errno; only the handlers reply errors.
 */
#ifndef SAMEPAGE_FS_OPS_H
#define SAMEPAGE_FS_OPS_H

#include "fs.h"

/* Handles of regular files: the open flags, with this bit so that a handle
 * is never mistaken for 0, and OPS_FH_KCACHE if the kernel caches the
 * file's pages through the handle (not FUSE direct I/O). */
#define OPS_FH_VALID (1ull << 63)
#define OPS_FH_KCACHE (1ull << 62)
/* The file was append-only when the handle was opened for writing: its
 * writes must keep O_APPEND (fcntl cannot clear it on a local fs). */
#define OPS_FH_APPEND_ONLY (1ull << 61)

/* ops_node.c */
void ops_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
void ops_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void ops_forget_multi(fuse_req_t req, size_t count,
		      struct fuse_forget_data *forgets);
void ops_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ops_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		 int to_set, struct fuse_file_info *fi);
void ops_readlink(fuse_req_t req, fuse_ino_t ino);
void ops_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
	       mode_t mode, dev_t rdev);
void ops_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
	       mode_t mode);
void ops_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		 const char *name);
void ops_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
	      const char *newname);
void ops_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void ops_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void ops_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		fuse_ino_t newparent, const char *newname, unsigned flags);
void ops_statfs(fuse_req_t req, fuse_ino_t ino);

/* Shared by the creating operations. */
int ops_do_lookup(struct spfs *fs, struct inode *dir, const char *name,
		  struct fuse_entry_param *e);
/* Run the creation of a new name with the caller's fsuid/fsgid and umask,
 * so that ownership, setgid directories, quotas and default ACLs behave
 * as on a local fs. *mode is the mode to create with. */
struct ops_creds {
	bool switched;
	bool umask_set;
};
void ops_creds_enter(struct spfs *fs, fuse_req_t req, struct ops_creds *c,
		     mode_t *mode);
void ops_creds_leave(struct ops_creds *c);
/* The caller's gid or one of its supplementary groups is gid. */
bool ops_caller_in_group(fuse_req_t req, gid_t gid);
/* The name is one the mount must not create or replace (EPERM). */
int ops_check_new_name(struct spfs *fs, struct inode *dir, const char *name);
/* Data operations (open, truncate) are for regular files: -EISDIR for a
 * directory, -EINVAL for any other type. */
int ops_check_regular(const struct inode *in);

/* ops_dir.c */
void ops_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ops_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		 struct fuse_file_info *fi);
void ops_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi);
void ops_releasedir(fuse_req_t req, fuse_ino_t ino,
		    struct fuse_file_info *fi);
void ops_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
		  struct fuse_file_info *fi);

/* ops_file.c */
void ops_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ops_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		mode_t mode, struct fuse_file_info *fi);
void ops_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	      struct fuse_file_info *fi);
void ops_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
	       off_t off, struct fuse_file_info *fi);
void ops_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ops_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ops_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
	       struct fuse_file_info *fi);
void ops_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
		   off_t len, struct fuse_file_info *fi);
void ops_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
	       struct fuse_file_info *fi);
void ops_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			 struct fuse_file_info *fi_in, fuse_ino_t ino_out,
			 off_t off_out, struct fuse_file_info *fi_out,
			 size_t len, int flags);

/* ops_ioctl.c */
void ops_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned cmd, void *arg,
	       struct fuse_file_info *fi, unsigned flags, const void *in_buf,
	       size_t in_bufsz, size_t out_bufsz);
/* The inode flags (FS_*_FL) of an open backing descriptor; none where
 * the backing file system keeps none. */
int ops_fsflags_of_fd(int fd, unsigned *flags);
/* -EPERM if inode flags fsflags forbid an open with open_flags for
 * writing (immutable; append-only without O_APPEND, or with O_TRUNC), as
 * the VFS refuses it on a local file system. */
int ops_fsflags_allow_open(unsigned fsflags, int open_flags);

/* ops_xattr.c */
void ops_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		  const char *value, size_t size, int flags);
void ops_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		  size_t size);
void ops_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void ops_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);

#endif
