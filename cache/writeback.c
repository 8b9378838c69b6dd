/*
 * writeback: dirty pages back to their own backing files.
 *
 * A file with dirty pages is on the cache's dirty list (oldest first,
 * holding a reference). The writeback thread writes back every file whose
 * first dirty page is older than writeback_ms, and everything when kicked
 * (memory pressure). fsync, flush and release write back one file at once.
 *
 * A page is written from the frame itself (O_DIRECT, pinned, WB set); its
 * DIRTY bit is cleared before the write is issued, so a write through the
 * mount meanwhile dirties it again and it is written once more. A failed
 * write leaves the page dirty and records the error for the next
 * fsync/flush of the file.
 *
 * Order: one pass over a file at a time (wb_mutex), so fsync and the last
 * close wait for a pass the writeback thread has started, and a block
 * never has two writes in flight. Within a batch, the file's identity,
 * its extent map and its stored fingerprints are brought up to date
 * before WB is cleared: a written page can be evicted and refilled only
 * once everything that judges a refill knows the disk changed.
 */
#include "cache_i.h"
#include "bio.h"
#include "pause.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WB_BATCH 256u
#define PG CACHE_PAGE_SIZE

/* A buffered descriptor for the partial last page: O_DIRECT writes whole
 * pages only, and the file must not grow past its size. */
static int tail_fd(struct cfile *f)
{
	if (!f->fd_direct)
		return f->fd;
	if (f->wfd < 0) {
		int fd = cfile_reopen(f, O_WRONLY);

		/* Made append-only or immutable since f->fd was opened: no
		 * new descriptor may write it, f->fd still may. It goes
		 * buffered for good (O_DIRECT is a flag of the open file
		 * that F_SETFL may clear); wfd is then a duplicate of it. */
		if (fd == -EPERM) {
			int fl = fcntl(f->fd, F_GETFL);

			if (fl >= 0 && fcntl(f->fd, F_SETFL, fl & ~O_DIRECT) == 0)
				fd = fcntl(f->fd, F_DUPFD_CLOEXEC, 0);
			if (fd < 0)
				fd = -EPERM;
		}
		if (fd < 0)
			return fd;
		f->wfd = fd;
	}
	return f->wfd;
}

/* A page whose write failed is dirty again (unless rewritten or dropped
 * meanwhile); pidx_lock (write) held. */
static void redirty_locked(struct cfile *f, uint64_t index, uint32_t fid)
{
	struct cache *c = f->cache;
	struct frame *fr = cache_frame(c, fid);

	if (pidx_lookup(&f->pidx, index) == fid &&
	    !(frame_flags(fr) & F_DIRTY)) {
		frame_set(fr, F_DIRTY);
		pidx_tag_set(&f->pidx, index);
		atomic_fetch_add(&c->nr_dirty, 1);
	}
}

/* Take up to WB_BATCH dirty pages from start on; returns how many. */
static unsigned grab_dirty(struct cfile *f, uint64_t start, uint64_t *idx,
			   uint32_t *fid, uint64_t *size)
{
	struct cache *c = f->cache;
	unsigned n;

	pthread_rwlock_wrlock(&f->pidx_lock);
	n = pidx_gang(&f->pidx, start, UINT64_MAX, true, idx, fid, WB_BATCH);
	*size = f->size;
	for (unsigned i = 0; i < n; i++) {
		struct frame *fr = cache_frame(c, fid[i]);

		frame_pin(fr);
		frame_set(fr, F_WB);
		frame_clear(fr, F_DIRTY);
		pidx_tag_clear(&f->pidx, idx[i]);
		atomic_fetch_sub(&c->nr_dirty, 1);
	}
	pthread_rwlock_unlock(&f->pidx_lock);
	return n;
}

