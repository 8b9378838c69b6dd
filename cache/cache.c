/* cache: creation, frames under budget, eviction, stats; see cache.h. */
#include "cache_i.h"
#include "bio.h"
#include "pause.h"
#include "pressure.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint32_t pages_of(uint64_t bytes)
{
	uint64_t p = bytes >> CACHE_PAGE_SHIFT;

	return p > UINT32_MAX - 16 ? UINT32_MAX - 16 : (uint32_t)p;
}

int cache_create(const struct cache_config *cfg, struct cache **out)
{
	struct cache *c;
	uint32_t limit, capacity;
	long phys = sysconf(_SC_PHYS_PAGES);
	int ret;

	if (cfg->size_bytes < 16 * CACHE_PAGE_SIZE)
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->cfg = *cfg;
	/* + 1: the zero frame, which is never touched (the kernel's zero
	 * page backs it) and so costs no memory */
	limit = pages_of(cfg->size_bytes) + 1;
	/* Reserve room to raise the budget at run time up to RAM size. */
	capacity = phys > 0 ? pages_of((uint64_t)phys << CACHE_PAGE_SHIFT) : 0;
	if (capacity < limit)
		capacity = limit;
	ret = frame_table_init(&c->ft, limit, capacity);
	if (ret)
		goto out_free;
	pthread_mutex_init(&c->map_lock, NULL);
	pthread_cond_init(&c->frames_freed, NULL);
	pthread_mutex_init(&c->wb_lock, NULL);
	pthread_cond_init(&c->wb_cond, NULL);
	pthread_mutex_init(&c->files_lock, NULL);
	c->wb_head.wb_next = c->wb_head.wb_prev = &c->wb_head;
	c->files_head.all_next = c->files_head.all_prev = &c->files_head;
	c->lru_head.lru_next = c->lru_head.lru_prev = &c->lru_head;
	pthread_cond_init(&c->detach_done, NULL);
	if (!c->cfg.detached_fds_max)
		c->cfg.detached_fds_max = 256;
	ret = cache_wb_start(c);
	if (ret)
		goto out_fini;
	ret = cache_ra_start(c);
	if (ret) {
		cache_wb_stop(c);
		goto out_fini;
	}
	if (cfg->watch_pressure && pressure_start(c) == -ENOENT)
		fprintf(stderr, "samepagefs: no memory pressure notification "
			"here (PSI or a memory cgroup): the cache keeps its "
			"budget under pressure\n");
	*out = c;
	return 0;

out_fini:
	frame_table_fini(&c->ft);
out_free:
	free(c);
	return ret;
}

int cache_destroy(struct cache *c)
{
	int ret;

	if (!c)
		return 0;
	atomic_store(&c->closing, true);
	cache_ra_stop(c);
	pressure_stop(c);
	cache_wb_stop(c);
	ret = cache_sync_all(c);
	cache_reap_kept(c, true);
	/* Files the front end never released: drop their pages now. */
	pthread_mutex_lock(&c->files_lock);
	while (c->files_head.all_next != &c->files_head) {
		struct cfile *f = c->files_head.all_next;

		pthread_mutex_unlock(&c->files_lock);
		atomic_store(&f->refs, 1);
		atomic_store(&f->orphan, true); /* written back above */
		cfile_put(f);
		pthread_mutex_lock(&c->files_lock);
	}
	pthread_mutex_unlock(&c->files_lock);
	frame_table_fini(&c->ft);
	pthread_mutex_destroy(&c->map_lock);
	pthread_cond_destroy(&c->frames_freed);
	pthread_mutex_destroy(&c->wb_lock);
	pthread_cond_destroy(&c->wb_cond);
	pthread_mutex_destroy(&c->files_lock);
	pthread_cond_destroy(&c->detach_done);
	free(c);
	return ret;
}

void cache_set_share_ops(struct cache *c, const struct cache_share_ops *ops)
{
	c->share = *ops;
}

static void share_forget(struct cache *c, uint32_t fid, struct frame *fr)
{
	if ((frame_flags(fr) & (F_STABLE | F_UNSTABLE | F_PHYS)) &&
	    c->share.forget)
		c->share.forget(c->share.ctx, fid);
	frame_tree_flags(&c->ft, fr, F_STABLE | F_UNSTABLE | F_PHYS | F_HASHED |
				     F_PERSISTED | F_DIGEST, 0);
}

static void free_frame_locked(struct cache *c, uint32_t fid)
{
	struct frame *fr = cache_frame(c, fid);

	share_forget(c, fid, fr);
	frame_free_locked(&c->ft, fid);
	c->frees++;
	pthread_cond_broadcast(&c->frames_freed);
}

