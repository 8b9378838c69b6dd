/*
 * dedup: merge on fill, the stable tree, knobs and stats; see dedup.h.
 * The scanner (unstable tree) is in scan.c.
 */
#include "dedup_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG CACHE_PAGE_SIZE

void dedup_config_defaults(struct dedup_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->scope = DEDUP_SCOPE_GLOBAL;
	cfg->run = true;
	/* 1000 pages every 20 ms: about 200 MiB/s of candidates, a few
	 * percent of a core at most (hashing runs at GB/s). */
	cfg->pages_to_scan = 1000;
	cfg->sleep_millisecs = 20;
	cfg->max_page_sharing = 256;
	cfg->use_zero_pages = true;
	cfg->smart_scan = true;
	cfg->store_quota = 1ull << 30;
}

static uint64_t fp_key(void *arg, uint32_t fid)
{
	struct dedup *d = arg;

	return cache_frame(d->c, fid)->fp[0];
}

static uint64_t phys_key(void *arg, uint32_t fid)
{
	struct dedup *d = arg;

	return cache_frame(d->c, fid)->phys;
}

/* uid -> scope tag (1 .. 65534), assigned on first sight; an owner past
 * the last tag, or seen when the table could not grow, gets SCOPE_NOMERGE
 * and never shares. */
uint16_t dedup_scope_of(struct dedup *d, struct cfile *f)
{
	uint64_t key = (uint64_t)(uint32_t)f->ident.uid + 1; /* never 0 */
	uint16_t tag = SCOPE_NOMERGE;
	uint64_t *found;
	bool added;

	if (d->scope != DEDUP_SCOPE_UID)
		return 0;
	pthread_mutex_lock(&d->scope_lock);
	found = u64map_find(&d->scopes, key);
	if (!found && d->scope_next < SCOPE_NOMERGE) {
		found = u64map_put(&d->scopes, key, d->scope_next, &added);
		if (found && added)
			d->scope_next++;
	}
	if (found)
		tag = (uint16_t)*found;
	pthread_mutex_unlock(&d->scope_lock);
	return tag;
}

static void hash_fill(void *ctx, struct frame *fr, const void *data)
{
	struct dedup *d = ctx;
	struct fp h;

	if (d->scope == DEDUP_SCOPE_NONE)
		return;
	/* Always from the content read, never from the store: a frame's
	 * fingerprint must say what the frame holds. */
	fp_page(data, &h);
	persist_fill_digest(d, fr, data, &h);
	fr->fp[0] = h.lo;
	fr->fp[1] = h.hi;
	frame_set(fr, F_HASHED);
	atomic_fetch_add(&d->hashes_computed, 1);
}

int dedup_remap(struct dedup *d, struct cfile *f, uint64_t index,
		uint32_t fid, uint32_t target)
{
	struct cache *c = d->c;
	int ret;

	ret = frame_add_mapper(&c->ft, target, f, index);
	if (ret)
		return ret;
	pidx_store(&f->pidx, index, target); /* slot exists: no alloc */
	frame_set(cache_frame(c, target), F_REF);
	cache_unmap_page_locked(c, f, index, fid);
	persist_shared(d, f, index, target);
	return 0;
}

void dedup_make_stable(struct dedup *d, uint32_t fid, uint16_t scope,
		       bool chain)
{
	struct frame *fr = cache_frame(d->c, fid);

	if (frame_flags(fr) & F_UNSTABLE) {
		stree_remove(&d->unstable, fid);
		frame_tree_flags(&d->c->ft, fr, F_UNSTABLE, 0);
	}
	if (stree_insert(&d->stable, fid))
		return; /* no memory: it simply stays unmerged */
	fr->scope = scope;
	frame_clear_volatile(&d->c->ft, fr);
	frame_tree_flags(&d->c->ft, fr, 0,
			 chain ? F_STABLE | F_CHAIN : F_STABLE);
	if (chain)
		atomic_fetch_add(&d->stable_chains, 1);
	persist_stable(d, fid);
}

