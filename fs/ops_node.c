/* ops_node: namespace and attribute operations; see ops.h. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <limits.h>
#include <linux/capability.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cache.h"
#include "dedup.h"
#include "log.h"
#include "ops.h"

/* /proc/self/fd/N names the inode itself, never what a symlink points to. */
#define PROC_FD_LEN 32
static void proc_fd_path(char buf[PROC_FD_LEN], int fd)
{
	snprintf(buf, PROC_FD_LEN, "/proc/self/fd/%d", fd);
}

int ops_do_lookup(struct spfs *fs, struct inode *dir, const char *name,
		  struct fuse_entry_param *e)
{
	struct inode *in;
	struct stat st;
	int fd, ret;

	memset(e, 0, sizeof(*e));
	e->attr_timeout = fs->timeout;
	e->entry_timeout = fs->timeout;

	/* The backing directory is the top: its ".." is itself. */
	if (dir == fs->itab.root && !strcmp(name, ".."))
		name = ".";
	if (spfs_hidden(fs, dir, name))
		return -ENOENT;
	fd = openat(dir->fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1)
		return -errno;
	if (fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)) {
		ret = -errno;
		close(fd);
		return ret;
	}
	ret = itab_lookup_fd(&fs->itab, fd, &st, &in);
	if (ret) {
		close(fd);
		return ret;
	}
	inode_fix_attr(in, &st);
	e->attr = st;
	e->ino = spfs_ino(fs, in);
	return 0;
}

int ops_check_regular(const struct inode *in)
{
	if (S_ISDIR(in->type))
		return -EISDIR;
	if (!S_ISREG(in->type))
		return -EINVAL;
	return 0;
}

/* Reply an entry; if the kernel did not take it, its lookup never happened. */
static void ops_reply_entry(struct spfs *fs, fuse_req_t req,
			    const struct fuse_entry_param *e)
{
	if (fuse_reply_entry(req, e) == -ENOENT && e->ino)
		itab_forget(&fs->itab, spfs_inode(fs, e->ino), 1);
}

/* Answer a request that made dir/name: its entry if ret is 0, else ret. */
static void ops_reply_made(struct spfs *fs, fuse_req_t req, struct inode *dir,
			   const char *name, int ret)
{
	struct fuse_entry_param e;

	if (!ret)
		ret = ops_do_lookup(fs, dir, name, &e);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		ops_reply_entry(fs, req, &e);
}

void ops_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct spfs *fs = spfs_of(req);
	struct fuse_entry_param e;
	int ret;

	ret = ops_do_lookup(fs, spfs_inode(fs, parent), name, &e);
	if (ret == -ENOENT) {
		/* A negative entry: the kernel remembers the miss as long as
		 * it would remember a hit. */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = fs->timeout;
		fuse_reply_entry(req, &e);
		return;
	}
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	ops_reply_entry(fs, req, &e);
}

void ops_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct spfs *fs = spfs_of(req);

	itab_forget(&fs->itab, spfs_inode(fs, ino), nlookup);
	fuse_reply_none(req);
}

void ops_forget_multi(fuse_req_t req, size_t count,
		      struct fuse_forget_data *forgets)
{
	struct spfs *fs = spfs_of(req);

	for (size_t i = 0; i < count; i++)
		itab_forget(&fs->itab, spfs_inode(fs, forgets[i].ino),
			    forgets[i].nlookup);
	fuse_reply_none(req);
}

void ops_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct stat st;
	int ret;

	ret = inode_stat(spfs_inode(fs, ino), &st);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fuse_reply_attr(req, &st, fs->timeout);
}

static int ops_set_mode(struct inode *in, mode_t mode)
{
	char path[PROC_FD_LEN];

	/* Linux has no modes on symlinks. */
	if (S_ISLNK(in->type))
		return -EOPNOTSUPP;
	proc_fd_path(path, in->fd);
	if (fchmodat(AT_FDCWD, path, mode & 07777, 0))
		return -errno;
	return 0;
}

