/* cfile: the cache's object for one backing file; see cache.h. */
#include "cache_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <search.h>
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

int cfile_reopen(struct cfile *f, int flags)
{
	char p[64];
	int fd;

	if (f->cache->cfg.noatime)
		flags |= O_NOATIME;
	snprintf(p, sizeof(p), "/proc/self/fd/%d", f->path_fd);
	fd = open(p, flags | O_CLOEXEC);
	if (fd < 0 && errno == EPERM && (flags & O_NOATIME))
		fd = open(p, (flags & ~O_NOATIME) | O_CLOEXEC); /* not ours */
	return fd < 0 ? -errno : fd;
}

/* The best descriptor we can have: read-write and O_DIRECT if allowed.
 * *rw_err: why read-write was refused, when it was (0 otherwise). */
static int open_io_fd(struct cfile *f, bool readonly, int *rw_err)
{
	int modes[2] = { O_RDWR, O_RDONLY };

	*rw_err = 0;
	for (int m = readonly ? 1 : 0; m < 2; m++) {
		int fd = cfile_reopen(f, modes[m] | O_DIRECT);

		if (fd == -EINVAL) {
			/* The backing fs refuses O_DIRECT: buffered it is. */
			fd = cfile_reopen(f, modes[m]);
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
		if (m == 0)
			*rw_err = fd;
	}
	return -EACCES;
}

/* The cache's files by backing inode, for cfile_open() to find the one
 * object of a file again (tsearch tree; files_lock). */
static int by_key(const void *a, const void *b)
{
	const struct cfile *x = a, *y = b;

	if (x->key_dev != y->key_dev)
		return x->key_dev < y->key_dev ? -1 : 1;
	if (x->key_ino != y->key_ino)
		return x->key_ino < y->key_ino ? -1 : 1;
	return 0;
}

static struct cfile *find_locked(struct cache *c, dev_t dev, ino_t ino)
{
	struct cfile key = { .key_dev = dev, .key_ino = ino };
	struct cfile **hit = tfind(&key, &c->by_key, by_key);

	return hit ? *hit : NULL;
}

/* Link a new file; files_lock held. Should the tree have no room, the
 * file is only not found again after a forget. */
static void files_link_locked(struct cache *c, struct cfile *f)
{
	f->all_next = c->files_head.all_next;
	f->all_prev = &c->files_head;
	c->files_head.all_next->all_prev = f;
	c->files_head.all_next = f;
	c->nr_files++;
	f->keyed = tsearch(f, &c->by_key, by_key) != NULL;
}

static void files_unlink_locked(struct cache *c, struct cfile *f)
{
	f->all_prev->all_next = f->all_next;
	f->all_next->all_prev = f->all_prev;
	c->nr_files--;
	if (f->keyed)
		tdelete(f, &c->by_key, by_key);
	f->keyed = false;
}

static void lru_add_locked(struct cache *c, struct cfile *f)
{
	f->lru_prev = c->lru_head.lru_prev;
	f->lru_next = &c->lru_head;
	c->lru_head.lru_prev->lru_next = f;
	c->lru_head.lru_prev = f;
	c->nr_detached++;
	if (f->path_fd >= 0)
		c->nr_detached_fds++;
}

static void lru_del_locked(struct cache *c, struct cfile *f)
{
	f->lru_prev->lru_next = f->lru_next;
	f->lru_next->lru_prev = f->lru_prev;
	f->lru_next = f->lru_prev = NULL;
	c->nr_detached--;
	if (f->path_fd >= 0)
		c->nr_detached_fds--;
}

/* Descriptors of a file nobody has open, kept so that its pages can
 * vouch for their blocks (reflink.c) and it re-attaches without opening
 * anything. Those who read them of a detached file hold map_lock, so
 * they are cleared under it. files_lock held. */
static void close_fds_locked(struct cache *c, struct cfile *f)
{
	int fds[4] = { f->fd, f->wfd, f->path_fd, f->old_fd };

	pthread_mutex_lock(&c->map_lock);
	f->fd = f->wfd = f->path_fd = f->old_fd = -1;
	pthread_mutex_unlock(&c->map_lock);
	for (int i = 0; i < 4; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	c->nr_detached_fds--;
}

/* Open (again) the descriptors of f from path_fd. */
static int attach_fds(struct cfile *f, int path_fd)
{
	int ret, rw_err;

	f->path_fd = fcntl(path_fd, F_DUPFD_CLOEXEC, 3);
	if (f->path_fd < 0)
		return -errno;
	ret = open_io_fd(f, f->cache->cfg.readonly, &rw_err);
	if (ret) {
		close(f->path_fd);
		f->path_fd = -1;
	}
	return ret;
}

int cfile_make_writable(struct cfile *f)
{
	struct cache *c = f->cache;
	int old_fd, ret, rw_err;
	bool direct;

	pthread_rwlock_wrlock(&f->inval_lock);
	if (f->fd_writable) {
		pthread_rwlock_unlock(&f->inval_lock);
		return 0;
	}
	old_fd = f->fd;
	direct = f->fd_direct;
	/* dedup reads a mapper's descriptor under map_lock (reflink.c) */
	pthread_mutex_lock(&c->map_lock);
	ret = open_io_fd(f, c->cfg.readonly, &rw_err);
	if (!ret && !f->fd_writable) {
		close(f->fd);
		/* EPERM for an immutable or append-only file, as locally */
		ret = rw_err ? rw_err : -EACCES;
	}
	if (ret) {
		f->fd = old_fd;
		f->fd_direct = direct;
		f->fd_writable = false;
	} else {
		/* A file becomes writable once: this is the only old fd. */
		f->old_fd = old_fd;
	}
	pthread_mutex_unlock(&c->map_lock);
	pthread_rwlock_unlock(&f->inval_lock);
	return ret;
}

static int cfile_new(struct cache *c, int path_fd, struct cfile **out)
{
	struct cfile *f;
	int ret;

	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->cache = c;
	atomic_init(&f->refs, 1);
	f->fd = f->wfd = f->old_fd = -1;
	ret = attach_fds(f, path_fd);
	if (ret)
		goto out_free;
	ret = cfile_stat_ident(f, &f->ident);
	if (ret)
		goto out_close;
	f->key_dev = f->ident.dev;
	f->key_ino = f->ident.ino;
	/* Generations are unique across files: a new object of the same
	 * file never repeats an old one's. */
	atomic_init(&f->generation, atomic_fetch_add(&c->generations, 1) + 1);
	pthread_mutex_lock(&c->map_lock);
	f->map_number = frame_file_number(&c->ft, f);
	pthread_mutex_unlock(&c->map_lock);
	if (!f->map_number) {
		ret = -ENFILE; /* MAP_FILES_MAX files cached at once */
		goto out_close;
	}
	pthread_rwlock_init(&f->inval_lock, NULL);
	pthread_rwlock_init(&f->pidx_lock, NULL);
	range_lock_init(&f->write_range);
	pthread_mutex_init(&f->wb_mutex, NULL);
	pthread_mutex_init(&f->ra_lock, NULL);
	pidx_init(&f->pidx);
	f->size = f->backing_size = f->ident.size;
	*out = f;
	return 0;

out_close:
	close(f->fd);
	close(f->path_fd);
out_free:
	free(f);
	return ret;
}

static void cfile_free(struct cfile *f)
{
	pthread_mutex_lock(&f->cache->map_lock);
	frame_file_release(&f->cache->ft, f->map_number);
	pthread_mutex_unlock(&f->cache->map_lock);
	pidx_destroy(&f->pidx);
	pthread_rwlock_destroy(&f->inval_lock);
	pthread_rwlock_destroy(&f->pidx_lock);
	range_lock_destroy(&f->write_range);
	pthread_mutex_destroy(&f->wb_mutex);
	pthread_mutex_destroy(&f->ra_lock);
	if (f->wfd >= 0)
		close(f->wfd);
	if (f->fd >= 0)
		close(f->fd);
	if (f->old_fd >= 0)
		close(f->old_fd);
	if (f->path_fd >= 0)
		close(f->path_fd);
	free(f->extents);
	free(f->persist);
	free(f);
}

/* A file the cache kept after its last reference (cfile_put) comes back,
 * under files_lock so that nobody finds it half attached. Descriptors
 * closed meanwhile are opened from the caller's path_fd. */
static int reattach_locked(struct cache *c, struct cfile *f, int path_fd)
{
	int ret = 0;

	lru_del_locked(c, f);
	if (f->path_fd < 0)
		ret = attach_fds(f, path_fd);
	if (ret) {
		/* Cannot open it now: it stays kept, and the caller fails
		 * as a first open would. */
		lru_add_locked(c, f);
		return ret;
	}
	f->state = CF_ATTACHED;
	atomic_store(&f->refs, 1);
	c->reattaches++;
	return 0;
}

int cfile_open(struct cache *c, int path_fd, bool want_write,
	       struct cfile **out)
{
	struct cfile *f, *made = NULL;
	struct stat st;
	bool back = false;
	int ret = 0;

	if (fstat(path_fd, &st) < 0)
		return -errno;
	pthread_mutex_lock(&c->files_lock);
	for (;;) {
		f = find_locked(c, st.st_dev, st.st_ino);
		if (f && f->state == CF_PUTTING) {
			/* Its last reference is being dropped: see what
			 * stays of it. */
			pthread_cond_wait(&c->detach_done, &c->files_lock);
			continue;
		}
		if (f && f->state == CF_ATTACHED) {
			atomic_fetch_add(&f->refs, 1);
			break;
		}
		if (f) {
			ret = reattach_locked(c, f, path_fd);
			back = true;
			break;
		}
		if (made) {
			f = made;
			made = NULL;
			files_link_locked(c, f);
			break;
		}
		/* Descriptors are opened outside the lock; then look
		 * again: another open may have made the file meanwhile. */
		pthread_mutex_unlock(&c->files_lock);
		ret = cfile_new(c, path_fd, &made);
		if (ret)
			return ret;
		pthread_mutex_lock(&c->files_lock);
	}
	pthread_mutex_unlock(&c->files_lock);
	if (made)
		cfile_free(made);
	if (ret)
		return ret;
	/* Back after a forget: the file may have changed meanwhile. */
	if (back)
		ret = cfile_revalidate(f);
	if (!ret && want_write && !f->fd_writable)
		ret = cfile_make_writable(f);
	if (ret) {
		cfile_put(f);
		return ret;
	}
	*out = f;
	return 0;
}

void cfile_get(struct cfile *f)
{
	atomic_fetch_add(&f->refs, 1);
}

/* Remove (f, index) -> fid for all pages in [first, end). */
void cfile_drop_pages_locked(struct cfile *f, uint64_t first, uint64_t end,
			     bool inval)
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
		if (inval)
			atomic_fetch_add(&c->st.invalidations, n);
		first = idx[n - 1] + 1;
	}
	pthread_rwlock_unlock(&f->pidx_lock);
}

