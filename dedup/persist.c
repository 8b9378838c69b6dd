/*
 * persist: the cache's side of the LMDB store: opening and closing it, a
 * file's stored records (matched against its identity, read a window at
 * a time), mapping a missed page unread on them, checking a record
 * against what a fill read, telling the store of writes and unlinks, and
 * statistics. See persist_i.h for the design, what is trusted, and the
 * locking.
 */
#include "persist_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#define PERSIST_WIN 256u
/* Groups a window may name: its pages' groups in a run or two. */
#define PERSIST_GROUPS (PERSIST_WIN / STORE_GROUP * 2)

/* The records of PERSIST_WIN pages of a file, from win_first on. */
struct persist_win {
	struct store_rec rec[PERSIST_WIN];
	struct store_group grp[PERSIST_GROUPS];
};

struct persist_file {
	struct cfile_ident ident;   /* identity the record was matched at */
	bool checked;
	bool has_win;               /* win[0] is allocated */
	uint64_t store_id;          /* 0: no usable record */
	uint64_t win_first;         /* window of stored records */
	unsigned win_n;
	unsigned ngroups;
	/* With a record only (most files have none). One block, since the
	 * cache frees it with free(). */
	struct persist_win win[];
};

int persist_open(struct dedup *d, const struct dedup_config *cfg)
{
	int ret;

	if (!cfg->state_dir)
		return 0;
	ret = store_open(cfg->state_dir, cfg->store_quota, cfg->rebuild_state,
			 &d->store);
	if (ret)
		return ret;
	ret = persist_dtab_init(d);
	if (ret)
		goto out_close;
	/* OpenSSL's one-time set-up (some MiB of library and tables) at
	 * mount rather than on the first read that needs a digest. Without
	 * SHA-256 no page could be trusted unread: no store then. */
	if (!fp_zero_digest()) {
		fprintf(stderr, "samepagefs: state store %s: OpenSSL cannot "
			"compute SHA-256: running without persistence\n",
			cfg->state_dir);
		ret = 0;
		goto out_close;
	}
	return 0;

out_close:
	persist_dtab_fini(d);
	store_close(d->store);
	d->store = NULL;
	return ret;
}

void persist_close(struct dedup *d)
{
	if (d->store)
		store_close(d->store);
	d->store = NULL;
	persist_dtab_fini(d);
}

/* The file's record, matched against its current identity. */
static struct persist_file *pfile(struct dedup *d, struct cfile *f)
{
	struct persist_file *pf = f->persist, *big;
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
	if (pf->checked && cfile_ident_equal(&pf->ident, &f->ident))
		return pf;
	pf->ident = f->ident;
	pf->checked = true;
	pf->win_n = 0;
	persist_store_ident(&f->ident, &id);
	pf->store_id = store_file_match(d->store, &id, &sid) ? 0 : sid;
	if (pf->store_id && !pf->has_win) {
		big = realloc(pf, sizeof(*pf) + sizeof(struct persist_win));
		if (!big) {
			pf->store_id = 0;
			return pf;
		}
		pf = big;
		pf->has_win = true;
		f->persist = pf;
	}
	return pf;
}

/* The stored record of page index, if any. */
static struct store_rec *stored_rec(struct dedup *d, struct persist_file *pf,
				    uint64_t index)
{
	struct store_rec *rec;

	if (!pf || !pf->store_id)
		return NULL;
	if (index < pf->win_first || index >= pf->win_first + pf->win_n) {
		pf->win_first = index;
		pf->win_n = 0;
		pf->ngroups = PERSIST_GROUPS;
		if (store_get_recs(d->store, pf->store_id, index, PERSIST_WIN,
				   pf->win->rec, pf->win->grp, &pf->ngroups))
			return NULL;
		pf->win_n = PERSIST_WIN;
	}
	rec = &pf->win->rec[index - pf->win_first];
	return rec->kind == STORE_REC_NONE ? NULL : rec;
}

/* ---- mapping a page unread ---- */

/*
 * Learn the digests of group g of pf's window from the frames its tags
 * name: trusted only if they hash to the group's digest. Then every page
 * of the window in that group carries its whole digest.
 */
static bool verify_group(struct dedup *d, struct persist_file *pf,
			 unsigned g)
{
	const struct store_group *grp = &pf->win->grp[g];
	uint8_t leaf[STORE_GROUP][STORE_SHA256_LEN], dg[STORE_SHA256_LEN];
	const uint8_t *zd = fp_zero_digest();
	uint32_t cand;

	for (unsigned m = 0; m < STORE_GROUP; m++) {
		if (zd && !memcmp(grp->tag[m], zd, STORE_TAG_LEN)) {
			memcpy(leaf[m], zd, STORE_SHA256_LEN);
			continue;
		}
		cand = persist_dtab_tagged(d, grp->tag[m]);
		if (!cand)
			return false;   /* not all resident: read, for now */
		memcpy(leaf[m], d->digest[cand], STORE_SHA256_LEN);
	}
	if (store_group_digest((const uint8_t (*)[STORE_SHA256_LEN])leaf, dg) ||
	    !fp_digest_equal(dg, grp->digest))
		return false;
	for (unsigned i = 0; i < pf->win_n; i++) {
		struct store_rec *r = &pf->win->rec[i];

		if (r->kind == STORE_REC_GROUP && r->group == g) {
			r->kind = STORE_REC_DIGEST;
			memcpy(r->sha256, leaf[r->member], STORE_SHA256_LEN);
		}
	}
	return true;
}

