/*
 * readahead: sequential readers find their next pages already filled.
 *
 * After each read (cache_readahead), a file read where its last read ended
 * counts as streaming: a window of pages past what was read is queued for
 * the readahead thread, which fills them as any miss (several backing
 * requests in flight at once), hashes and merges them off the readers'
 * path. The window starts at RA_MIN pages and doubles while the stream
 * goes on, up to RA_MAX or a sixteenth of the budget; the next window is
 * queued when the reader is half way into the last one, as the kernel's
 * readahead does. A read elsewhere ends the stream.
 *
 * Readahead takes frames only if it can without waiting, and marks them
 * unreferenced: a page nobody reads is the first the clock takes. A reader
 * that finds a page still being filled waits for it; one whose readahead
 * failed fills it itself (rw.c).
 *
 * Locking: the per-file fields under cfile->ra_lock; the queue under
 * ra->lock. The thread holds a reference on each queued file and the
 * file's inval_lock (shared) while it fills, like any fill.
 */
#include "cache_i.h"

#include <errno.h>
#include <stdlib.h>

#define RA_MIN 32u          /* pages: 128 KiB */
#define RA_MAX 1024u        /* pages: 4 MiB */
#define RA_THREADS 2u       /* two windows filled at once */
#define RA_QUEUE 64u
#define RA_CHUNK 128u       /* pages per fill (fill_pages' most) */

struct ra_item {
	struct cfile *f;
	uint64_t first;
	uint32_t n;
};

struct readahead {
	struct cache *c;
	pthread_t thread[RA_THREADS];
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct ra_item q[RA_QUEUE];
	unsigned head, len;
	unsigned nthreads;
	bool stop;
};

static bool ra_push(struct readahead *ra, struct cfile *f, uint64_t first,
		    uint32_t n)
{
	bool ok = false;

	pthread_mutex_lock(&ra->lock);
	if (!ra->stop && ra->len < RA_QUEUE) {
		cfile_get(f);
		ra->q[(ra->head + ra->len++) % RA_QUEUE] =
			(struct ra_item){ f, first, n };
		pthread_cond_signal(&ra->cond);
		ok = true;
	}
	pthread_mutex_unlock(&ra->lock);
	return ok;
}

void cache_readahead(struct cfile *f, uint64_t first, uint64_t last)
{
	struct cache *c = f->cache;
	uint64_t expect, size_pages, from = 0;
	uint32_t win, cap;

	if (!c->ra)
		return;
	expect = atomic_exchange(&f->ra_next, last + 1);
	/* A read that follows no stream and ends none costs no lock: the
	 * random reader's path stays lean. */
	if (first != expect && !atomic_load(&f->ra_win))
		return;
	pthread_mutex_lock(&f->ra_lock);
	win = atomic_load(&f->ra_win);
	if (first != expect) {
		/* Not where the last read ended: the stream is over. */
		atomic_store(&f->ra_win, 0);
		pthread_mutex_unlock(&f->ra_lock);
		return;
	}
	if (!win || f->ra_end < last + 1)
		f->ra_end = last + 1; /* a stream starts (again) here */
	cap = __atomic_load_n(&c->ft.limit, __ATOMIC_RELAXED) / 16;
	if (!win)
		win = RA_MIN;
	if (win > cap)
		win = cap;
	size_pages = (cfile_size(f) + CACHE_PAGE_SIZE - 1) >> CACHE_PAGE_SHIFT;
	if (win && f->ra_end - (last + 1) < win / 2 + 1 &&
	    f->ra_end < size_pages) {
		from = f->ra_end;
		if (from + win > size_pages)
			win = (uint32_t)(size_pages - from);
		f->ra_end = from + win;
		atomic_store(&f->ra_win, win * 2 > RA_MAX ? RA_MAX : win * 2);
	} else {
		win = 0;
	}
	pthread_mutex_unlock(&f->ra_lock);
	if (win && !ra_push(c->ra, f, from, win)) {
		pthread_mutex_lock(&f->ra_lock);
		f->ra_end = from; /* not queued: ask again next read */
		pthread_mutex_unlock(&f->ra_lock);
	}
}

/* Fill the missing pages of [first, first + n) of f, as far as frames can
 * be had without waiting. */
static void ra_fill(struct cfile *f, uint64_t first, uint64_t n)
{
	struct cache *c = f->cache;
	uint64_t idx[RA_CHUNK];
	uint32_t out[RA_CHUNK];

	pthread_rwlock_rdlock(&f->inval_lock);
	for (uint64_t at = first; at < first + n; at += RA_CHUNK) {
		uint64_t end = first + n - at < RA_CHUNK ? first + n
							    : at + RA_CHUNK;
		unsigned m = 0;
		int got;

		pthread_rwlock_rdlock(&f->pidx_lock);
		for (uint64_t i = at; i < end; i++)
			if ((i << CACHE_PAGE_SHIFT) < f->size &&
			    !pidx_lookup(&f->pidx, i))
				idx[m++] = i;
		pthread_rwlock_unlock(&f->pidx_lock);
		if (!m)
			continue;
		got = fill_pages(f, idx, out, m, FILL_AHEAD);
		if (got < 0)
			break;
		for (int i = 0; i < got; i++)
			cache_frame_unpin(c, out[i]);
		if ((unsigned)got < m)
			break; /* out of frames: the reader takes it from here */
	}
	pthread_rwlock_unlock(&f->inval_lock);
}

static void *ra_main(void *arg)
{
	struct readahead *ra = arg;

	pthread_setname_np(pthread_self(), "sp-readahead");
	pthread_mutex_lock(&ra->lock);
	for (;;) {
		struct ra_item it;
		bool stop;

		while (!ra->stop && !ra->len)
			pthread_cond_wait(&ra->cond, &ra->lock);
		if (!ra->len)
			break;
		it = ra->q[ra->head];
		ra->head = (ra->head + 1) % RA_QUEUE;
		ra->len--;
		stop = ra->stop; /* under the lock, as cache_ra_stop sets it */
		pthread_mutex_unlock(&ra->lock);
		if (!stop)
			ra_fill(it.f, it.first, it.n);
		cfile_put(it.f);
		pthread_mutex_lock(&ra->lock);
	}
	pthread_mutex_unlock(&ra->lock);
	return NULL;
}

int cache_ra_start(struct cache *c)
{
	struct readahead *ra = calloc(1, sizeof(*ra));
	int ret;

	if (!ra)
		return -ENOMEM;
	ra->c = c;
	pthread_mutex_init(&ra->lock, NULL);
	pthread_cond_init(&ra->cond, NULL);
	c->ra = ra;
	for (unsigned i = 0; i < RA_THREADS; i++) {
		ret = -pthread_create(&ra->thread[i], NULL, ra_main, ra);
		if (ret) {
			ra->nthreads = i;
			cache_ra_stop(c);
			return ret;
		}
	}
	ra->nthreads = RA_THREADS;
	return 0;
}

void cache_ra_stop(struct cache *c)
{
	struct readahead *ra = c->ra;

	if (!ra)
		return;
	pthread_mutex_lock(&ra->lock);
	ra->stop = true; /* what is queued is dropped, files put */
	pthread_cond_broadcast(&ra->cond);
	pthread_mutex_unlock(&ra->lock);
	for (unsigned i = 0; i < ra->nthreads; i++)
		pthread_join(ra->thread[i], NULL);
	c->ra = NULL;
	pthread_mutex_destroy(&ra->lock);
	pthread_cond_destroy(&ra->cond);
	free(ra);
}