static int ops_set_owner(struct inode *in, uid_t uid, gid_t gid)
{
	if (fchownat(in->fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
		return -errno;
	return 0;
}

static int ops_set_size(struct spfs *fs, struct inode *in, off_t size)
{
	unsigned fsflags;
	struct cfile *cf;
	int ret;

	ret = ops_check_regular(in);
	if (ret)
		return ret;
	if (fs->readonly)
		return -EROFS;
	if (size < 0)
		return -EINVAL;
	/* Through the cache, so that its pages and size follow. */
	ret = inode_cfile(fs->cache, in, true, &cf);
	if (ret)
		return ret;
	ret = ops_fsflags_of_fd(cfile_backing_fd(cf), &fsflags);
	if (!ret && (fsflags & (FS_IMMUTABLE_FL | FS_APPEND_FL)))
		ret = -EPERM;
	if (!ret)
		ret = cache_truncate(cf, (uint64_t)size);
	cfile_put(cf);
	return ret;
}

static int ops_set_times(struct spfs *fs, struct inode *in,
			 const struct stat *attr, int to_set)
{
	struct timespec tv[2];
	struct cfile *cf = NULL;
	char path[PROC_FD_LEN];
	int ret;

	tv[0].tv_sec = 0;
	tv[1].tv_sec = 0;
	if (to_set & FUSE_SET_ATTR_ATIME_NOW)
		tv[0].tv_nsec = UTIME_NOW;
	else if (to_set & FUSE_SET_ATTR_ATIME)
		tv[0] = attr->st_atim;
	else
		tv[0].tv_nsec = UTIME_OMIT;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		tv[1].tv_nsec = UTIME_NOW;
	else if (to_set & FUSE_SET_ATTR_MTIME)
		tv[1] = attr->st_mtim;
	else
		tv[1].tv_nsec = UTIME_OMIT;

	if (S_ISREG(in->type) && (to_set & FUSE_SET_ATTR_MTIME))
		cf = inode_cfile_ref(in);
	if (cf) {
		/*
		 * Write back first, or the writeback would stamp the backing
		 * file with its own time after ours (cp -p, tar, rsync set
		 * mtime right after writing). Writes before this point no
		 * longer count in the reported mtime.
		 */
		ret = cache_flush_file(cf);
		if (ret == 0) {
			pthread_mutex_lock(&in->lock);
			__atomic_store_n(&in->mtime_floor_ns,
					 cfile_mtime_ns(cf), __ATOMIC_RELAXED);
			pthread_mutex_unlock(&in->lock);
		}
		cfile_put(cf);
		if (ret)
			return ret;
	}

	if (utimensat(in->fd, "", tv, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0)
		return 0;
	if (errno != EINVAL || S_ISLNK(in->type))
		return -errno;
	/* Kernels without AT_EMPTY_PATH for utimensat. */
	proc_fd_path(path, in->fd);
	if (utimensat(AT_FDCWD, path, tv, 0))
		return -errno;
	return 0;
}

void ops_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		 int to_set, struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct inode *in = spfs_inode(fs, ino);
	struct stat st;
	int ret = 0;

	/* In the order chmod, chown, truncate, utimes, as a local fs applies
	 * the fields of one notify_change(). */
	if (to_set & FUSE_SET_ATTR_MODE)
		ret = ops_set_mode(in, attr->st_mode);
	if (!ret && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)))
		ret = ops_set_owner(in,
			(to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1,
			(to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1);
	if (!ret && (to_set & FUSE_SET_ATTR_SIZE))
		ret = ops_set_size(fs, in, attr->st_size);
	if (!ret && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME |
			       FUSE_SET_ATTR_ATIME_NOW |
			       FUSE_SET_ATTR_MTIME_NOW)))
		ret = ops_set_times(fs, in, attr, to_set);
	if (!ret)
		ret = inode_stat(in, &st);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fuse_reply_attr(req, &st, fs->timeout);
}

void ops_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct spfs *fs = spfs_of(req);
	char buf[PATH_MAX + 1];
	ssize_t n;

	n = readlinkat(spfs_inode(fs, ino)->fd, "", buf, sizeof(buf));
	if (n == -1) {
		fuse_reply_err(req, errno);
		return;
	}
	if ((size_t)n == sizeof(buf)) {
		fuse_reply_err(req, ENAMETOOLONG);
		return;
	}
	buf[n] = '\0';
	fuse_reply_readlink(req, buf);
}

