/* ops_file: file handles and the data path through the cache; see ops.h. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bdi.h"
#include "cache.h"
#include "dedup.h"
#include "log.h"
#include "opts.h"
#include "ops.h"

/* copy_file_range moves this much per cache round trip, and at most
 * OPS_COPY_MAX per request so that one request cannot hog a worker. */
#define OPS_COPY_CHUNK (1u << 20)
#define OPS_COPY_MAX   (64u << 20)

/* One read context per worker thread, made on its first read: the reply
 * points into pinned frames, nothing is allocated per request. */
static __thread struct cache_read_ctx *ops_tls_rc;
static pthread_key_t ops_rc_key;
static pthread_once_t ops_rc_once = PTHREAD_ONCE_INIT;

static void ops_rc_free(void *p)
{
	cache_read_ctx_fini(p);
	free(p);
}

static void ops_rc_key_init(void)
{
	if (pthread_key_create(&ops_rc_key, ops_rc_free))
		log_err("pthread_key_create failed: read contexts will leak");
}

static struct cache_read_ctx *ops_read_ctx(void)
{
	struct cache_read_ctx *rc = ops_tls_rc;

	if (rc)
		return rc;
	pthread_once(&ops_rc_once, ops_rc_key_init);
	rc = malloc(sizeof(*rc));
	if (!rc)
		return NULL;
	cache_read_ctx_init(rc);
	pthread_setspecific(ops_rc_key, rc);
	ops_tls_rc = rc;
	/* libfuse does not name its workers; top -H should show them. */
	pthread_setname_np(pthread_self(), "spfs-worker");
	return rc;
}