static unsigned build_requests(struct cfile *f, const uint64_t *idx,
			       const uint32_t *fid, unsigned n, uint64_t size,
			       struct iovec *iov, struct bio_req *req,
			       int *err)
{
	struct cache *c = f->cache;
	unsigned nreq = 0;

	for (unsigned i = 0; i < n; i++) {
		uint64_t off = idx[i] << CACHE_PAGE_SHIFT;
		size_t len = PG;
		int fd = f->fd;

		if (off >= size)
			continue; /* truncated meanwhile */
		if (size - off < PG) {
			len = (size_t)(size - off);
			fd = tail_fd(f);
			if (fd < 0) {
				*err = fd;
				continue;
			}
		}
		iov[i].iov_base = cache_frame_data(c, fid[i]);
		iov[i].iov_len = len;
		if (nreq && len == PG && req[nreq - 1].fd == fd &&
		    req[nreq - 1].iov + req[nreq - 1].niov == &iov[i] &&
		    req[nreq - 1].off + (uint64_t)req[nreq - 1].niov * PG == off) {
			req[nreq - 1].niov++;
			continue;
		}
		req[nreq++] = (struct bio_req){ .fd = fd, .write = true,
						.off = off, .iov = &iov[i],
						.niov = 1 };
	}
	return nreq;
}

/* The disk changed under pages [first, first + n) of f: take the file's
 * new identity and tell dedup (extent map, stored fingerprints), so that a
 * page refilled from now on is judged by what the disk holds now.
 * pidx_lock (write) held. */
static void disk_changed_locked(struct cfile *f, uint64_t first, uint64_t n)
{
	struct cache *c = f->cache;

	cfile_stat_ident(f, &f->ident);
	if (c->share.file_changed)
		c->share.file_changed(c->share.ctx, f, first, n);
}

/* Write one batch taken by grab_dirty; returns 0 or the first error.
 * The pages stay pinned under WB until the file's identity and dedup's
 * view of it are updated: only then may they be evicted and refilled. */
static int write_batch(struct cfile *f, const uint64_t *idx,
		       const uint32_t *fid, unsigned n, uint64_t size)
{
	struct cache *c = f->cache;
	struct iovec iov[WB_BATCH];
	struct bio_req req[WB_BATCH];
	uint64_t written_end = 0, first_page = UINT64_MAX, last_page = 0;
	unsigned nreq;
	int err = 0, ret = 0;

	memset(iov, 0, sizeof(iov[0]) * n);
	nreq = build_requests(f, idx, fid, n, size, iov, req, &ret);
	pause_point(PAUSE_WB_BEFORE_IO);
	if (nreq)
		ret = bio_run(req, nreq) ?: ret;
	atomic_fetch_add(&c->st.backing_writes, nreq);

	pthread_rwlock_wrlock(&f->pidx_lock);
	/* A page inside the file that no request took: its tail descriptor
	 * could not be opened. It stays dirty. */
	for (unsigned i = 0; i < n; i++)
		if (!iov[i].iov_base && idx[i] << CACHE_PAGE_SHIFT < size)
			redirty_locked(f, idx[i], fid[i]);
	for (unsigned r = 0; r < nreq; r++) {
		unsigned first = (unsigned)(req[r].iov - iov);
		unsigned last = first + req[r].niov - 1;
		ssize_t res = req[r].res;

		if (res < 0 || ret < 0) {
			for (unsigned k = first; k <= last; k++)
				redirty_locked(f, idx[k], fid[k]);
			if (!err)
				err = res < 0 ? (int)res : ret;
			atomic_fetch_add(&c->st.writeback_errors, 1);
			continue;
		}
		if (idx[first] < first_page)
			first_page = idx[first];
		if (idx[last] > last_page)
			last_page = idx[last];
		atomic_fetch_add(&c->st.backing_write_bytes, (uint64_t)res);
		if (req[r].off + (uint64_t)res > written_end)
			written_end = req[r].off + (uint64_t)res;
	}
	/* Past the old backing size too: a fill there would otherwise take
	 * the page for a hole and read zeros. */
	if (written_end > f->backing_size)
		f->backing_size = written_end;
	if (first_page != UINT64_MAX)
		disk_changed_locked(f, first_page, last_page - first_page + 1);
	pthread_rwlock_unlock(&f->pidx_lock);

	for (unsigned i = 0; i < n; i++) {
		frame_clear(cache_frame(c, fid[i]), F_WB);
		cache_frame_unpin(c, fid[i]);
	}
	/* Kernel mode: the kernel holds what was written; once it is on
	 * disk the cache keeps no copy. */
	if (first_page != UINT64_MAX && atomic_load(&f->kernel_mode))
		cache_drop_private(f, first_page, last_page + 1);
	atomic_store(&c->wb_last_err, err);
	pause_point(PAUSE_WB_BATCH_DONE);
	return err ? err : (ret < 0 && !nreq ? ret : 0);
}

