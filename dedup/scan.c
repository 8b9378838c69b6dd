/*
 * scan: the scanner thread, like ksmd.
 *
 * Walks the frames in batches of pages_to_scan, sleeping sleep_millisecs
 * between batches. A frame written through the mount (one mapper, not in
 * the stable tree) is hashed at each visit; once its checksum is unchanged
 * since the previous visit and it is clean, it is a candidate: merged into
 * an identical stable frame, or with an identical candidate of the
 * unstable tree (both then become one stable frame), or else put into the
 * unstable tree.
 *
 * KSM empties its unstable tree after every pass because a page that
 * changed corrupts the order of its rbtree. Our table is keyed by the
 * checksum taken at insertion: a frame leaves it when it is written
 * (make_private) or found changed, and every match is confirmed with
 * memcmp, so entries may stay across passes. That matters with smart
 * scan: two identical candidates skipped in different passes still meet.
 *
 * Smart scan: a candidate that found no partner is skipped for 1, 2, 4 ...
 * (at most 16) further passes, as KSM does.
 *
 * The thread also takes the SHA-256 digests that persistence waits for
 * (persist_dtab.c: shared stable frames to be recorded), before each
 * batch.
 *
 * Locking: map_lock for a batch step, dropped every SCAN_HOLD_FRAMES
 * frames and while a page is hashed; a file's pidx_lock is only *tried*
 * under it (the normal order is pidx_lock before map_lock), and is held
 * across the hash.
 */
#include "dedup_i.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#define PG CACHE_PAGE_SIZE
#define SKIP_MAX 16

static void note_failure(struct dedup *d, struct frame *fr)
{
	if (!atomic_load(&d->smart_scan))
		return;
	if (fr->scan_fails < 5)
		fr->scan_fails++;
	fr->scan_skip = (uint8_t)(1u << (fr->scan_fails - 1));
	if (fr->scan_skip > SKIP_MAX)
		fr->scan_skip = SKIP_MAX;
}

/* Merge candidate fid at (f, index) with an unstable partner; both owners'
 * pidx locks are held by the caller (f's) or tried here. chain: an
 * identical stable frame is full (see dedup_make_stable). */
static bool merge_unstable(struct dedup *d, struct cfile *f, uint64_t index,
			   uint32_t fid, bool chain)
{
	struct cache *c = d->c;
	struct frame *fr = cache_frame(c, fid);
	uint16_t scope = dedup_scope_of(d, f);
	uint32_t cand, pos = 0;

	while ((cand = stree_next(&d->unstable, fr->fp[0], &pos))) {
		struct frame *cf = cache_frame(c, cand);
		uint32_t cfl = frame_flags(cf);
		struct cfile *g;
		bool ok;

		if (cand == fid || cf->fp[1] != fr->fp[1] || cf->nmappers != 1 ||
		    (cfl & (F_DIRTY | F_IO | F_WB | F_FREE | F_STABLE)))
			continue;
		g = frame_owner(&c->ft, cf).file;
		if (!scope_match(dedup_scope_of(d, g), scope))
			continue;
		/* The partner's content may be changed only by its owner:
		 * hold its index while we compare and promote it. */
		if (g != f && pthread_rwlock_trywrlock(&g->pidx_lock))
			continue;
		ok = !memcmp(cache_frame_data(c, cand),
			     cache_frame_data(c, fid), PG) &&
		     !(frame_flags(cf) & F_DIRTY);
		if (ok) {
			persist_unstable(d, cand);
			dedup_make_stable(d, cand, scope, chain);
			ok = (frame_flags(cf) & F_STABLE) &&
			     !dedup_remap(d, f, index, fid, cand);
		}
		if (g != f)
			pthread_rwlock_unlock(&g->pidx_lock);
		if (ok) {
			atomic_fetch_add(&d->content_merges, 1);
			return true;
		}
	}
	return false;
}

/*
 * Visit one frame; map_lock held on entry and on return, but dropped while
 * the page is hashed: the owner's index, held for writing, keeps the frame
 * mapped, unpinned and unwritten meanwhile (eviction, clone, writes and
 * reads all need it), so only what others may do without it (share the
 * frame by its extent) is checked again after.
 */
static void scan_one(struct dedup *d, uint32_t fid)
{
	struct cache *c = d->c;
	struct frame *fr = cache_frame(c, fid);
	uint32_t fl = frame_flags(fr);
	struct cfile *f;
	uint64_t index;
	struct fp h;
	bool full;

	if (fl & (F_FREE | F_ZERO | F_IO | F_DIRTY | F_WB | F_STABLE) ||
	    !(fl & F_UPTODATE) || fr->nmappers != 1)
		return;
	/* A page written since it last failed to merge is looked at
	 * again at once: its content is new. */
	if (fr->scan_skip && !(fl & F_VOLATILE) &&
	    atomic_load(&d->smart_scan)) {
		fr->scan_skip--;
		return;
	}
	f = frame_owner(&c->ft, fr).file;
	index = frame_owner(&c->ft, fr).index;
	if (pthread_rwlock_trywrlock(&f->pidx_lock))
		return;
	/* Re-check under the owner's lock: nothing can write it now. */
	fl = frame_flags(fr);
	if (fl & (F_DIRTY | F_IO | F_WB | F_STABLE) || fr->nmappers != 1 ||
	    pidx_lookup(&f->pidx, index) != fid)
		goto out_unlock;
	/* Outside the stable tree it may have been written in place: a
	 * digest it carries from its fill is not to be promoted with it. */
	persist_unstable(d, fid);
	pthread_mutex_unlock(&c->map_lock);
	fp_page(cache_frame_data(c, fid), &h);
	atomic_fetch_add(&d->hashes_computed, 1);
	pthread_mutex_lock(&c->map_lock);
	fl = frame_flags(fr);
	if (fl & (F_DIRTY | F_IO | F_WB | F_STABLE) || fr->nmappers != 1)
		goto out_unlock;
	if (!(fl & F_HASHED) || fr->fp[0] != h.lo || fr->fp[1] != h.hi) {
		/* Changed since the last visit (or first visit): volatile. */
		if (fl & F_UNSTABLE) {
			stree_remove(&d->unstable, fid);
			frame_tree_flags(&c->ft, fr, F_UNSTABLE, 0);
		}
		fr->fp[0] = h.lo;
		fr->fp[1] = h.hi;
		fr->scan_skip = fr->scan_fails = 0;
		frame_set(fr, F_HASHED);
		goto out_unlock;
	}
	if (d->scope == DEDUP_SCOPE_NONE)
		goto out_unlock;
	frame_clear_volatile(&c->ft, fr); /* unchanged for a pass: a candidate */
	if (dedup_merge_stable(d, f, index, fid, &full))
		goto out_unlock;
	/* With an identical stable frame full, the pair made stable is one
	 * more frame of that content. */
	if (merge_unstable(d, f, index, fid, full))
		goto out_unlock;
	if (!(fl & F_UNSTABLE) && !stree_insert(&d->unstable, fid))
		frame_tree_flags(&c->ft, fr, 0, F_UNSTABLE);
	note_failure(d, fr);
out_unlock:
	pthread_rwlock_unlock(&f->pidx_lock);
}