/* O_RDONLY | O_TRUNC truncates too, so it needs a writable file. */
static bool ops_flags_write(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

static int ops_fh_flags(const struct fuse_file_info *fi)
{
	return (int)(uint32_t)fi->fh;
}

/* The handle's flags, as the kernel has them now (fcntl(F_SETFL) may have
 * changed O_APPEND since open); write requests carry them. */
static int ops_cur_flags(const struct fuse_file_info *fi)
{
	return (fi->flags & O_ACCMODE) ? fi->flags : ops_fh_flags(fi);
}

static bool ops_req_in_group(void *req, gid_t gid)
{
	return ops_caller_in_group(req, gid);
}

/* See inode_kill_suid(); uid 0 stands for CAP_FSETID. */
static int ops_modify_privs(fuse_req_t req, struct inode *in)
{
	struct spfs *fs = spfs_of(req);
	bool killed;
	int ret;

	if (fuse_req_ctx(req)->uid == 0)
		return 0;
	ret = inode_kill_suid(in, ops_req_in_group, req, &killed);
	/* The kernel cached the mode it set itself just before (it clears
	 * setuid, and setgid only where the file is group-executable):
	 * without this, stat shows the setgid bit cleared here for up to
	 * the attribute timeout. Attributes only: no page is touched. */
	if (!ret && killed)
		fuse_lowlevel_notify_inval_inode(fs->se, spfs_ino(fs, in),
						 -1, 0);
	return ret;
}

/*
 * cache_mode=auto: the kernel caches a file unless something known
 * without reading it says it shares pages. A file in shared mode stays
 * there until whole scans found none of its resident pages shared (it
 * then moves back); a kernel-mode file whose reads found its pages in
 * other files moves to shared mode.
 */
static bool ops_auto_kernel(struct spfs *fs, struct inode *in,
			    struct cfile *cf)
{
	bool kernel;

	if (!fs->dedup)
		return true;
	if (in->mode_ever && !in->kernel_mode)
		return dedup_file_stopped_sharing(fs->dedup, cf,
						  &in->shared_since);
	kernel = !cfile_sharing_found(cf) && !dedup_file_shares(fs->dedup, cf);
	if (!kernel)
		in->shared_since = dedup_full_scans(fs->dedup);
	return kernel;
}

/*
 * Who caches the file (see -o cache_mode): chosen by the first open of a
 * period in which the file has handles open, so that all of them agree.
 * In kernel mode the kernel keeps the pages it read (keep_cache) while the
 * file is the one they came from: no change behind the mount since, and
 * no shared-mode open in between (its writes bypassed the kernel).
 */
static int ops_open_mode(struct spfs *fs, struct inode *in, struct cfile *cf,
			 bool *kernel, bool *keep)
{
	int ret = 0;

	pthread_mutex_lock(&in->lock);
	if (!in->mode_set) {
		enum opts_cache_mode mode = fs->opts->cache_mode;
		bool want = mode == OPTS_MODE_KERNEL ||
			    (mode == OPTS_MODE_AUTO && ops_auto_kernel(fs, in, cf));

		ret = cfile_set_kernel_mode(cf, want);
		if (ret)
			goto out;
		if (in->mode_ever && want != in->kernel_mode)
			atomic_fetch_add(&fs->itab.mode_switches, 1);
		in->kernel_mode = want;
		in->mode_set = in->mode_ever = true;
		atomic_fetch_add(want ? &fs->itab.open_kernel
				      : &fs->itab.open_shared, 1);
	}
	*kernel = in->kernel_mode;
	*keep = *kernel && in->kcache_valid &&
		in->kcache_gen == cfile_generation(cf);
	in->kcache_valid = *kernel;
	in->kcache_gen = cfile_generation(cf);
out:
	pthread_mutex_unlock(&in->lock);
	return ret;
}

/* The kernel's readahead for the files it caches, set at the first open
 * that has it cache one: by then the kernel has the INIT reply, which
 * would put it back to at most 128 KiB. */
static void ops_read_ahead_once(struct spfs *fs)
{
	unsigned kb = fs->opts->read_ahead_kb;
	int ret;

	if (!kb || atomic_load(&fs->read_ahead_set) ||
	    atomic_exchange(&fs->read_ahead_set, true))
		return;
	ret = bdi_set_read_ahead(fs->opts->mountpoint, kb);
	if (ret)
		log_warn("could not set the kernel's readahead of %s to %u KiB "
			 "(read_ahead_kb): %s", fs->opts->mountpoint, kb,
			 strerror(-ret));
}

/* The common part of open and create; on success the handle is counted. */
static int ops_open_inode(struct spfs *fs, struct inode *in,
			  struct fuse_file_info *fi)
{
	bool want_write = ops_flags_write(fi->flags);
	unsigned fsflags = 0;
	bool kernel, keep;
	struct cfile *cf;
	int ret;

	ret = ops_check_regular(in);
	if (ret)
		return ret;
	if (want_write && fs->readonly)
		return -EROFS;
	ret = inode_open(&fs->itab, fs->cache, in, want_write, &cf);
	if (ret)
		return ret;
	/* The kernel cannot see the backing file's immutable and
	 * append-only flags, and our descriptor is older than they may be. */
	if (want_write) {
		ret = ops_fsflags_of_fd(cfile_backing_fd(cf), &fsflags);
		if (!ret)
			ret = ops_fsflags_allow_open(fsflags, fi->flags);
		if (ret)
			goto out_release;
	}
	/* Close-to-open: a file changed behind the mount drops its pages. */
	ret = cfile_revalidate(cf);
	if (ret)
		goto out_release;
	if (fi->flags & O_TRUNC) {
		ret = cache_truncate(cf, 0);
		if (ret)
			goto out_release;
	}
	ret = ops_open_mode(fs, in, cf, &kernel, &keep);
	if (ret)
		goto out_release;
	if (fi->flags & O_TRUNC)
		keep = false; /* truncated here, behind the kernel's pages */
	fi->fh = OPS_FH_VALID | (uint32_t)fi->flags;
	if (fsflags & FS_APPEND_FL)
		fi->fh |= OPS_FH_APPEND_ONLY;
	/* Shared mode: the cache is the only copy, no kernel page cache, no
	 * flush on close of a handle that never wrote. With -o allow_mmap
	 * the kernel caches the file too (twice the memory), so that shared
	 * mmap works (the kernel's own shared maps of direct-I/O files are not
	 * coherent with write(); see README, Known limits).
	 * Kernel mode: the kernel's copy is the only one. */
	fi->direct_io = !kernel && !fs->allow_mmap;
	if (!fi->direct_io) {
		fi->fh |= OPS_FH_KCACHE;
		ops_read_ahead_once(fs);
	}
	fi->keep_cache = keep;
	fi->noflush = !want_write;
#ifdef HAVE_FUSE_PARALLEL_DIRECT_WRITES
	fi->parallel_direct_writes = 1;
#endif
	return 0;

out_release:
	inode_release(&fs->itab, in, want_write);
	return ret;
}

/* The kernel did not take the handle (interrupted): no release follows. */
static void ops_open_undo(struct spfs *fs, struct inode *in,
			  struct fuse_file_info *fi)
{
	inode_release(&fs->itab, in, ops_flags_write(ops_fh_flags(fi)));
}

void ops_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct inode *in = spfs_inode(fs, ino);
	int ret;

	ret = ops_open_inode(fs, in, fi);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (fuse_reply_open(req, fi) == -ENOENT)
		ops_open_undo(fs, in, fi);
}