static bool same_page(struct cache *c, uint32_t a, uint32_t b)
{
	return !memcmp(cache_frame_data(c, a), cache_frame_data(c, b), PG);
}

uint32_t dedup_merge_stable(struct dedup *d, struct cfile *f, uint64_t index,
			    uint32_t fid, bool *full)
{
	struct cache *c = d->c;
	struct frame *fr = cache_frame(c, fid);
	uint16_t scope = dedup_scope_of(d, f);
	unsigned max = atomic_load(&d->max_page_sharing);
	uint32_t cand, pos = 0;

	*full = false;
	if (atomic_load(&d->use_zero_pages) && fr->fp[0] == fp_zero()->lo &&
	    fr->fp[1] == fp_zero()->hi &&
	    fp_page_is_zero(cache_frame_data(c, fid)))
		return dedup_remap(d, f, index, fid, FID_ZERO) ? 0 : FID_ZERO;
	while ((cand = stree_next(&d->stable, fr->fp[0], &pos))) {
		struct frame *cf = cache_frame(c, cand);

		if (cand == fid || cf->fp[1] != fr->fp[1] ||
		    !scope_match(cf->scope, scope))
			continue;
		if (!same_page(c, cand, fid))
			continue;
		if (cf->nmappers >= max) {
			*full = true;
			continue;
		}
		dedup_move_phys(d, fid, cand);
		persist_merged(d, fid, cand);
		if (dedup_remap(d, f, index, fid, cand))
			return 0;
		atomic_fetch_add(&d->content_merges, 1);
		return cand;
	}
	return 0;
}

static uint32_t merge_fill(void *ctx, struct cfile *f, uint64_t index,
			   uint32_t fid)
{
	struct dedup *d = ctx;
	uint32_t to;
	bool full;

	if (d->scope == DEDUP_SCOPE_NONE ||
	    !(frame_flags(cache_frame(d->c, fid)) & F_HASHED))
		return fid;
	to = dedup_merge_stable(d, f, index, fid, &full);
	if (to)
		return to;
	dedup_make_stable(d, fid, dedup_scope_of(d, f), full);
	return fid;
}

static uint32_t lookup_fill(void *ctx, struct cfile *f, uint64_t index)
{
	struct dedup *d = ctx;
	uint32_t hit = reflink_lookup(d, f, index);

	return hit ? hit : persist_lookup(d, f, index);
}

static void note_fill(void *ctx, struct cfile *f, uint64_t index,
		      uint32_t fid)
{
	struct dedup *d = ctx;

	reflink_note(d, f, index, fid);
	persist_note(d, f, index, fid);
}

static void file_changed(void *ctx, struct cfile *f, uint64_t first,
			 uint64_t n)
{
	reflink_changed(ctx, f);
	persist_changed(ctx, f, first, n);
}

static void file_gone(void *ctx, struct cfile *f)
{
	persist_gone(ctx, f);
}

static void forget(void *ctx, uint32_t fid)
{
	struct dedup *d = ctx;
	struct frame *fr = cache_frame(d->c, fid);
	uint32_t fl = frame_flags(fr);

	persist_forget(d, fid);
	if (fl & F_STABLE)
		stree_remove(&d->stable, fid);
	if (fl & F_CHAIN) {
		frame_clear(fr, F_CHAIN);
		atomic_fetch_sub(&d->stable_chains, 1);
	}
	if (fl & F_UNSTABLE)
		stree_remove(&d->unstable, fid);
	if (fl & F_PHYS)
		stree_remove(&d->phys, fid);
}

