/*
 * probe: what cache_mode=auto asks of dedup when it picks who caches a
 * file (fs/ops_file.c). Before a file is read: does anything known say it
 * shares (dedup_file_shares)? While a kernel-mode file's misses are
 * served: is a page it read held by other files too (dedup_probe)? And
 * for a file in shared mode: has it stopped sharing
 * (dedup_file_stopped_sharing)?
 *
 * Two places are asked: the stable tree (a resident frame with the same
 * bytes, confirmed by memcmp), and the ghost table, the fingerprints of
 * pages kernel-mode files read lately (one page in GHOST_SAMPLE, so that
 * a copy is still found and the table stays small; the older half goes
 * when it is full). A ghost match is not confirmed, the bytes are gone:
 * a collision only moves a file to shared mode, which serves the same
 * bytes. Nothing is ever mapped here.
 *
 * Locking: map_lock for both tables and for the file table; the file's
 * pidx_lock (read) for its owner.
 */
#include "persist_i.h"

#include <string.h>

#define PG CACHE_PAGE_SIZE
/* A page whose fingerprint has these low bits clear is remembered. */
#define GHOST_SAMPLE 8u

static bool resident_match(struct dedup *d, const struct fp *h,
			   uint16_t scope, const void *data)
{
	struct cache *c = d->c;
	uint32_t cand, pos = 0;

	while ((cand = stree_next(&d->stable, h->lo, &pos))) {
		struct frame *fr = cache_frame(c, cand);

		if (fr->fp[1] == h->hi && scope_match(fr->scope, scope) &&
		    !memcmp(cache_frame_data(c, cand), data, PG))
			return true;
	}
	return false;
}

/* The other file that read the page, if it is still known: mark it. */
static void mark_file(struct dedup *d, uint32_t number)
{
	uintptr_t v = d->c->ft.files[number];

	if (number && !(v & 1))
		atomic_fetch_add(&((struct cfile *)v)->sharing_found, 1);
}

static bool ghost_match(struct dedup *d, struct cfile *f, const struct fp *h,
			uint16_t scope)
{
	uint64_t key = (h->lo ^ (uint64_t)scope << 48) | 1;
	struct u64map *young = &d->ghost[d->ghost_new];
	struct u64map *old = &d->ghost[d->ghost_new ^ 1];
	uint64_t *seen;

	if (h->lo & (GHOST_SAMPLE - 1))
		return false;
	seen = u64map_find(young, key);
	if (!seen)
		seen = u64map_find(old, key);
	if (seen) {
		if (*seen == f->map_number)
			return false;
		mark_file(d, (uint32_t)*seen);
		return true;
	}
	if (young->len >= d->ghost_max / 2) {
		/* Full: the older generation goes, this one becomes it. */
		u64map_fini(old);
		u64map_init(old);
		d->ghost_new ^= 1;
		young = old;
	}
	u64map_put(young, key, f->map_number, NULL);
	return false;
}

bool dedup_probe(void *ctx, struct cfile *f, const void *data)
{
	struct dedup *d = ctx;
	uint16_t scope;
	struct fp h;
	bool found;

	if (d->scope == DEDUP_SCOPE_NONE)
		return false;
	pthread_rwlock_rdlock(&f->pidx_lock); /* f->ident, for the owner */
	scope = dedup_scope_of(d, f);
	pthread_rwlock_unlock(&f->pidx_lock);
	if (scope == SCOPE_NOMERGE)
		return false;
	fp_page(data, &h);
	atomic_fetch_add(&d->hashes_computed, 1);
	/* Zero pages are everywhere; they say nothing about sharing. */
	if (fp_equal(&h, fp_zero()) && fp_page_is_zero(data))
		return false;
	pthread_mutex_lock(&d->c->map_lock);
	found = resident_match(d, &h, scope, data) ||
		ghost_match(d, f, &h, scope);
	pthread_mutex_unlock(&d->c->map_lock);
	return found;
}

bool dedup_file_shares(struct dedup *d, struct cfile *f)
{
	struct store_ident id;
	uint64_t sid;

	if (d->scope == DEDUP_SCOPE_NONE)
		return false;
	if (reflink_file_shared(f))
		return true;
	if (!d->store)
		return false;
	pthread_rwlock_rdlock(&f->pidx_lock);
	persist_store_ident(&f->ident, &id);
	pthread_rwlock_unlock(&f->pidx_lock);
	/* A file the store knows only by zero pages shared nothing. */
	return store_file_match(d->store, &id, &sid) == 0 &&
	       store_file_has_content(d->store, sid) != 0;
}

/* Two: the scan under way at *since may have passed the file's pages
 * before they were read. */
#define STOPPED_SCANS 2u

bool dedup_file_stopped_sharing(struct dedup *d, struct cfile *f,
				uint64_t *since)
{
	uint64_t scans = atomic_load(&d->full_scans);
	struct cfile_share_summary sum;
	struct cfile_ident ident;

	if (d->scope == DEDUP_SCOPE_NONE)
		return true;
	if (scans < *since + STOPPED_SCANS)
		return false;
	*since = scans;
	if (reflink_file_shared(f))
		return false;
	cfile_share_report(f, NULL, NULL, &sum);
	if (sum.shared_pages || sum.resident_pages == sum.zero_pages)
		return false;
	/* Its records say it shared once: no more, or the next choice made
	 * without resident pages would bring it straight back. */
	pthread_rwlock_rdlock(&f->pidx_lock);
	ident = f->ident;
	pthread_rwlock_unlock(&f->pidx_lock);
	dedup_file_deleted(d, ident.dev, ident.ino);
	return true;
}

uint64_t dedup_full_scans(struct dedup *d)
{
	return atomic_load(&d->full_scans);
}