void ops_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		mode_t mode, struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct inode *dir = spfs_inode(fs, parent);
	struct fuse_entry_param e;
	struct ops_creds creds;
	struct inode *in;
	int ret;

	ret = ops_check_new_name(fs, dir, name);
	if (ret)
		goto out_err;
	if (fs->readonly) {
		ret = -EROFS;
		goto out_err;
	}
	ops_creds_enter(fs, req, &creds, &mode);
	ret = mknodat(dir->fd, name, S_IFREG | (mode & 07777), 0) ? -errno : 0;
	ops_creds_leave(&creds);
	/* Created behind our back since the kernel's lookup: without
	 * O_EXCL that is an open of the existing file, as open(2) does. */
	if (ret == -EEXIST && !(fi->flags & O_EXCL))
		ret = 0;
	if (ret)
		goto out_err;
	ret = ops_do_lookup(fs, dir, name, &e);
	if (ret)
		goto out_err;
	in = spfs_inode(fs, e.ino);
	ret = ops_open_inode(fs, in, fi);
	if (ret)
		goto out_forget;
	/* An existing file may just have been truncated. */
	inode_stat(in, &e.attr);
	if (fuse_reply_create(req, &e, fi) == -ENOENT) {
		ops_open_undo(fs, in, fi);
		itab_forget(&fs->itab, in, 1);
	}
	return;

out_forget:
	itab_forget(&fs->itab, in, 1);
out_err:
	fuse_reply_err(req, -ret);
}

/* A read or write names an open file and an offset in it. */
static int ops_io_check(const struct cfile *cf, off_t off)
{
	if (!cf)
		return -EBADF;
	if (off < 0)
		return -EINVAL;
	return 0;
}

void ops_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	      struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct cfile *cf = inode_cf(spfs_inode(fs, ino));
	struct cache_read_ctx *rc;
	int ret;

	ret = ops_io_check(cf, off);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	rc = ops_read_ctx();
	if (!rc) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/* The kernel never asks for more than max_pages (CACHE_MAX_IO_PAGES);
	 * a larger request would be answered short, which reads as EOF. */
	if (size > (size_t)CACHE_MAX_IO_PAGES * CACHE_PAGE_SIZE)
		size = (size_t)CACHE_MAX_IO_PAGES * CACHE_PAGE_SIZE;
	/*
	 * Once the reply is out the file may be closed, unlinked and
	 * forgotten before this thread unpins the frames: keep the cfile.
	 */
	cfile_get(cf);
	ret = cache_read(cf, (uint64_t)off, size, rc);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_iov(req, rc->iov, (int)rc->niov);
	cache_read_release(cf, rc);
	cfile_put(cf);
}

/*
 * An O_DIRECT write to a file the kernel caches: the kernel drops its
 * pages of the range before the write, and after it only if the write
 * was synchronous. Readers that read the range meanwhile (through the
 * page cache) would keep the old bytes after an asynchronous one
 * (xfstests generic/451), so the pages go again here, once the write is
 * in the cache and before it is answered: a read still in flight holds
 * its page locked, so the kernel drops that page once it is read.
 * Waiting so needs free request threads to answer those reads; at most
 * half of them wait here at once.
 */
static void ops_drop_kernel_pages(struct spfs *fs, fuse_ino_t ino,
				  uint64_t off, size_t len)
{
	int ret;

	while (sem_wait(&fs->inval_slots) && errno == EINTR)
		;
	ret = fuse_lowlevel_notify_inval_inode(fs->se, ino, (off_t)off,
					       (off_t)len);
	sem_post(&fs->inval_slots);
	if (ret && ret != -ENOENT)
		log_warn("dropping the kernel's pages after a direct write: "
			 "%s", strerror(-ret));
}

void ops_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
	       off_t off, struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct inode *in = spfs_inode(fs, ino);
	struct cfile *cf = inode_cf(in);
	/* The kernel writing back a shared mapping (writepage) writes pages
	 * where they are, whatever flags the handle it picked has. */
	bool append = !fi->writepage && (ops_cur_flags(fi) & O_APPEND);
	uint64_t where;
	ssize_t n;

	n = ops_io_check(cf, off);
	/* An append-only file takes appends only. A local file system
	 * refuses its shared writable maps; the kernel cannot know the flag
	 * here, so their writeback (never an append) is refused instead. */
	if (!n && (fi->fh & OPS_FH_APPEND_ONLY) && !append)
		n = -EPERM;
	if (!n)
		n = ops_modify_privs(req, in);
	if (n) {
		fuse_reply_err(req, (int)-n);
		return;
	}
	n = cache_write(cf, buf, size, (uint64_t)off, append, &where);
	/* Not for writepage: the kernel holds the pages under writeback
	 * until we reply, and dropping them would wait for that reply. */
	if (n > 0 && !fi->writepage && (ops_cur_flags(fi) & O_DIRECT) &&
	    (fi->fh & OPS_FH_KCACHE))
		ops_drop_kernel_pages(fs, ino, where, (size_t)n);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, (size_t)n);
}