bool ops_caller_in_group(fuse_req_t req, gid_t gid)
{
	gid_t some[32], *list = some;
	bool found = fuse_req_ctx(req)->gid == gid;
	int n;

	if (found)
		return true;
	n = fuse_req_getgroups(req, 32, some);
	if (n > 32) {
		list = calloc((size_t)n, sizeof(*list));
		if (list)
			n = fuse_req_getgroups(req, n, list);
	}
	for (int i = 0; list && i < n && !found; i++)
		found = list[i] == gid;
	if (list != some)
		free(list);
	return found;
}

/*
 * fsuid and fsgid are per thread on Linux. Leaving fsuid 0 drops the
 * file-system capabilities of the thread; DAC_OVERRIDE and DAC_READ_SEARCH
 * come back because the kernel already checked the caller's permissions
 * with all its groups, which this thread does not carry.
 */
static void ops_raise_dac(void)
{
	struct __user_cap_header_struct hdr = {
		.version = _LINUX_CAPABILITY_VERSION_3,
		.pid = 0,
	};
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

	if (syscall(SYS_capget, &hdr, data))
		return;
	data[0].effective |= (1u << CAP_DAC_OVERRIDE) |
			     (1u << CAP_DAC_READ_SEARCH);
	data[0].effective &= data[0].permitted;
	if (syscall(SYS_capset, &hdr, data))
		log_debug("capset: %s", strerror(errno));
}

/* Whether this request thread has a umask of its own: 0 not asked yet,
 * 1 yes, -1 no (unshare failed). */
static __thread signed char ops_thread_umask;

/*
 * With POSIX ACLs on (fs->caller_umask) the caller's umask arrives apart
 * from the mode. It becomes this thread's umask for the creation, so that
 * the backing file system applies it as a local one does: only where the
 * parent directory has no default ACL. A thread that cannot have a umask
 * of its own (the daemon's umask is 0 and shared) applies it to the mode.
 */
static void ops_umask_enter(struct spfs *fs, const struct fuse_ctx *ctx,
			    struct ops_creds *c, mode_t *mode)
{
	c->umask_set = false;
	if (!fs->caller_umask)
		return;
	if (!ops_thread_umask) {
		ops_thread_umask = unshare(CLONE_FS) ? -1 : 1;
		if (ops_thread_umask < 0)
			log_warn("unshare(CLONE_FS): %s; the umask hides "
				 "default ACLs", strerror(errno));
	}
	if (ops_thread_umask < 0) {
		*mode &= ~ctx->umask;
		return;
	}
	umask(ctx->umask);
	c->umask_set = true;
}

void ops_creds_enter(struct spfs *fs, fuse_req_t req, struct ops_creds *c,
		     mode_t *mode)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	ops_umask_enter(fs, ctx, c, mode);
	c->switched = false;
	if (!fs->as_root || (ctx->uid == 0 && ctx->gid == 0))
		return;
	setfsgid(ctx->gid);
	setfsuid(ctx->uid);
	if (ctx->uid != 0)
		ops_raise_dac();
	c->switched = true;
}

void ops_creds_leave(struct ops_creds *c)
{
	if (c->umask_set)
		umask(0);
	c->umask_set = false;
	if (!c->switched)
		return;
	/* Back to fsuid 0 restores the capabilities dropped above. */
	setfsuid(0);
	setfsgid(0);
	c->switched = false;
}

int ops_check_new_name(struct spfs *fs, struct inode *dir, const char *name)
{
	if (spfs_hidden(fs, dir, name))
		return -EPERM;
	return 0;
}

static void ops_make_node(fuse_req_t req, fuse_ino_t parent,
			  const char *name, mode_t mode, dev_t rdev,
			  const char *target)
{
	struct spfs *fs = spfs_of(req);
	struct inode *dir = spfs_inode(fs, parent);
	struct ops_creds creds;
	int ret, r;

	ret = ops_check_new_name(fs, dir, name);
	if (ret)
		goto out_reply;
	ops_creds_enter(fs, req, &creds, &mode);
	if (target)
		r = symlinkat(target, dir->fd, name);
	else if (S_ISDIR(mode))
		r = mkdirat(dir->fd, name, mode & 07777);
	else
		r = mknodat(dir->fd, name, mode, rdev);
	ret = r ? -errno : 0;
	ops_creds_leave(&creds);
out_reply:
	ops_reply_made(fs, req, dir, name, ret);
}

