/* cfile: the cache's object for one backing file; see cache.h. */
#include "cache_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t cache_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t ts_ns(struct timespec ts)
{
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int cfile_stat_ident(struct cfile *f, struct cfile_ident *id)
{
	struct stat st;

	if (fstat(f->fd, &st) < 0)
		return -errno;
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	id->size = (uint64_t)st.st_size;
	id->mtime_ns = ts_ns(st.st_mtim);
	id->ctime_ns = ts_ns(st.st_ctim);
	id->uid = st.st_uid;
	return 0;
}

static int reopen(int path_fd, int flags)
{
	char p[64];
	int fd;

	snprintf(p, sizeof(p), "/proc/self/fd/%d", path_fd);
	fd = open(p, flags | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* The best descriptor we can have: read-write and O_DIRECT if allowed. */
static int open_io_fd(struct cfile *f, bool readonly)
{
	int modes[2] = { O_RDWR, O_RDONLY };

	for (int m = readonly ? 1 : 0; m < 2; m++) {
		int fd = reopen(f->path_fd, modes[m] | O_DIRECT);

		if (fd == -EINVAL) {
			/* The backing fs refuses O_DIRECT: buffered it is. */
			fd = reopen(f->path_fd, modes[m]);
			if (fd >= 0) {
				f->fd = fd;
				f->fd_direct = false;
				f->fd_writable = m == 0;
				return 0;
			}
		}
		if (fd >= 0) {
			f->fd = fd;
			f->fd_direct = true;
			f->fd_writable = m == 0;
			return 0;
		}
		if (fd != -EACCES && fd != -EROFS && fd != -EPERM &&
		    fd != -ETXTBSY)
			return fd;
	}
	return -EACCES;
}

static void files_link(struct cache *c, struct cfile *f)
{
	pthread_mutex_lock(&c->files_lock);
	f->all_next = c->files_head.all_next;
	f->all_prev = &c->files_head;
	c->files_head.all_next->all_prev = f;
	c->files_head.all_next = f;
	c->nr_files++;
	pthread_mutex_unlock(&c->files_lock);
}

static void files_unlink(struct cache *c, struct cfile *f)
{
	pthread_mutex_lock(&c->files_lock);
	f->all_prev->all_next = f->all_next;
	f->all_next->all_prev = f->all_prev;
	c->nr_files--;
	pthread_mutex_unlock(&c->files_lock);
}

int cfile_open(struct cache *c, int path_fd, bool want_write,
	       struct cfile **out)
{
	struct cfile *f;
	int ret;

	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->cache = c;
	atomic_init(&f->refs, 1);
	f->fd = f->wfd = -1;
	f->path_fd = fcntl(path_fd, F_DUPFD_CLOEXEC, 3);
	if (f->path_fd < 0) {
		ret = -errno;
		goto out_free;
	}
	ret = open_io_fd(f, c->cfg.readonly);
	if (ret)
		goto out_close_path;
	if (want_write && !f->fd_writable) {
		ret = -EACCES;
		goto out_close_fd;
	}
	ret = cfile_stat_ident(f, &f->ident);
	if (ret)
		goto out_close_fd;
	pthread_rwlock_init(&f->inval_lock, NULL);
	pthread_rwlock_init(&f->pidx_lock, NULL);
	pthread_mutex_init(&f->write_lock, NULL);
	pthread_mutex_init(&f->wb_mutex, NULL);
	pidx_init(&f->pidx);
	f->size = f->backing_size = f->ident.size;
	files_link(c, f);
	*out = f;
	return 0;

out_close_fd:
	close(f->fd);
out_close_path:
	close(f->path_fd);
out_free:
	free(f);
	return ret;
}

void cfile_get(struct cfile *f)
{
	atomic_fetch_add(&f->refs, 1);
}

/* Remove (f, index) -> fid for all pages in [first, end). */
void cfile_drop_pages_locked(struct cfile *f, uint64_t first, uint64_t end)
{
	struct cache *c = f->cache;
	uint64_t idx[64];
	uint32_t fid[64];
	unsigned n;

	pthread_rwlock_wrlock(&f->pidx_lock);
	while ((n = pidx_gang(&f->pidx, first, end, false, idx, fid, 64))) {
		pthread_mutex_lock(&c->map_lock);
		for (unsigned i = 0; i < n; i++) {
			struct frame *fr = cache_frame(c, fid[i]);

			if (frame_flags(fr) & F_DIRTY) {
				frame_clear(fr, F_DIRTY);
				atomic_fetch_sub(&c->nr_dirty, 1);
			}
			pidx_erase(&f->pidx, idx[i]);
			cache_unmap_page_locked(c, f, idx[i], fid[i]);
		}
		pthread_mutex_unlock(&c->map_lock);
		atomic_fetch_add(&c->st.invalidations, n);
		first = idx[n - 1] + 1;
	}
	pthread_rwlock_unlock(&f->pidx_lock);
}

void cfile_put(struct cfile *f)
{
	struct cache *c = f->cache;
	int err;

	if (atomic_fetch_sub(&f->refs, 1) != 1)
		return;
	pthread_rwlock_wrlock(&f->inval_lock);
	if (atomic_load(&f->orphan)) {
		if (c->share.file_gone)
			c->share.file_gone(c->share.ctx, f);
	} else {
		err = cfile_writeback_locked(f);
		if (err)
			fprintf(stderr, "samepagefs: writeback of a closed file "
				"failed: %s; its unwritten pages are lost\n",
				strerror(-err));
	}
	cfile_drop_pages_locked(f, 0, UINT64_MAX);
	pthread_rwlock_unlock(&f->inval_lock);
	files_unlink(c, f);
	pidx_destroy(&f->pidx);
	pthread_rwlock_destroy(&f->inval_lock);
	pthread_rwlock_destroy(&f->pidx_lock);
	pthread_mutex_destroy(&f->write_lock);
	pthread_mutex_destroy(&f->wb_mutex);
	if (f->wfd >= 0)
		close(f->wfd);
	close(f->fd);
	close(f->path_fd);
	free(f->extents);
	free(f->persist);
	free(f);
}

int cfile_revalidate(struct cfile *f)
{
	struct cfile_ident now;
	int ret;

	pthread_rwlock_wrlock(&f->inval_lock);
	ret = cfile_stat_ident(f, &now);
	if (ret)
		goto out;
	if (cfile_ident_equal(&now, &f->ident))
		goto out;
	if (cfile_has_dirty(f)) {
		/* Our unwritten data wins; it is written over the change. */
		f->ident = now;
		goto out;
	}
	cfile_drop_pages_locked(f, 0, UINT64_MAX);
	pthread_rwlock_wrlock(&f->pidx_lock);
	f->size = f->backing_size = now.size;
	pthread_rwlock_unlock(&f->pidx_lock);
	f->ident = now;
out:
	pthread_rwlock_unlock(&f->inval_lock);
	return ret;
}

uint64_t cfile_size(struct cfile *f)
{
	uint64_t s;

	pthread_rwlock_rdlock(&f->pidx_lock);
	s = f->size;
	pthread_rwlock_unlock(&f->pidx_lock);
	return s;
}

int64_t cfile_mtime_ns(struct cfile *f)
{
	return atomic_load(&f->mtime_ns);
}

bool cfile_has_dirty(struct cfile *f)
{
	bool d;

	pthread_rwlock_rdlock(&f->pidx_lock);
	d = f->pidx.nr_tagged > 0 || f->size != f->backing_size;
	pthread_rwlock_unlock(&f->pidx_lock);
	return d;
}

void cfile_set_orphan(struct cfile *f, bool orphan)
{
	atomic_store(&f->orphan, orphan);
}

void cfile_set_owner(struct cfile *f, void *owner)
{
	f->owner = owner;
}

void *cfile_owner(struct cfile *f)
{
	return f->owner;
}

int cfile_backing_fd(struct cfile *f)
{
	return f->fd;
}

int cache_invalidate_file(struct cfile *f)
{
	int ret;

	pthread_rwlock_wrlock(&f->inval_lock);
	ret = cfile_writeback_locked(f);
	if (!ret)
		cfile_drop_pages_locked(f, 0, UINT64_MAX);
	pthread_rwlock_unlock(&f->inval_lock);
	return ret;
}

int cfile_share_report(struct cfile *f, cfile_sharer_cb cb, void *arg,
		       struct cfile_share_summary *out)
{
	struct cache *c = f->cache;
	uint64_t idx[64];
	uint32_t fid[64];
	uint64_t start = 0;
	unsigned n;

	memset(out, 0, sizeof(*out));
	pthread_rwlock_rdlock(&f->pidx_lock);
	while ((n = pidx_gang(&f->pidx, start, UINT64_MAX, false, idx, fid,
			      64))) {
		pthread_mutex_lock(&c->map_lock);
		for (unsigned i = 0; i < n; i++) {
			struct frame *fr = cache_frame(c, fid[i]);
			uint32_t fl = frame_flags(fr);

			out->resident_pages++;
			if (fid[i] == FID_ZERO) {
				out->zero_pages++;
				continue;
			}
			if (fl & F_DIRTY)
				out->dirty_pages++;
			if (fr->nmappers > 1) {
				struct rmap *r = fr->m.rmap;

				out->shared_pages++;
				if (fl & F_PHYS)
					out->reflink_pages++;
				for (uint32_t k = 0; cb && k < r->n; k++)
					if (r->m[k].file != f)
						cb(arg, r->m[k].file, 1);
			}
		}
		pthread_mutex_unlock(&c->map_lock);
		start = idx[n - 1] + 1;
	}
	pthread_rwlock_unlock(&f->pidx_lock);
	return 0;
}