int cfile_writeback_locked(struct cfile *f)
{
	uint64_t idx[WB_BATCH];
	uint32_t fid[WB_BATCH];
	uint64_t start = 0, size = 0;
	int err = 0;
	unsigned n;

	pthread_mutex_lock(&f->wb_mutex);
	while ((n = grab_dirty(f, start, idx, fid, &size))) {
		int ret = write_batch(f, idx, fid, n, size);

		if (ret && !err)
			err = ret;
		start = idx[n - 1] + 1;
	}

	pthread_rwlock_wrlock(&f->pidx_lock);
	/* Extended by truncate or a write past a hole: size it on disk. */
	if (!err && f->backing_size < f->size) {
		if (ftruncate(f->fd, (off_t)f->size) == 0) {
			f->backing_size = f->size;
			disk_changed_locked(f, 0, 0);
		} else {
			err = -errno;
		}
	}
	pthread_rwlock_unlock(&f->pidx_lock);
	pthread_mutex_unlock(&f->wb_mutex);
	if (err)
		atomic_store(&f->wb_err, err);
	return err;
}

static void wb_list_del(struct cfile *f);

/* A file written back by fsync/flush leaves the dirty list, so that its
 * reference (and descriptors) go with the last close. */
static void wb_forget_if_clean(struct cache *c, struct cfile *f)
{
	bool drop = false;

	if (cfile_has_dirty(f))
		return;
	pthread_mutex_lock(&c->wb_lock);
	if (f->on_wb_list && c->wb_started) {
		wb_list_del(f);
		drop = true;
	}
	pthread_mutex_unlock(&c->wb_lock);
	if (drop)
		cfile_put(f);
}

void cache_wb_mark_dirty(struct cache *c, struct cfile *f)
{
	pthread_mutex_lock(&c->wb_lock);
	if (!f->on_wb_list) {
		cfile_get(f);
		f->on_wb_list = true;
		f->dirtied_ns = cache_now_ns();
		f->wb_prev = c->wb_head.wb_prev;
		f->wb_next = &c->wb_head;
		c->wb_head.wb_prev->wb_next = f;
		c->wb_head.wb_prev = f;
	}
	pthread_mutex_unlock(&c->wb_lock);
}

static void wb_list_del(struct cfile *f)
{
	f->wb_prev->wb_next = f->wb_next;
	f->wb_next->wb_prev = f->wb_prev;
	f->on_wb_list = false;
}

void cache_wb_kick(struct cache *c)
{
	pthread_mutex_lock(&c->wb_lock);
	c->wb_kick = true;
	pthread_cond_signal(&c->wb_cond);
	pthread_mutex_unlock(&c->wb_lock);
}

#define WB_GRAB 64

static void *wb_main(void *arg)
{
	struct cache *c = arg;
	uint64_t period_ms = c->cfg.writeback_ms / 5;

	pthread_setname_np(pthread_self(), "sp-writeback");
	if (period_ms < 20)
		period_ms = 20;
	if (period_ms > 1000)
		period_ms = 1000;
	pthread_mutex_lock(&c->wb_lock);
	while (!c->wb_stop) {
		struct cfile *todo[WB_GRAB];
		unsigned n = 0;
		int64_t now, age = (int64_t)c->cfg.writeback_ms * 1000000;
		bool all;

		if (!c->wb_kick) {
			struct timespec ts;

			cache_deadline(&ts, (unsigned)period_ms);
			pthread_cond_timedwait(&c->wb_cond, &c->wb_lock, &ts);
		}
		all = c->wb_kick;
		c->wb_kick = false;
		now = cache_now_ns();
		while (n < WB_GRAB && c->wb_head.wb_next != &c->wb_head) {
			struct cfile *f = c->wb_head.wb_next;

			if (!all && now - f->dirtied_ns < age)
				break;
			wb_list_del(f);
			todo[n++] = f; /* the list's reference moves here */
		}
		pthread_mutex_unlock(&c->wb_lock);
		for (unsigned i = 0; i < n; i++) {
			struct cfile *f = todo[i];
			int ret;

			pthread_rwlock_rdlock(&f->inval_lock);
			ret = cfile_writeback_locked(f);
			pthread_rwlock_unlock(&f->inval_lock);
			/* An unlinked file that cannot be written is not
			 * retried: its pages go with its last reference. */
			if ((ret || cfile_has_dirty(f)) &&
			    !atomic_load(&f->orphan))
				cache_wb_mark_dirty(c, f);
			cfile_put(f);
		}
		/* Kept files whose last page was evicted go now. */
		if (atomic_load(&c->st.evictions) != c->reaped_at) {
			c->reaped_at = atomic_load(&c->st.evictions);
			cache_reap_kept(c, false);
		}
		pthread_mutex_lock(&c->wb_lock);
		if (n == WB_GRAB)
			c->wb_kick = c->wb_kick || all;
	}
	pthread_mutex_unlock(&c->wb_lock);
	return NULL;
}

