/* ops_xattr: extended attributes of the backing inodes, and the control
 * names of ctl.h; see ops.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "ctl.h"
#include "log.h"
#include "ops.h"

/* Larger than any value Linux lets a file system store (XATTR_SIZE_MAX). */
#define OPS_XATTR_MAX (64u << 10)

/*
 * Through /proc/self/fd/N: the magic link resolves to the inode itself,
 * symlinks included (their xattrs, not their target's), and the kernel
 * applies its own rules per type (user.* only on files and directories).
 */
static void ops_xattr_path(char buf[32], struct inode *in)
{
	snprintf(buf, 32, "/proc/self/fd/%d", in->fd);
}

/* Answer a getxattr-style request from a buffer of len bytes. */
static void ops_reply_sized(fuse_req_t req, size_t size, const char *buf,
			    size_t len, size_t probe)
{
	if (size == 0)
		fuse_reply_xattr(req, probe);
	else if (len > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, buf, len);
}

/*
 * Answer getxattr of name (listxattr when name is NULL) from the backing
 * inode at path: the size alone when the caller asks with size 0, else
 * the bytes, or ERANGE from the backing file system if they do not fit.
 */
static void ops_reply_backing(fuse_req_t req, const char *path,
			      const char *name, size_t size)
{
	char *buf = NULL;
	ssize_t n;

	if (size > OPS_XATTR_MAX)
		size = OPS_XATTR_MAX;
	if (size) {
		buf = malloc(size);
		if (!buf) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
	}
	if (name)
		n = getxattr(path, name, buf, size);
	else
		n = listxattr(path, buf, size);
	if (n < 0)
		fuse_reply_err(req, errno);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

void ops_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		  size_t size)
{
	struct spfs *fs = spfs_of(req);
	struct inode *in = spfs_inode(fs, ino);
	char path[32], *buf = NULL;

	if (ctl_owns(name)) {
		size_t len, slack;
		int ret = ctl_get(fs, in, name, &buf, &len, &slack,
				  fuse_req_ctx(req)->uid);

		if (ret) {
			fuse_reply_err(req, -ret);
			return;
		}
		ops_reply_sized(req, size, buf, len, len + slack);
		free(buf);
		return;
	}
	ops_xattr_path(path, in);
	ops_reply_backing(req, path, name, size);
}

void ops_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct spfs *fs = spfs_of(req);
	char path[32];

	ops_xattr_path(path, spfs_inode(fs, ino));
	ops_reply_backing(req, path, NULL, size);
}

/*
 * Setting an access ACL also sets the mode from it, and on a local file
 * system clears the setgid bit unless the caller is in the file's group
 * or privileged (posix_acl_update_mode). The backing file system sees the
 * daemon, which is privileged, so that part is done here; uid 0 stands
 * for CAP_FSETID, as elsewhere. (libfuse 3.14 cannot ask the kernel to
 * say so: FUSE_SETXATTR_EXT.)
 */
static void ops_acl_kill_sgid(fuse_req_t req, const char *path)
{
	struct stat st;

	if (fuse_req_ctx(req)->uid == 0 || stat(path, &st) ||
	    !(st.st_mode & S_ISGID) || ops_caller_in_group(req, st.st_gid))
		return;
	if (chmod(path, st.st_mode & 07777 & ~S_ISGID))
		log_warn("clearing the setgid bit after an ACL change: %s",
			 strerror(errno));
}

void ops_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		  const char *value, size_t size, int flags)
{
	struct spfs *fs = spfs_of(req);
	struct inode *in = spfs_inode(fs, ino);
	char path[32];

	if (ctl_owns(name)) {
		fuse_reply_err(req, -ctl_set(fs, in, name, value, size,
					     fuse_req_ctx(req)->uid));
		return;
	}
	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	ops_xattr_path(path, in);
	if (setxattr(path, name, value, size, flags)) {
		fuse_reply_err(req, errno);
		return;
	}
	if (!strcmp(name, "system.posix_acl_access"))
		ops_acl_kill_sgid(req, path);
	fuse_reply_err(req, 0);
}

void ops_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct spfs *fs = spfs_of(req);
	char path[32];

	if (ctl_owns(name)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	ops_xattr_path(path, spfs_inode(fs, ino));
	if (removexattr(path, name))
		fuse_reply_err(req, errno);
	else
		fuse_reply_err(req, 0);
}
