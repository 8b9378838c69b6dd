/*
 * persist: the LMDB store (store.h) seen from the cache.
 *
 * A file's stored fingerprints are used only while its identity is the
 * one the store holds (store_file_match). A miss whose stored fingerprint
 * names a resident stable frame (or the zero page) is mapped to it without
 * backing I/O and without hashing (warm restart); a miss that must be read
 * takes its fingerprint from the store instead of hashing it.
 *
 * Only pages that were shared are remembered: a page that matched no other
 * can save no I/O after a restart (there is nothing resident to map it to
 * before it is read), and storing it would cost memory and disk for every
 * page ever read, like a dedup table of unique blocks. Fingerprints are
 * queued for the store's writer thread, never written on the read path.
 * Writes through the mount tell the store the file's new identity and
 * which pages changed.
 *
 * Locking: struct persist_file hangs off the cfile, under its pidx_lock
 * (write); stable-tree look-ups take map_lock.
 */
#include "dedup_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PERSIST_WIN 256u

struct persist_file {
	struct cfile_ident ident;   /* identity the record was matched at */
	bool checked;
	uint64_t store_id;          /* 0: no usable record */
	uint64_t win_first;         /* window of stored fingerprints */
	unsigned win_n;
	struct store_fp win[PERSIST_WIN];
	bool present[PERSIST_WIN];
};

int persist_open(struct dedup *d, const struct dedup_config *cfg)
{
	if (!cfg->state_dir)
		return 0;
	return store_open(cfg->state_dir, cfg->store_quota, cfg->rebuild_state,
			  &d->store);
}

void persist_close(struct dedup *d)
{
	if (d->store)
		store_close(d->store);
	d->store = NULL;
}

static void to_store_ident(const struct cfile_ident *c, struct store_ident *s)
{
	s->dev = c->dev;
	s->ino = c->ino;
	s->size = c->size;
	s->mtime_ns = c->mtime_ns;
	s->ctime_ns = c->ctime_ns;
}

static bool same_ident(const struct cfile_ident *a, const struct cfile_ident *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns;
}

/* The file's record, matched against its current identity. */
static struct persist_file *pfile(struct dedup *d, struct cfile *f)
{
	struct persist_file *pf = f->persist;
	struct store_ident id;
	uint64_t sid;

	if (!d->store || d->scope == DEDUP_SCOPE_NONE)
		return NULL;
	if (!pf) {
		pf = calloc(1, sizeof(*pf));
		if (!pf)
			return NULL;
		f->persist = pf;
	}
	if (pf->checked && same_ident(&pf->ident, &f->ident))
		return pf;
	pf->ident = f->ident;
	pf->checked = true;
	pf->win_n = 0;
	to_store_ident(&f->ident, &id);
	pf->store_id = store_file_match(d->store, &id, &sid) ? 0 : sid;
	return pf;
}

/* The stored fingerprint of page index, if any. */
static bool stored_fp(struct dedup *d, struct persist_file *pf,
		      uint64_t index, struct store_fp *out)
{
	if (!pf || !pf->store_id)
		return false;
	if (index < pf->win_first || index >= pf->win_first + pf->win_n) {
		pf->win_first = index;
		pf->win_n = 0;
		if (store_get_fps(d->store, pf->store_id, index, PERSIST_WIN,
				  pf->win, pf->present))
			return false;
		pf->win_n = PERSIST_WIN;
	}
	if (!pf->present[index - pf->win_first])
		return false;
	*out = pf->win[index - pf->win_first];
	return true;
}

