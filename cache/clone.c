/*
 * clone: copy_file_range through the mount as a clone on the backing file
 * system (FICLONERANGE), after which the destination maps the source's
 * resident frames at once: the copy costs neither disk space nor memory.
 */
#include "cache_i.h"

#include <errno.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define PG CACHE_PAGE_SIZE

static void lock_all_pair(struct range_lock *a, struct range_lock *b)
{
	if (a > b) {
		struct range_lock *t = a;

		a = b;
		b = t;
	}
	range_lock_all(a);
	range_lock_all(b);
}

static void wrlock_pair(pthread_rwlock_t *a, pthread_rwlock_t *b)
{
	if (a > b) {
		pthread_rwlock_t *t = a;

		a = b;
		b = t;
	}
	pthread_rwlock_wrlock(a);
	pthread_rwlock_wrlock(b);
}

/* Map dst's pages [didx, didx + n) to src's resident frames from sidx. */
static uint64_t share_frames(struct cfile *src, uint64_t sidx,
			     struct cfile *dst, uint64_t didx, uint64_t n)
{
	struct cache *c = src->cache;
	uint64_t idx[64], shared = 0;
	uint32_t fid[64];
	uint64_t at = sidx;
	unsigned got;

	wrlock_pair(&src->pidx_lock, &dst->pidx_lock);
	pthread_mutex_lock(&c->map_lock);
	while ((got = pidx_gang(&src->pidx, at, sidx + n, false, idx, fid,
				64))) {
		for (unsigned i = 0; i < got; i++) {
			struct frame *fr = cache_frame(c, fid[i]);
			uint64_t d = didx + (idx[i] - sidx);

			if (frame_flags(fr) & (F_IO | F_DIRTY | F_ERROR) ||
			    pidx_lookup(&dst->pidx, d))
				continue;
			if (pidx_store(&dst->pidx, d, fid[i]))
				continue;
			if (frame_add_mapper(&c->ft, fid[i], dst, d)) {
				pidx_erase(&dst->pidx, d);
				continue;
			}
			shared++;
		}
		at = idx[got - 1] + 1;
	}
	pthread_mutex_unlock(&c->map_lock);
	pthread_rwlock_unlock(&dst->pidx_lock);
	pthread_rwlock_unlock(&src->pidx_lock);
	return shared;
}

ssize_t cache_clone_range(struct cfile *src, uint64_t soff, struct cfile *dst,
			  uint64_t doff, size_t len)
{
	struct cache *c = src->cache;
	struct file_clone_range r;
	uint64_t ssize, end;
	ssize_t ret;

	if (src == dst || ((soff | doff) & (PG - 1)))
		return -EINVAL;
	if (!dst->fd_writable)
		return -EBADF;
	lock_all_pair(&src->write_range, &dst->write_range);
	wrlock_pair(&src->inval_lock, &dst->inval_lock);
	/* The clone copies what is on disk: bring both up to date. */
	ret = cfile_writeback_locked(src);
	if (!ret)
		ret = cfile_writeback_locked(dst);
	if (ret)
		goto out_unlock;
	ssize = cfile_size(src);
	if (soff >= ssize) {
		ret = 0;
		goto out_unlock;
	}
	if (len > ssize - soff)
		len = (size_t)(ssize - soff);
	end = soff + len;
	/* Whole blocks only, except a range that ends at the source EOF. */
	if ((len & (PG - 1)) && end != ssize) {
		len &= ~(size_t)(PG - 1);
		if (!len) {
			ret = -EINVAL;
			goto out_unlock;
		}
	}
	if ((len & (PG - 1)) && doff + len < cfile_size(dst)) {
		ret = -EINVAL; /* a partial block inside dst cannot be cloned */
		goto out_unlock;
	}
	cfile_drop_pages_locked(dst, doff >> CACHE_PAGE_SHIFT,
				(doff + len + PG - 1) >> CACHE_PAGE_SHIFT, true);
	r = (struct file_clone_range){ .src_fd = src->fd,
				       .src_offset = soff,
				       .src_length = len,
				       .dest_offset = doff };
	if (ioctl(dst->fd, FICLONERANGE, &r) < 0) {
		ret = -errno;
		goto out_unlock;
	}
	pthread_rwlock_wrlock(&dst->pidx_lock);
	cfile_stat_ident(dst, &dst->ident);
	dst->size = dst->backing_size = dst->ident.size;
	if (c->share.file_changed)
		c->share.file_changed(c->share.ctx, dst,
				      doff >> CACHE_PAGE_SHIFT, UINT64_MAX);
	pthread_rwlock_unlock(&dst->pidx_lock);
	atomic_store(&dst->mtime_ns, cache_now_ns());
	atomic_fetch_add(&c->st.clone_shares,
			 share_frames(src, soff >> CACHE_PAGE_SHIFT, dst,
				      doff >> CACHE_PAGE_SHIFT,
				      (len + PG - 1) >> CACHE_PAGE_SHIFT));
	ret = (ssize_t)len;
out_unlock:
	pthread_rwlock_unlock(&dst->inval_lock);
	pthread_rwlock_unlock(&src->inval_lock);
	range_unlock_all(&dst->write_range);
	range_unlock_all(&src->write_range);
	return ret;
}