/* Map (f, index) to cand, counted; map_lock and f's pidx_lock held. */
static uint32_t map_unread(struct dedup *d, struct cfile *f, uint64_t index,
			   uint32_t cand)
{
	struct cache *c = d->c;

	if (pidx_store(&f->pidx, index, cand))
		return 0;
	if (frame_add_mapper(&c->ft, cand, f, index)) {
		pidx_erase(&f->pidx, index);
		return 0;
	}
	atomic_fetch_add(&d->store_hits, 1);
	if (cand != FID_ZERO) {
		/* A merge on the stored SHA-256, not on memcmp(): counted
		 * apart from content_merges. */
		frame_set(cache_frame(c, cand), F_REF);
		atomic_fetch_add(&d->store_merges, 1);
	}
	return cand;
}

uint32_t persist_lookup(struct dedup *d, struct cfile *f, uint64_t index)
{
	struct persist_file *pf = pfile(d, f);
	struct cache *c = d->c;
	const uint8_t *zd = fp_zero_digest();
	struct store_rec *rec = stored_rec(d, pf, index);
	uint32_t cand, pos = 0, hit = 0, fl;
	uint16_t scope;

	if (!rec)
		return 0;
	scope = dedup_scope_of(d, f);
	pthread_mutex_lock(&c->map_lock);
	if (rec->kind == STORE_REC_GROUP && !verify_group(d, pf, rec->group))
		goto out_unlock;
	if (rec->kind == STORE_REC_ZERO ||
	    (zd && fp_digest_equal(rec->sha256, zd))) {
		if (atomic_load(&d->use_zero_pages))
			hit = map_unread(d, f, index, FID_ZERO);
		goto out_unlock;
	}
	while ((cand = stree_next(&d->dtab, persist_tag_key(rec->sha256), &pos))) {
		struct frame *cf = cache_frame(c, cand);

		fl = frame_flags(cf);
		if (!scope_match(cf->scope, scope) ||
		    cf->nmappers >= atomic_load(&d->max_page_sharing) ||
		    (fl & (F_IO | F_ERROR | F_ZERO)) ||
		    (fl & (F_STABLE | F_DIGEST)) != (F_STABLE | F_DIGEST))
			continue;
		/* The same tag and another SHA-256 is another content,
		 * whether someone crafted the collision or not. */
		if (!fp_digest_equal(d->digest[cand], rec->sha256))
			continue;
		hit = map_unread(d, f, index, cand);
		break;
	}
out_unlock:
	pthread_mutex_unlock(&c->map_lock);
	return hit;
}

/* ---- fills ---- */

void persist_note(struct dedup *d, struct cfile *f, uint64_t index,
		  uint32_t fid)
{
	struct frame *fr = cache_frame(d->c, fid);
	const uint8_t *zd = fp_zero_digest();
	struct store_rec *rec;

	if (!d->digest)
		return;
	rec = stored_rec(d, pfile(d, f), index);
	if (!rec || (rec->kind == STORE_REC_ZERO && !zd))
		return;
	/* Only a claim: the fill checks it against what it reads
	 * (persist_fill_digest). The frame is under IO and ours; fp[1]
	 * says whether the claim is a whole digest or a tag (the fill
	 * sets fp afterwards). */
	memcpy(d->digest[fid], rec->kind == STORE_REC_ZERO ? zd : rec->sha256,
	       FP_DIGEST_LEN);
	fr->fp[1] = rec->kind != STORE_REC_GROUP;
	frame_set(fr, F_PERSISTED);
}

void persist_fill_digest(struct dedup *d, struct frame *fr, const void *data,
			 const struct fp *h)
{
	uint32_t fid = (uint32_t)(fr - d->c->ft.frames);
	uint8_t dg[FP_DIGEST_LEN];
	bool right;

	(void)h;
	if (!d->digest || !(frame_flags(fr) & F_PERSISTED))
		return;
	frame_clear(fr, F_PERSISTED);
	if (fp_digest(data, dg))
		return;
	atomic_fetch_add(&d->digests_computed, 1);
	/* A record that is not what was read (a store that lies, or a
	 * change the file's identity did not show) is not this frame's:
	 * the page is recorded anew if it is ever shared. */
	right = fr->fp[1] ? fp_digest_equal(d->digest[fid], dg)
			  : !memcmp(d->digest[fid], dg, STORE_TAG_LEN);
	memcpy(d->digest[fid], dg, FP_DIGEST_LEN);
	frame_set(fr, right ? F_DIGEST | F_PERSISTED : F_DIGEST);
}

/* ---- writes, unlinks, statistics ---- */

void persist_changed(struct dedup *d, struct cfile *f, uint64_t first,
		     uint64_t n)
{
	struct persist_file *pf = f->persist;
	struct store_ident id;

	if (!d->store)
		return;
	persist_store_ident(&f->ident, &id);
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
	st->store_merges = atomic_load(&d->store_merges);
	st->digests_computed = atomic_load(&d->digests_computed);
	if (!d->store)
		return;
	store_get_stats(d->store, &ss);
	st->store_files = ss.files;
	st->store_pages = ss.pages;
	st->store_distinct = ss.distinct;
	st->store_bytes = ss.bytes;
	st->store_paused = ss.paused;
	st->store_queue_full = ss.queue_full;
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