void cache_frame_unpin(struct cache *c, uint32_t fid)
{
	struct frame *fr = cache_frame(c, fid);

	if (atomic_fetch_sub(&fr->pins, 1) != 1)
		return;
	if (!(atomic_load(&fr->flags) & F_ORPHAN))
		return;
	pthread_mutex_lock(&c->map_lock);
	if (atomic_load(&fr->pins) == 0 &&
	    (atomic_load(&fr->flags) & (F_ORPHAN | F_FREE)) == F_ORPHAN)
		free_frame_locked(c, fid);
	pthread_mutex_unlock(&c->map_lock);
}

void cache_unmap_page_locked(struct cache *c, struct cfile *f,
			     uint64_t index, uint32_t fid)
{
	struct frame *fr = cache_frame(c, fid);

	if (!frame_del_mapper(&c->ft, fid, f, index))
		return;
	share_forget(c, fid, fr);
	if (atomic_load(&fr->pins) == 0)
		free_frame_locked(c, fid);
}

void cache_unmap_page(struct cache *c, struct cfile *f, uint64_t index,
		      uint32_t fid)
{
	pthread_mutex_lock(&c->map_lock);
	cache_unmap_page_locked(c, f, index, fid);
	pthread_mutex_unlock(&c->map_lock);
}

/* The frame may go: nothing pins it, and it is clean and settled. The
 * pidx_lock of every mapper held (no new pin can appear), map_lock too. */
static bool frame_unused_locked(struct frame *fr)
{
	return !atomic_load(&fr->pins) &&
	       !(frame_flags(fr) & (F_DIRTY | F_IO | F_WB | F_FREE));
}

/* Take the n mappings m of frame fid away and free it; the same locks. */
static void drop_frame_locked(struct cache *c, uint32_t fid,
			      const struct mapper *m, unsigned n)
{
	struct frame *fr = cache_frame(c, fid);

	share_forget(c, fid, fr);
	for (unsigned i = 0; i < n; i++) {
		if (pidx_lookup(&m[i].file->pidx, m[i].index) == fid)
			pidx_erase(&m[i].file->pidx, m[i].index);
		frame_del_mapper(&c->ft, fid, m[i].file, m[i].index);
	}
	if (!(frame_flags(fr) & F_FREE))
		free_frame_locked(c, fid);
}

bool cache_drop_page_locked(struct cache *c, struct cfile *f, uint64_t index,
			    uint32_t fid)
{
	struct frame *fr = cache_frame(c, fid);
	struct mapper m;

	if (fid < FID_FIRST || fr->nmappers != 1 || !frame_unused_locked(fr))
		return false;
	m = frame_owner(&c->ft, fr);
	if (m.file != f || m.index != index)
		return false;
	drop_frame_locked(c, fid, &m, 1);
	return true;
}

#define EVICT_MAX_MAPPERS 64

/* Try to evict one frame; map_lock held. */
static bool evict_one(struct cache *c, uint32_t fid)
{
	struct frame *fr = cache_frame(c, fid);
	struct mapper m[EVICT_MAX_MAPPERS];
	struct cfile *locked[EVICT_MAX_MAPPERS];
	unsigned n, nlocked = 0;
	bool ok = false;

	if (fr->nmappers > EVICT_MAX_MAPPERS)
		return false;
	n = frame_mappers(&c->ft, fid, m, EVICT_MAX_MAPPERS);
	for (unsigned i = 0; i < n; i++) {
		bool dup = false;

		for (unsigned k = 0; k < nlocked; k++)
			dup |= locked[k] == m[i].file;
		if (dup)
			continue;
		if (pthread_rwlock_trywrlock(&m[i].file->pidx_lock))
			goto out_unlock;
		locked[nlocked++] = m[i].file;
	}
	if (!frame_unused_locked(fr))
		goto out_unlock;
	drop_frame_locked(c, fid, m, n);
	ok = true;
out_unlock:
	while (nlocked)
		pthread_rwlock_unlock(&locked[--nlocked]->pidx_lock);
	return ok;
}

/*
 * The clock, with one twist: a shared frame saves a refill per mapper, so
 * when its reference bit is cleared it earns a credit of up to three more
 * passes (one per mapper beyond the first). Unshared frames, those of
 * closed files among them, go first; the cost per eviction stays bounded
 * by the passes a credit allows.
 */