/* Frames visited per hold of map_lock: a batch of any size leaves the
 * lock to request threads this often. */
#define SCAN_HOLD_FRAMES 256

/* One batch; returns true when it completed a full scan. */
static bool scan_batch(struct dedup *d, unsigned pages)
{
	struct cache *c = d->c;
	bool wrapped = false;

	pthread_mutex_lock(&c->map_lock);
	for (unsigned i = 0; i < pages; i++) {
		if (d->cursor >= c->ft.high) {
			d->cursor = FID_FIRST;
			atomic_fetch_add(&d->full_scans, 1);
			wrapped = true;
			break;
		}
		if (i && i % SCAN_HOLD_FRAMES == 0) {
			pthread_mutex_unlock(&c->map_lock);
			sched_yield();
			pthread_mutex_lock(&c->map_lock);
		}
		scan_one(d, d->cursor++);
	}
	pthread_mutex_unlock(&c->map_lock);
	return wrapped;
}

/*
 * Each wake-up first gives the shared frames that wait for one their
 * digest (persist_dtab.c), as many as a batch scans pages: the work of
 * persistence, off the request path. With the scanner stopped (run 0) it
 * still wakes every DIGEST_IDLE_MS for that alone.
 */
#define DIGEST_IDLE_MS 100

static void *scan_main(void *arg)
{
	struct dedup *d = arg;
	struct timespec ts;

	pthread_setname_np(pthread_self(), "sp-scan");
	pthread_mutex_lock(&d->scan_lock);
	while (!d->stop) {
		bool forced = atomic_load(&d->full_scans) < d->forced_until;
		unsigned ms = atomic_load(&d->sleep_millisecs), pages;

		if (!forced) {
			if (!atomic_load(&d->run)) {
				cache_deadline(&ts, DIGEST_IDLE_MS);
				pthread_cond_timedwait(&d->scan_cond,
						       &d->scan_lock, &ts);
				if (d->stop)
					break;
				pthread_mutex_unlock(&d->scan_lock);
				persist_digest_work(d, atomic_load(
						    &d->pages_to_scan));
				pthread_mutex_lock(&d->scan_lock);
				continue;
			}
			if (ms) {
				cache_deadline(&ts, ms);
				pthread_cond_timedwait(&d->scan_cond,
						       &d->scan_lock, &ts);
				if (d->stop)
					break;
				forced = atomic_load(&d->full_scans) <
					 d->forced_until;
				if (!forced && !atomic_load(&d->run))
					continue;
			}
		}
		pages = forced ? 4096 : atomic_load(&d->pages_to_scan);
		pthread_mutex_unlock(&d->scan_lock);
		persist_digest_work(d, pages);
		scan_batch(d, pages);
		pthread_mutex_lock(&d->scan_lock);
		pthread_cond_broadcast(&d->scan_done);
	}
	pthread_mutex_unlock(&d->scan_lock);
	return NULL;
}

int dedup_scan_start(struct dedup *d)
{
	int ret = pthread_create(&d->thread, NULL, scan_main, d);

	if (ret)
		return -ret;
	d->thread_started = true;
	return 0;
}

void dedup_scan_stop(struct dedup *d)
{
	if (!d->thread_started)
		return;
	pthread_mutex_lock(&d->scan_lock);
	d->stop = true;
	pthread_cond_broadcast(&d->scan_cond);
	pthread_cond_broadcast(&d->scan_done);
	pthread_mutex_unlock(&d->scan_lock);
	pthread_join(d->thread, NULL);
	d->thread_started = false;
}

int dedup_scan_now(struct dedup *d, bool wait)
{
	uint64_t target;

	pthread_mutex_lock(&d->scan_lock);
	/* A full pass from the start: the wrap at its end counts it. The
	 * cursor is the thread's; restarting it means at most one pass is
	 * partly repeated. */
	target = atomic_load(&d->full_scans) + 2;
	if (target > d->forced_until)
		d->forced_until = target;
	pthread_cond_broadcast(&d->scan_cond);
	while (wait && !d->stop && atomic_load(&d->full_scans) < target)
		pthread_cond_wait(&d->scan_done, &d->scan_lock);
	pthread_mutex_unlock(&d->scan_lock);
	return d->stop ? -ESHUTDOWN : 0;
}