void ops_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct cfile *cf = inode_cf(spfs_inode(fs, ino));
	int ret = 0;

	/* close() of a writer returns once its data is in the backing file,
	 * and reports a writeback error there. */
	if (cf && ops_flags_write(ops_fh_flags(fi)))
		ret = cache_flush_file(cf);
	fuse_reply_err(req, -ret);
}

void ops_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct inode *in = spfs_inode(fs, ino);
	int ret;

	ret = inode_release(&fs->itab, in, ops_flags_write(ops_fh_flags(fi)));
	if (ret)
		log_warn("writeback after the last close failed: %s",
			 strerror(-ret));
	fuse_reply_err(req, 0);
}

void ops_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
	       struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct cfile *cf = inode_cf(spfs_inode(fs, ino));

	if (!cf) {
		fuse_reply_err(req, EBADF);
		return;
	}
	fuse_reply_err(req, -cache_fsync(cf, datasync != 0));
}

void ops_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
		   off_t len, struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct inode *in = spfs_inode(fs, ino);
	struct cfile *cf = inode_cf(in);
	int ret;

	if (!cf) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (off < 0 || len <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	ret = ops_modify_privs(req, in);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fuse_reply_err(req, -cache_fallocate(cf, mode, (uint64_t)off,
					     (uint64_t)len));
}

void ops_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
	       struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct cfile *cf = inode_cf(spfs_inode(fs, ino));
	off_t ret;

	if (!cf) {
		fuse_reply_err(req, EBADF);
		return;
	}
	/* The kernel answers SEEK_SET/CUR/END itself. */
	if (whence != SEEK_DATA && whence != SEEK_HOLE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	ret = cache_lseek(cf, off, whence);
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else
		fuse_reply_lseek(req, ret);
}

/*
 * A clone of the backing range where the backing file system can (page
 * aligned, same file system): no data moves, and the destination maps the
 * source's resident frames. Otherwise copied through the cache: the
 * destination's pages are written like any write (and may merge with the
 * source's again after writeback).
 */
void ops_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			 struct fuse_file_info *fi_in, fuse_ino_t ino_out,
			 off_t off_out, struct fuse_file_info *fi_out,
			 size_t len, int flags)
{
	struct spfs *fs = spfs_of(req);
	struct inode *out = spfs_inode(fs, ino_out);
	struct cfile *src = inode_cf(spfs_inode(fs, ino_in));
	struct cfile *dst = inode_cf(out);
	size_t done = 0;
	char *buf;
	int err;

	if (!src || !dst) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (flags || off_in < 0 || off_out < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	/* The kernel refuses O_APPEND destinations, and cannot know that
	 * this one may only be appended to (F_SETFL cleared O_APPEND). */
	err = (fi_out->fh & OPS_FH_APPEND_ONLY) ? EPERM :
						  -ops_modify_privs(req, out);
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	/* A clone on the backing file system first: no data moves, and the
	 * copy shares the source's frames (cp --reflink=auto lands here). */
	if (src != dst && len) {
		ssize_t cl = cache_clone_range(src, (uint64_t)off_in, dst,
					       (uint64_t)off_out, len);

		if (cl > 0) {
			fuse_reply_write(req, (size_t)cl);
			return;
		}
		if (cl < 0 && cl != -EINVAL && cl != -EOPNOTSUPP &&
		    cl != -ENOTTY && cl != -EXDEV && cl != -ENOSYS) {
			fuse_reply_err(req, (int)-cl);
			return;
		}
	}
	if (len > OPS_COPY_MAX)
		len = OPS_COPY_MAX;
	buf = malloc(len < OPS_COPY_CHUNK ? (len ? len : 1) : OPS_COPY_CHUNK);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	while (done < len) {
		size_t chunk = len - done < OPS_COPY_CHUNK ? len - done :
			       OPS_COPY_CHUNK;
		uint64_t where;
		ssize_t n, w;

		n = cache_pread(src, buf, chunk, (uint64_t)off_in + done);
		if (n <= 0) {
			err = (int)-n;
			break;
		}
		w = cache_write(dst, buf, (size_t)n, (uint64_t)off_out + done,
				false, &where);
		if (w < 0) {
			err = (int)-w;
			break;
		}
		done += (size_t)w;
		if (w < n || (size_t)n < chunk)
			break;
	}
	free(buf);
	/* Like write(2): what was copied counts, the error comes next time. */
	if (done || !err)
		fuse_reply_write(req, done);
	else
		fuse_reply_err(req, err);
}