unsigned cache_evict_locked(struct cache *c, unsigned want)
{
	struct frame_table *t = &c->ft;
	unsigned done = 0;
	uint64_t budget = 5ull * t->high + 2;

	while (done < want && budget--) {
		uint32_t fid = t->clock_hand++;
		struct frame *fr;
		uint32_t fl;

		if (t->clock_hand >= t->high)
			t->clock_hand = FID_FIRST;
		if (fid < FID_FIRST || fid >= t->high)
			continue;
		fr = frame_of(t, fid);
		fl = frame_flags(fr);
		if (fl & (F_FREE | F_ZERO | F_IO | F_DIRTY | F_WB))
			continue;
		/* Unmapped frames are being set up by their allocator (or are
		 * orphans waiting for their last pin): not ours to take. */
		if (atomic_load(&fr->pins) || !fr->nmappers)
			continue;
		if (fl & F_REF) {
			uint32_t credit = fr->nmappers - 1;

			frame_clear(fr, F_REF | F_CREDIT);
			if (credit)
				frame_set(fr, (credit > 3 ? 3 : credit)
						      << F_CREDIT_SHIFT);
			continue;
		}
		if (fl & F_CREDIT) {
			frame_clear(fr, F_CREDIT);
			frame_set(fr, (((fl & F_CREDIT) >> F_CREDIT_SHIFT) - 1)
					      << F_CREDIT_SHIFT);
			continue;
		}
		if (evict_one(c, fid)) {
			done++;
			atomic_fetch_add(&c->st.evictions, 1);
		}
	}
	return done;
}

/* Wait at most this long without a single frame coming back. */
#define ALLOC_STALL_NS (10ll * 1000000000)

/* Nothing can be freed for ALLOC_STALL_NS: say why, once per stall. */
static void alloc_stalled(struct cache *c)
{
	int err = atomic_load(&c->wb_last_err);

	if (atomic_exchange(&c->alloc_stall_logged, true))
		return;
	fprintf(stderr, "samepagefs: no cache frame could be freed for %lld s: "
		"%llu of %u frames are dirty%s%s; failing requests that need "
		"a frame (%s)\n", ALLOC_STALL_NS / 1000000000,
		(unsigned long long)atomic_load(&c->nr_dirty), c->ft.limit - 1,
		err ? " and writeback fails: " : ", the rest in use",
		err ? strerror(-err) : "",
		strerror(-cache_alloc_errno(c)));
}

int cache_alloc_errno(struct cache *c)
{
	int err = atomic_load(&c->wb_last_err);

	return err ? err : -ENOMEM;
}

uint32_t cache_frame_alloc(struct cache *c, bool wait)
{
	int64_t deadline = 0;
	uint64_t seen = 0;
	uint32_t fid;

	pthread_mutex_lock(&c->map_lock);
	for (;;) {
		struct timespec ts;

		fid = frame_alloc_locked(&c->ft);
		if (fid)
			break;
		if (cache_evict_locked(c, 32))
			continue;
		if (!wait)
			break;
		/* Bounded: give up once no frame came back for a while. */
		if (!deadline || seen != c->frees) {
			seen = c->frees;
			deadline = cache_now_ns() + ALLOC_STALL_NS;
		} else if (cache_now_ns() > deadline) {
			alloc_stalled(c);
			break;
		}
		/* Everything is dirty, pinned or under I/O: let writeback
		 * clean some, and wait for frames to come back. */
		pthread_mutex_unlock(&c->map_lock);
		cache_wb_kick(c);
		pthread_mutex_lock(&c->map_lock);
		cache_deadline(&ts, 10);
		pthread_cond_timedwait(&c->frames_freed, &c->map_lock, &ts);
	}
	pthread_mutex_unlock(&c->map_lock);
	if (fid)
		atomic_store(&c->alloc_stall_logged, false);
	return fid;
}

void cache_frame_release(struct cache *c, uint32_t fid)
{
	if (!fid)
		return;
	pthread_mutex_lock(&c->map_lock);
	free_frame_locked(c, fid);
	pthread_mutex_unlock(&c->map_lock);
}

int cache_set_limit(struct cache *c, uint64_t bytes)
{
	uint32_t limit = pages_of(bytes) + 1; /* see cache_create */
	int ret = 0;

	if (bytes < 16 * CACHE_PAGE_SIZE)
		return -EINVAL;
	pthread_mutex_lock(&c->map_lock);
	if (limit > c->ft.capacity) {
		ret = -ENOSPC;
		goto out;
	}
	__atomic_store_n(&c->ft.limit, limit, __ATOMIC_RELAXED);
	if (c->ft.used > limit)
		cache_evict_locked(c, c->ft.used - limit);
	c->cfg.size_bytes = bytes;
out:
	pthread_mutex_unlock(&c->map_lock);
	return ret;
}

static unsigned hist_bucket(uint32_t mappers)
{
	unsigned b = 0;

	if (mappers <= 1)
		return 0;
	while ((1u << b) < mappers)
		b++;
	return b < CACHE_HIST_BUCKETS ? b : CACHE_HIST_BUCKETS - 1;
}

/* A walk over every frame ever used: the one part of the statistics whose
 * cost follows the cache's size (the gauges are kept as frames change). */