/* Keep the pages of a file nobody has open (see cache.h), within the
 * descriptor budget; files_lock held. */
static void keep_locked(struct cache *c, struct cfile *f)
{
	f->state = CF_DETACHED;
	f->owner = NULL;
	lru_add_locked(c, f);
	/* The oldest kept files give their descriptors back first. */
	for (struct cfile *g = c->lru_head.lru_next;
	     c->nr_detached_fds > c->cfg.detached_fds_max && g != &c->lru_head;
	     g = g->lru_next)
		if (g->path_fd >= 0)
			close_fds_locked(c, g);
}

/*
 * The last reference: write back, then keep the file and its clean pages
 * (found again by cfile_open until eviction takes the last page, see
 * cache_reap_kept), or drop and free it when it was unlinked, could not
 * be written back, holds no page worth keeping, or the cache is going.
 */
void cfile_put(struct cfile *f)
{
	struct cache *c = f->cache;
	int refs = atomic_load(&f->refs);
	bool keep = false;
	int err;

	/* Only the last put takes files_lock, so that cfile_open never
	 * finds a file whose count dropped to zero still attached. */
	while (refs > 1)
		if (atomic_compare_exchange_weak(&f->refs, &refs, refs - 1))
			return;
	pthread_mutex_lock(&c->files_lock);
	if (atomic_fetch_sub(&f->refs, 1) != 1) {
		pthread_mutex_unlock(&c->files_lock);
		return;
	}
	f->state = CF_PUTTING;
	pthread_mutex_unlock(&c->files_lock);

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
		keep = !err && !atomic_load(&c->closing);
	}
	if (keep) {
		/* eviction may take pages meanwhile, under the index lock */
		pthread_rwlock_rdlock(&f->pidx_lock);
		keep = f->pidx.nr > f->pidx.nr_counted;
		pthread_rwlock_unlock(&f->pidx_lock);
	}
	if (keep) {
		if (f->wfd >= 0)
			close(f->wfd);
		f->wfd = -1;
	} else {
		keep = false;
		cfile_drop_pages_locked(f, 0, UINT64_MAX, false);
	}
	pthread_rwlock_unlock(&f->inval_lock);

	pthread_mutex_lock(&c->files_lock);
	if (keep)
		keep_locked(c, f);
	else
		files_unlink_locked(c, f);
	pthread_cond_broadcast(&c->detach_done);
	pthread_mutex_unlock(&c->files_lock);
	if (!keep)
		cfile_free(f);
}

