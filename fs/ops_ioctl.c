/*
 * ops_ioctl: the inode flags of chattr(1) and xfs_io (FS_IOC_GETFLAGS,
 * FS_IOC_SETFLAGS, FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR), kept by the
 * backing file system; and what the immutable and append-only flags
 * forbid, which the kernel cannot check for a FUSE inode (it never sets
 * S_IMMUTABLE or S_APPEND on one) and the backing file system cannot
 * either, since the daemon writes through descriptors it opened before.
 *
 * The kernel sends these ioctls only for regular files and directories,
 * and only after its own checks (the caller owns the file, or has
 * CAP_FOWNER; CAP_LINUX_IMMUTABLE to change either flag): the daemon
 * passes them on. Any other ioctl is ENOTTY, as on a file system that
 * knows none.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cache.h"
#include "ops.h"

/* A descriptor of the backing inode that ioctl(2) takes (in->fd is
 * O_PATH); regular files and directories only. */
static int ops_ioctl_fd(const struct inode *in)
{
	char path[32];
	int fd;

	if (!S_ISREG(in->type) && !S_ISDIR(in->type))
		return -ENOTTY;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", in->fd);
	fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int ops_fsflags_of_fd(int fd, unsigned *flags)
{
	int v = 0;

	*flags = 0;
	if (ioctl(fd, FS_IOC_GETFLAGS, &v) == 0) {
		*flags = (unsigned)v;
		return 0;
	}
	/* A backing file system without inode flags has none set. */
	if (errno == ENOTTY || errno == EOPNOTSUPP || errno == EINVAL)
		return 0;
	return -errno;
}

int ops_fsflags_allow_open(unsigned fsflags, int open_flags)
{
	if (fsflags & FS_IMMUTABLE_FL)
		return -EPERM;
	if ((fsflags & FS_APPEND_FL) &&
	    (!(open_flags & O_APPEND) || (open_flags & O_TRUNC)))
		return -EPERM;
	return 0;
}

/* The size of the argument of a command this file system takes, or 0. */
static size_t ops_ioctl_size(unsigned cmd)
{
	switch (cmd) {
	case FS_IOC_GETFLAGS:
	case FS_IOC_SETFLAGS:
	case FS_IOC32_GETFLAGS:
	case FS_IOC32_SETFLAGS:
		return sizeof(int);
	case FS_IOC_FSGETXATTR:
	case FS_IOC_FSSETXATTR:
		return sizeof(struct fsxattr);
	}
	return 0;
}

static bool ops_ioctl_sets(unsigned cmd)
{
	return cmd == FS_IOC_SETFLAGS || cmd == FS_IOC32_SETFLAGS ||
	       cmd == FS_IOC_FSSETXATTR;
}

void ops_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned cmd, void *arg,
	       struct fuse_file_info *fi, unsigned flags, const void *in_buf,
	       size_t in_bufsz, size_t out_bufsz)
{
	struct spfs *fs = spfs_of(req);
	struct inode *in = spfs_inode(fs, ino);
	unsigned ucmd = cmd;
	size_t size = ops_ioctl_size(ucmd);
	bool sets = ops_ioctl_sets(ucmd);
	union {
		int flags;
		struct fsxattr fsx;
	} buf;
	int fd, ret = 0;

	(void)arg;
	(void)fi;
	if (!size || (flags & FUSE_IOCTL_COMPAT)) {
		fuse_reply_err(req, ENOTTY);
		return;
	}
	if ((sets && in_bufsz < size) || (!sets && out_bufsz < size)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (sets && fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	memset(&buf, 0, sizeof(buf));
	if (sets)
		memcpy(&buf, in_buf, size);
	if (sets && S_ISREG(in->type)) {
		/* Written data goes to disk first, as it would on a local fs:
		 * once the file is immutable, it could not. */
		struct cfile *cf = inode_cfile_ref(in);

		ret = cf ? -cache_flush_file(cf) : 0;
		if (cf)
			cfile_put(cf);
		if (ret) {
			fuse_reply_err(req, ret);
			return;
		}
	}
	fd = ops_ioctl_fd(in);
	if (fd < 0) {
		fuse_reply_err(req, -fd);
		return;
	}
	/* The GET and SET commands of the 32-bit ABI take an int as well. */
	if (ucmd == FS_IOC32_GETFLAGS)
		ucmd = FS_IOC_GETFLAGS;
	else if (ucmd == FS_IOC32_SETFLAGS)
		ucmd = FS_IOC_SETFLAGS;
	if (ioctl(fd, ucmd, &buf))
		ret = errno;
	close(fd);
	/* The change moved ctime; the kernel would show its cached one
	 * until the attributes time out. */
	if (!ret && sets)
		fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
	if (ret)
		fuse_reply_err(req, ret);
	else
		fuse_reply_ioctl(req, 0, sets ? NULL : &buf, sets ? 0 : size);
}