int dedup_create(struct cache *c, const struct dedup_config *cfg,
		 struct dedup **out)
{
	struct cache_share_ops ops = {
		.hash_fill = hash_fill,
		.merge_fill = merge_fill,
		.forget = forget,
		.lookup_fill = lookup_fill,
		.note_fill = note_fill,
		.file_changed = file_changed,
		.file_gone = file_gone,
		.probe = dedup_probe,
	};
	struct dedup *d;
	int ret;

	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->c = c;
	d->scope = cfg->scope;
	atomic_init(&d->run, cfg->run);
	atomic_init(&d->use_zero_pages, cfg->use_zero_pages);
	atomic_init(&d->smart_scan, cfg->smart_scan);
	atomic_init(&d->pages_to_scan, cfg->pages_to_scan);
	atomic_init(&d->sleep_millisecs, cfg->sleep_millisecs);
	atomic_init(&d->max_page_sharing,
		    cfg->max_page_sharing < 2 ? 2 : cfg->max_page_sharing);
	stree_init(&d->stable, fp_key, d);
	stree_init(&d->unstable, fp_key, d);
	stree_init(&d->phys, phys_key, d);
	pthread_mutex_init(&d->scan_lock, NULL);
	pthread_mutex_init(&d->scope_lock, NULL);
	pthread_mutex_init(&d->digest_lock, NULL);
	d->scope_next = 1;
	/* About 16 bytes of table per frame of the budget at most; with one
	 * page in 8 sampled, it remembers four budgets of reads. */
	d->ghost_max = c->ft.limit / 2 + 1024;
	pthread_cond_init(&d->scan_cond, NULL);
	pthread_cond_init(&d->scan_done, NULL);
	d->cursor = FID_FIRST;
	ret = persist_open(d, cfg);
	if (ret) {
		pthread_mutex_destroy(&d->digest_lock);
		pthread_mutex_destroy(&d->scan_lock);
		pthread_cond_destroy(&d->scan_cond);
		pthread_cond_destroy(&d->scan_done);
		free(d);
		return ret;
	}
	ops.ctx = d;
	cache_set_share_ops(c, &ops);
	ret = dedup_scan_start(d);
	if (ret) {
		dedup_destroy(d);
		return ret;
	}
	*out = d;
	return 0;
}

void dedup_destroy(struct dedup *d)
{
	struct cache_share_ops none = { 0 };

	if (!d)
		return;
	/* No fill of the readahead threads may run into the share ops
	 * while they go: readahead ends with dedup. */
	cache_ra_stop(d->c);
	dedup_scan_stop(d);
	/* Shared frames still waiting for a digest: recorded now, before
	 * the store closes, so that a quick unmount persists too. */
	dedup_flush(d);
	pthread_mutex_lock(&d->c->map_lock);
	cache_set_share_ops(d->c, &none);
	/* Frames stay resident; they simply leave the trees (and their
	 * digests go with persist_close). */
	for (uint32_t fid = FID_FIRST; fid < d->c->ft.high; fid++)
		frame_tree_flags(&d->c->ft, cache_frame(d->c, fid),
				 F_STABLE | F_UNSTABLE | F_PHYS | F_HASHED |
					 F_PERSISTED | F_DIGEST | F_CHAIN,
				 0);
	stree_fini(&d->stable);
	stree_fini(&d->unstable);
	stree_fini(&d->phys);
	u64map_fini(&d->ghost[0]);
	u64map_fini(&d->ghost[1]);
	pthread_mutex_unlock(&d->c->map_lock);
	persist_close(d);
	pthread_mutex_destroy(&d->scan_lock);
	pthread_mutex_destroy(&d->scope_lock);
	pthread_mutex_destroy(&d->digest_lock);
	pthread_cond_destroy(&d->scan_cond);
	pthread_cond_destroy(&d->scan_done);
	u64map_fini(&d->scopes);
	free(d);
}