void cache_get_histogram(struct cache *c, struct cache_histogram *h)
{
	memset(h, 0, sizeof(*h));
	pthread_mutex_lock(&c->map_lock);
	for (uint32_t fid = FID_FIRST; fid < c->ft.high; fid++) {
		struct frame *fr = cache_frame(c, fid);
		unsigned b;

		if (frame_flags(fr) & F_FREE || !fr->nmappers)
			continue;
		b = hist_bucket(fr->nmappers);
		h->frames[b]++;
		h->mappings[b] += fr->nmappers;
	}
	pthread_mutex_unlock(&c->map_lock);
}

/* The daemon's anonymous memory as the kernel counts it: resident less
 * file-backed and shmem pages (/proc/self/statm), that is RssAnon, which
 * is also its Pss_Anon as it shares no anonymous memory with another
 * process; 0 if it cannot be read. Read from counters the kernel keeps,
 * in constant time (smaps_rollup walks the page tables: 45 ms with a
 * million frames resident). */
static uint64_t anon_bytes(void)
{
	unsigned long long size, resident, shared;
	FILE *f = fopen("/proc/self/statm", "re");
	int n;

	if (!f)
		return 0;
	n = fscanf(f, "%llu %llu %llu", &size, &resident, &shared);
	fclose(f);
	if (n != 3 || shared > resident)
		return 0;
	return (uint64_t)(resident - shared) * (uint64_t)sysconf(_SC_PAGESIZE);
}

/*
 * All the daemon's own memory beyond its frames, measured rather than
 * summed up from the structures we know of (page indexes, rmaps, dedup
 * tables and digests, extent maps, persist windows, inodes, store
 * bookkeeping, libfuse's buffers, thread stacks, heap slack: all of it):
 * its anonymous memory less the memory of its frames, in use or free.
 * Without /proc, what malloc holds and the frame table.
 */
static uint64_t meta_bytes(uint64_t frame_bytes, uint32_t high)
{
	uint64_t anon = anon_bytes();
	struct mallinfo2 mi;

	if (anon)
		return anon > frame_bytes ? anon - frame_bytes : 0;
	mi = mallinfo2();
	return mi.arena + mi.hblkhd + (uint64_t)high * sizeof(struct frame);
}

void cache_get_stats(struct cache *c, struct cache_stats *st)
{
	struct cstat_atomic *a = &c->st;
	uint32_t high;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&c->map_lock);
	st->cache_bytes = (uint64_t)(c->ft.used - 1) << CACHE_PAGE_SHIFT;
	st->cache_limit_bytes = c->cfg.size_bytes;
	high = c->ft.high;
	st->free_frame_bytes = (uint64_t)c->ft.free_touched << CACHE_PAGE_SHIFT;
	st->pages_shared = c->ft.nr_shared;
	st->pages_sharing = c->ft.nr_sharing;
	st->zero_maps = c->ft.nr_zero_maps;
	st->rmap_bytes = c->ft.rmap_bytes;
	st->pages_unshared = c->ft.nr_unshared;
	pthread_mutex_unlock(&c->map_lock);
	st->pages_volatile = atomic_load(&c->ft.nr_volatile);
	st->metadata_bytes = meta_bytes(st->cache_bytes +
					st->free_frame_bytes, high);
	st->frames_dirty = atomic_load(&c->nr_dirty);

	st->hits = atomic_load(&a->hits);
	st->misses = atomic_load(&a->misses);
	st->evictions = atomic_load(&a->evictions);
	st->backing_read_bytes = atomic_load(&a->backing_read_bytes);
	st->backing_write_bytes = atomic_load(&a->backing_write_bytes);
	st->backing_reads = atomic_load(&a->backing_reads);
	st->backing_writes = atomic_load(&a->backing_writes);
	st->writeback_errors = atomic_load(&a->writeback_errors);
	st->cow_breaks = atomic_load(&a->cow_breaks);
	st->invalidations = atomic_load(&a->invalidations);
	st->clone_shares = atomic_load(&a->clone_shares);
	st->pressure_shrinks = atomic_load(&a->pressure_shrinks);
	st->readahead_pages = atomic_load(&a->readahead_pages);
	st->direct_read_pages = atomic_load(&a->direct_read_pages);
	st->uring_fallbacks = bio_ring_fallbacks();
	st->pressure_bytes = atomic_load(&a->pressure_bytes);
	pthread_mutex_lock(&c->files_lock);
	st->files_cached = c->nr_files;
	st->files_kept = c->nr_detached;
	st->file_reattaches = c->reattaches;
	pthread_mutex_unlock(&c->files_lock);
}

int cache_failpoint_set(const char *key, const char *value)
{
	int ret = pause_set(key, value);

	return ret == -ENOENT ? bio_failpoint_set(key, value) : ret;
}