int cache_wb_start(struct cache *c)
{
	int ret = pthread_create(&c->wb_thread, NULL, wb_main, c);

	if (ret)
		return -ret;
	c->wb_started = true;
	return 0;
}

void cache_wb_stop(struct cache *c)
{
	if (!c->wb_started)
		return;
	pthread_mutex_lock(&c->wb_lock);
	c->wb_stop = true;
	pthread_cond_signal(&c->wb_cond);
	pthread_mutex_unlock(&c->wb_lock);
	pthread_join(c->wb_thread, NULL);
	c->wb_started = false;
	/* Files still listed are written back by cache_sync_all; drop the
	 * list's references once that is done (cache_destroy). */
}

static void wb_list_drain(struct cache *c)
{
	pthread_mutex_lock(&c->wb_lock);
	while (c->wb_head.wb_next != &c->wb_head) {
		struct cfile *f = c->wb_head.wb_next;

		wb_list_del(f);
		pthread_mutex_unlock(&c->wb_lock);
		cfile_put(f);
		pthread_mutex_lock(&c->wb_lock);
	}
	pthread_mutex_unlock(&c->wb_lock);
}

int cache_fsync(struct cfile *f, bool datasync)
{
	int ret, pending;

	pthread_rwlock_rdlock(&f->inval_lock);
	ret = cfile_writeback_locked(f);
	pthread_rwlock_unlock(&f->inval_lock);
	pending = atomic_exchange(&f->wb_err, 0);
	if (ret)
		return ret;
	if ((datasync ? fdatasync(f->fd) : fsync(f->fd)) < 0)
		return -errno;
	wb_forget_if_clean(f->cache, f);
	return pending;
}

int cache_flush_file(struct cfile *f)
{
	int ret, pending;

	pthread_rwlock_rdlock(&f->inval_lock);
	ret = cfile_writeback_locked(f);
	pthread_rwlock_unlock(&f->inval_lock);
	pending = atomic_exchange(&f->wb_err, 0);
	if (!ret)
		wb_forget_if_clean(f->cache, f);
	return ret ? ret : pending;
}

int cache_sync_all(struct cache *c)
{
	struct cfile **all;
	size_t n = 0, cap;
	int err = 0;

	pthread_mutex_lock(&c->files_lock);
	cap = c->nr_files;
	all = calloc(cap ? cap : 1, sizeof(*all));
	if (!all) {
		pthread_mutex_unlock(&c->files_lock);
		return -ENOMEM;
	}
	for (struct cfile *f = c->files_head.all_next;
	     f != &c->files_head && n < cap; f = f->all_next) {
		if (f->state != CF_ATTACHED)
			continue; /* kept files are clean */
		cfile_get(f);
		all[n++] = f;
	}
	pthread_mutex_unlock(&c->files_lock);
	for (size_t i = 0; i < n; i++) {
		int ret = cache_fsync(all[i], true);

		if (ret && !err)
			err = ret;
		cfile_put(all[i]);
	}
	free(all);
	if (!c->wb_started)
		wb_list_drain(c);
	return err;
}