void ops_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
	       mode_t mode, dev_t rdev)
{
	ops_make_node(req, parent, name, mode, rdev, NULL);
}

void ops_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
	       mode_t mode)
{
	ops_make_node(req, parent, name, S_IFDIR | mode, 0, NULL);
}

void ops_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		 const char *name)
{
	ops_make_node(req, parent, name, S_IFLNK | 0777, 0, link);
}

void ops_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
	      const char *newname)
{
	struct spfs *fs = spfs_of(req);
	struct inode *in = spfs_inode(fs, ino);
	struct inode *dir = spfs_inode(fs, newparent);
	char path[PROC_FD_LEN];
	int ret;

	ret = ops_check_new_name(fs, dir, newname);
	if (ret)
		goto out_reply;
	if (linkat(in->fd, "", dir->fd, newname, AT_EMPTY_PATH)) {
		/* AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the magic link
		 * does not (and links a symlink itself, not its target). */
		proc_fd_path(path, in->fd);
		if (linkat(AT_FDCWD, path, dir->fd, newname, AT_SYMLINK_FOLLOW))
			ret = -errno;
	}
out_reply:
	ops_reply_made(fs, req, dir, newname, ret);
}

/* The regular file about to lose the name dir/name, pinned, or NULL. */
static struct inode *ops_victim(struct spfs *fs, struct inode *dir,
				const char *name)
{
	struct stat st;

	if (fstatat(dir->fd, name, &st, AT_SYMLINK_NOFOLLOW) ||
	    !S_ISREG(st.st_mode))
		return NULL;
	return itab_find_pin(&fs->itab, st.st_dev, st.st_ino);
}

/* Its last name gone, the file's dirty pages need not reach the disk. */
static void ops_victim_done(struct spfs *fs, struct inode *in)
{
	struct stat st;

	if (!in)
		return;
	if (fstatat(in->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 &&
	    st.st_nlink == 0) {
		dedup_file_deleted(fs->dedup, st.st_dev, st.st_ino);
		pthread_mutex_lock(&in->lock);
		if (in->cf)
			cfile_set_orphan(in->cf, true);
		pthread_mutex_unlock(&in->lock);
	}
	itab_unpin(&fs->itab, in);
}

void ops_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct spfs *fs = spfs_of(req);
	struct inode *dir = spfs_inode(fs, parent);
	struct inode *victim;
	int ret = 0;

	if (spfs_hidden(fs, dir, name)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	victim = ops_victim(fs, dir, name);
	if (unlinkat(dir->fd, name, 0))
		ret = errno;
	ops_victim_done(fs, victim);
	fuse_reply_err(req, ret);
}

void ops_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct spfs *fs = spfs_of(req);
	struct inode *dir = spfs_inode(fs, parent);
	int ret = 0;

	if (spfs_hidden(fs, dir, name))
		ret = ENOENT;
	else if (unlinkat(dir->fd, name, AT_REMOVEDIR))
		ret = errno;
	fuse_reply_err(req, ret);
}

void ops_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		fuse_ino_t newparent, const char *newname, unsigned flags)
{
	struct spfs *fs = spfs_of(req);
	struct inode *dir = spfs_inode(fs, parent);
	struct inode *newdir = spfs_inode(fs, newparent);
	struct inode *victim = NULL;
	int ret = 0;

	/* The kernel has checked CAP_MKNOD for RENAME_WHITEOUT (overlayfs
	 * uses it on its upper layer); the backing fs checks the rest. */
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (spfs_hidden(fs, dir, name)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (spfs_hidden(fs, newdir, newname)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (!(flags & (RENAME_NOREPLACE | RENAME_EXCHANGE)))
		victim = ops_victim(fs, newdir, newname);
	if (renameat2(dir->fd, name, newdir->fd, newname, flags))
		ret = errno;
	ops_victim_done(fs, victim);
	fuse_reply_err(req, ret);
}

void ops_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct spfs *fs = spfs_of(req);
	struct statvfs sv;

	if (fstatvfs(spfs_inode(fs, ino)->fd, &sv)) {
		fuse_reply_err(req, errno);
		return;
	}
	fuse_reply_statfs(req, &sv);
}
