/*
 * trunc: operations that change which bytes a file has: truncate,
 * fallocate (punch hole, zero range, collapse/insert range) and
 * SEEK_DATA/SEEK_HOLE. Each holds the file's inval_lock exclusively across
 * the cache change and the backing call, so no fill can bring back a page
 * from before the change.
 */
#include "cache_i.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <string.h>
#include <unistd.h>

#define PG CACHE_PAGE_SIZE

/* Zero the bytes of page index from `from` on, if the page is cached. A
 * dirty page is private (written pages are never shared), so it is zeroed
 * in place; a clean one is simply dropped and read again. */
static void zero_tail_page(struct cfile *f, uint64_t index, size_t from)
{
	struct cache *c = f->cache;
	uint32_t fid;
	bool dirty;

	pthread_rwlock_wrlock(&f->pidx_lock);
	fid = pidx_lookup(&f->pidx, index);
	dirty = fid && (frame_flags(cache_frame(c, fid)) & F_DIRTY);
	if (dirty)
		memset((char *)cache_frame_data(c, fid) + from, 0, PG - from);
	pthread_rwlock_unlock(&f->pidx_lock);
	if (fid && !dirty)
		cfile_drop_pages_locked(f, index, index + 1, true);
}

/* After a backing call on a written-back file, the disk has the truth. */
static void adopt_backing_size(struct cfile *f, uint64_t first)
{
	struct cache *c = f->cache;
	struct cfile_ident id;

	if (cfile_stat_ident(f, &id))
		return;
	pthread_rwlock_wrlock(&f->pidx_lock);
	f->ident = id;
	f->size = f->backing_size = id.size;
	if (c->share.file_changed)
		c->share.file_changed(c->share.ctx, f, first, UINT64_MAX);
	pthread_rwlock_unlock(&f->pidx_lock);
}

int cache_truncate(struct cfile *f, uint64_t size)
{
	int ret = 0;

	if (!f->fd_writable)
		return -EBADF;
	range_lock_all(&f->write_range);
	pthread_rwlock_wrlock(&f->inval_lock);
	if (ftruncate(f->fd, (off_t)size) < 0) {
		ret = -errno;
		goto out_unlock;
	}
	cfile_drop_pages_locked(f, (size + PG - 1) >> CACHE_PAGE_SHIFT,
				UINT64_MAX, true);
	if (size & (PG - 1))
		zero_tail_page(f, size >> CACHE_PAGE_SHIFT, size & (PG - 1));
	pthread_rwlock_wrlock(&f->pidx_lock);
	f->size = size;
	f->backing_size = size;
	cfile_stat_ident(f, &f->ident);
	if (f->cache->share.file_changed)
		f->cache->share.file_changed(f->cache->share.ctx, f,
					     size >> CACHE_PAGE_SHIFT,
					     UINT64_MAX);
	pthread_rwlock_unlock(&f->pidx_lock);
	atomic_store(&f->mtime_ns, cache_now_ns());
out_unlock:
	pthread_rwlock_unlock(&f->inval_lock);
	range_unlock_all(&f->write_range);
	return ret;
}

int cache_fallocate(struct cfile *f, int mode, uint64_t off, uint64_t len)
{
	uint64_t first = off >> CACHE_PAGE_SHIFT;
	uint64_t end = (off + len + PG - 1) >> CACHE_PAGE_SHIFT;
	int ret;

	if (!f->fd_writable)
		return -EBADF;
	range_lock_all(&f->write_range);
	pthread_rwlock_wrlock(&f->inval_lock);
	/* The backing call works on the disk copy: bring it up to date. */
	ret = cfile_writeback_locked(f);
	if (ret)
		goto out_unlock;
	if (mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE))
		end = UINT64_MAX;
	if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE |
		    FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE))
		cfile_drop_pages_locked(f, first, end, true);
	if (fallocate(f->fd, mode, (off_t)off, (off_t)len) < 0)
		ret = -errno;
	adopt_backing_size(f, first);
	if (!ret)
		atomic_store(&f->mtime_ns, cache_now_ns());
out_unlock:
	pthread_rwlock_unlock(&f->inval_lock);
	range_unlock_all(&f->write_range);
	return ret;
}

off_t cache_lseek(struct cfile *f, off_t off, int whence)
{
	off_t r;
	int ret;

	pthread_rwlock_rdlock(&f->inval_lock);
	ret = cfile_writeback_locked(f);
	r = ret ? ret : lseek(f->fd, off, whence);
	if (r < 0 && !ret)
		r = -errno;
	pthread_rwlock_unlock(&f->inval_lock);
	return r;
}