/* A kept file whose pages were all evicted (only zero-frame mappings,
 * which cost no memory, may remain) is freed; files_lock held. Returns
 * whether it was. */
static bool reap_one_locked(struct cache *c, struct cfile *f)
{
	bool empty, zeros;

	if (pthread_rwlock_trywrlock(&f->pidx_lock))
		return false;
	empty = f->pidx.nr == f->pidx.nr_counted;
	zeros = f->pidx.nr != 0;
	pthread_rwlock_unlock(&f->pidx_lock);
	if (!empty)
		return false;
	if (zeros)
		cfile_drop_pages_locked(f, 0, UINT64_MAX, false);
	lru_del_locked(c, f);
	files_unlink_locked(c, f);
	return true;
}

void cache_reap_kept(struct cache *c, bool all)
{
	struct cfile *dead[64];
	unsigned n = 0;

	pthread_mutex_lock(&c->files_lock);
	for (struct cfile *f = c->lru_head.lru_next, *next;
	     f != &c->lru_head && n < 64; f = next) {
		next = f->lru_next;
		if (all) {
			cfile_drop_pages_locked(f, 0, UINT64_MAX, false);
			lru_del_locked(c, f);
			files_unlink_locked(c, f);
			dead[n++] = f;
		} else if (reap_one_locked(c, f)) {
			dead[n++] = f;
		}
	}
	pthread_mutex_unlock(&c->files_lock);
	for (unsigned i = 0; i < n; i++)
		cfile_free(dead[i]);
	if (all && n == 64)
		cache_reap_kept(c, true);
}