void dedup_get_stats(struct dedup *d, struct dedup_stats *st)
{
	struct cache_stats cs;
	size_t table_bytes;

	memset(st, 0, sizeof(*st));
	cache_get_stats(d->c, &cs);
	pthread_mutex_lock(&d->c->map_lock);
	table_bytes = stree_bytes(&d->stable) + stree_bytes(&d->unstable) +
		      stree_bytes(&d->phys);
	pthread_mutex_unlock(&d->c->map_lock);
	table_bytes += persist_meta_bytes(d);
	st->pages_shared = cs.pages_shared;
	st->pages_sharing = cs.pages_sharing;
	st->pages_unshared = cs.pages_unshared;
	st->pages_volatile = cs.pages_volatile;
	st->zero_pages = cs.zero_maps;
	st->full_scans = atomic_load(&d->full_scans);
	st->content_merges = atomic_load(&d->content_merges);
	st->reflink_merges = atomic_load(&d->reflink_merges) + cs.clone_shares;
	st->hashes_computed = atomic_load(&d->hashes_computed);
	st->stable_chains = atomic_load(&d->stable_chains);
	st->metadata_bytes = table_bytes;
	persist_stats(d, st);
	/* Like KSM's general_profit: what sharing saves minus what it costs
	 * (the tables and the rmap lists; the frame table is there anyway). */
	st->general_profit = (int64_t)((cs.pages_sharing + cs.zero_maps) * PG) -
			     (int64_t)table_bytes - (int64_t)cs.rmap_bytes;
}

static int parse_uint(const char *v, unsigned lo, unsigned hi, unsigned *out)
{
	char *end;
	unsigned long x;

	if (!*v || *v == '-')
		return -EINVAL;
	errno = 0;
	x = strtoul(v, &end, 10);
	if (errno || *end || x < lo || x > hi)
		return -EINVAL;
	*out = (unsigned)x;
	return 0;
}

int dedup_set_knob(struct dedup *d, const char *key, const char *value)
{
	unsigned v;
	int ret;

	if (!strcmp(key, "run") || !strcmp(key, "use_zero_pages") ||
	    !strcmp(key, "smart_scan")) {
		ret = parse_uint(value, 0, 1, &v);
		if (ret)
			return ret;
		if (!strcmp(key, "run"))
			atomic_store(&d->run, v);
		else if (!strcmp(key, "use_zero_pages"))
			atomic_store(&d->use_zero_pages, v);
		else
			atomic_store(&d->smart_scan, v);
	} else if (!strcmp(key, "pages_to_scan")) {
		ret = parse_uint(value, 1, 1u << 24, &v);
		if (ret)
			return ret;
		atomic_store(&d->pages_to_scan, v);
	} else if (!strcmp(key, "sleep_millisecs")) {
		ret = parse_uint(value, 0, 3600000, &v);
		if (ret)
			return ret;
		atomic_store(&d->sleep_millisecs, v);
	} else if (!strcmp(key, "max_page_sharing")) {
		ret = parse_uint(value, 2, 1u << 20, &v);
		if (ret)
			return ret;
		atomic_store(&d->max_page_sharing, v);
	} else {
		return -EINVAL;
	}
	pthread_mutex_lock(&d->scan_lock);
	pthread_cond_broadcast(&d->scan_cond);
	pthread_mutex_unlock(&d->scan_lock);
	return 0;
}

int dedup_format_knobs(struct dedup *d, char *buf, size_t len)
{
	int n = snprintf(buf, len,
			 "run %u\npages_to_scan %u\nsleep_millisecs %u\n"
			 "max_page_sharing %u\nuse_zero_pages %u\n"
			 "smart_scan %u\n",
			 (unsigned)atomic_load(&d->run),
			 atomic_load(&d->pages_to_scan),
			 atomic_load(&d->sleep_millisecs),
			 atomic_load(&d->max_page_sharing),
			 (unsigned)atomic_load(&d->use_zero_pages),
			 (unsigned)atomic_load(&d->smart_scan));

	return n < 0 || (size_t)n >= len ? -ERANGE : n;
}