uint32_t persist_lookup(struct dedup *d, struct cfile *f, uint64_t index)
{
	struct cache *c = d->c;
	struct store_fp fp;
	uint32_t cand, pos = 0, hit = 0;
	uint16_t scope;

	if (!stored_fp(d, pfile(d, f), index, &fp))
		return 0;
	scope = dedup_scope_of(d, f);
	pthread_mutex_lock(&c->map_lock);
	if (fp.lo == fp_zero()->lo && fp.hi == fp_zero()->hi) {
		if (atomic_load(&d->use_zero_pages) &&
		    !pidx_store(&f->pidx, index, FID_ZERO)) {
			frame_add_mapper(&c->ft, FID_ZERO, f, index);
			atomic_fetch_add(&d->store_hits, 1);
			hit = FID_ZERO;
		}
		goto out_unlock;
	}
	while ((cand = stree_next(&d->stable, fp.lo, &pos))) {
		struct frame *cf = cache_frame(c, cand);

		if (cf->fp[1] != fp.hi || !scope_match(cf->scope, scope) ||
		    cf->nmappers >= atomic_load(&d->max_page_sharing) ||
		    (frame_flags(cf) & (F_IO | F_ERROR)))
			continue;
		if (pidx_store(&f->pidx, index, cand))
			break;
		if (frame_add_mapper(&c->ft, cand, f, index)) {
			pidx_erase(&f->pidx, index);
			break;
		}
		frame_set(cf, F_REF);
		atomic_fetch_add(&d->store_hits, 1);
		atomic_fetch_add(&d->content_merges, 1);
		hit = cand;
		break;
	}
out_unlock:
	pthread_mutex_unlock(&c->map_lock);
	return hit;
}

void persist_note(struct dedup *d, struct cfile *f, uint64_t index,
		  uint32_t fid)
{
	struct frame *fr = cache_frame(d->c, fid);
	struct store_fp fp;

	/* The store knows this page's content: no need to hash it. */
	if (!stored_fp(d, pfile(d, f), index, &fp))
		return;
	fr->fp[0] = fp.lo;
	fr->fp[1] = fp.hi;
	frame_set(fr, F_HASHED | F_PERSISTED);
}

static void queue_page(struct dedup *d, struct cfile *f, uint64_t index,
		       uint64_t lo, uint64_t hi)
{
	struct store_ident id;
	struct store_fp fp = { .lo = lo, .hi = hi };

	to_store_ident(&f->ident, &id);
	store_put_page(d->store, &id, index, &fp); /* full queue: skipped */
}

void persist_shared(struct dedup *d, struct cfile *f, uint64_t index,
		    uint32_t target)
{
	struct frame *fr = cache_frame(d->c, target);

	if (!d->store)
		return;
	if (target == FID_ZERO) {
		queue_page(d, f, index, fp_zero()->lo, fp_zero()->hi);
		return;
	}
	if (frame_flags(fr) & F_PERSISTED) {
		queue_page(d, f, index, fr->fp[0], fr->fp[1]);
		return;
	}
	/* First time shared: every mapper's page is worth remembering. */
	if (fr->nmappers == 1) {
		queue_page(d, fr->m.owner.file, fr->m.owner.index, fr->fp[0],
			   fr->fp[1]);
	} else {
		for (uint32_t i = 0; i < fr->m.rmap->n; i++)
			queue_page(d, fr->m.rmap->m[i].file,
				   fr->m.rmap->m[i].index, fr->fp[0],
				   fr->fp[1]);
	}
	frame_set(fr, F_PERSISTED);
}

void persist_changed(struct dedup *d, struct cfile *f, uint64_t first,
		     uint64_t n)
{
	struct persist_file *pf = f->persist;
	struct store_ident id;

	if (!d->store)
		return;
	to_store_ident(&f->ident, &id);
	store_file_changed(d->store, f->ident.dev, f->ident.ino, &id, first, n);
	if (pf) {
		/* Our own change: the record follows the file. */
		pf->ident = f->ident;
		pf->win_n = 0;
	}
}

void persist_gone(struct dedup *d, struct cfile *f)
{
	if (d->store)
		store_forget_file(d->store, f->ident.dev, f->ident.ino);
}

void persist_stats(struct dedup *d, struct dedup_stats *st)
{
	struct store_stats ss;

	st->store_hits = atomic_load(&d->store_hits);
	if (!d->store)
		return;
	store_get_stats(d->store, &ss);
	st->store_files = ss.files;
	st->store_pages = ss.pages;
	st->store_distinct = ss.distinct;
	st->store_bytes = ss.bytes;
	st->store_paused = ss.paused;
}

void dedup_file_deleted(struct dedup *d, uint64_t dev, uint64_t ino)
{
	if (d && d->store)
		store_forget_file(d->store, dev, ino);
}

int dedup_prune_missing(struct dedup *d, dedup_exists_cb exists, void *arg)
{
	if (!d || !d->store)
		return 0;
	return store_prune_missing(d->store, exists, arg);
}