int cfile_revalidate(struct cfile *f)
{
	struct cfile_ident now;
	bool same, dirty;
	int ret;

	pthread_rwlock_wrlock(&f->inval_lock);
	ret = cfile_stat_ident(f, &now);
	if (ret)
		goto out;
	pthread_rwlock_rdlock(&f->pidx_lock);
	same = cfile_ident_equal(&now, &f->ident);
	pthread_rwlock_unlock(&f->pidx_lock);
	if (same)
		goto out;
	atomic_store(&f->generation,
		     atomic_fetch_add(&f->cache->generations, 1) + 1);
	atomic_store(&f->sharing_found, 0); /* other content now */
	/* Our unwritten data wins; it is written over the change. */
	dirty = cfile_has_dirty(f);
	if (!dirty)
		cfile_drop_pages_locked(f, 0, UINT64_MAX, true);
	pthread_rwlock_wrlock(&f->pidx_lock);
	if (!dirty)
		f->size = f->backing_size = now.size;
	f->ident = now;
	pthread_rwlock_unlock(&f->pidx_lock);
out:
	pthread_rwlock_unlock(&f->inval_lock);
	return ret;
}

int cfile_set_kernel_mode(struct cfile *f, bool on)
{
	int ret;

	/* Evidence of sharing is kept while the file leaves kernel mode,
	 * so that auto does not bring it straight back. */
	if (!on) {
		atomic_store(&f->kernel_mode, false);
		return 0;
	}
	pthread_rwlock_rdlock(&f->inval_lock);
	ret = cfile_writeback_locked(f);
	pthread_rwlock_unlock(&f->inval_lock);
	if (ret)
		return ret;
	atomic_store(&f->sharing_found, 0);
	atomic_store(&f->kernel_mode, true);
	cache_drop_private(f, 0, UINT64_MAX);
	return 0;
}

bool cfile_kernel_mode(struct cfile *f)
{
	return atomic_load(&f->kernel_mode);
}

uint64_t cfile_sharing_found(struct cfile *f)
{
	return atomic_load(&f->sharing_found);
}

uint64_t cfile_generation(struct cfile *f)
{
	return atomic_load(&f->generation);
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
		cfile_drop_pages_locked(f, 0, UINT64_MAX, false);
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
				for (uint32_t k = 0; cb && k < r->n; k++) {
					struct mapper o =
						frame_mapper(&c->ft, r->m[k]);

					if (o.file != f)
						cb(arg, o.file, 1);
				}
			}
		}
		pthread_mutex_unlock(&c->map_lock);
		start = idx[n - 1] + 1;
	}
	pthread_rwlock_unlock(&f->pidx_lock);
	return 0;
}
