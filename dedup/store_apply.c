/*
 * store_apply: what each queued update does to the records, inside the
 * writer thread's transaction (struct wctx): file records, recipes, runs
 * and their chunks, and the counts in meta. The writer (store_writer.c)
 * and pruning (store_prune.c) build on it. See store.h for the schema.
 *
 * Counts: runs.refs counts the recipes pointing into the run, and a run
 * goes (its chunks with it) when the last one does. meta's "pages" and
 * "digests" follow every recipe and run change in the same transaction.
 * Every path that changes a recipe goes through map_set() or
 * wctx_drop_some(), which keep them in step.
 */
#include "store_i.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

void wctx_begin(struct store *s, struct wctx *w)
{
	memset(w, 0, offsetof(struct wctx, ch));
	w->now_s = (uint64_t)time(NULL);
	stxn_begin(s, &w->t, true);
}

uint64_t wctx_meta_get(struct wctx *w, const char *key)
{
	uint8_t v[8];

	if (!stxn_get(&w->t, SDB_META, key, strlen(key), v, sizeof(v)))
		return 0;
	return store_get64(v);
}

void wctx_meta_put(struct wctx *w, const char *key, uint64_t val)
{
	uint8_t v[8];

	store_be64(v, val);
	stxn_put(&w->t, SDB_META, key, strlen(key), v, sizeof(v));
}

static uint64_t wctx_new_fid(struct wctx *w)
{
	if (!w->next_fid) {
		w->next_fid = wctx_meta_get(w, STORE_META_NEXT_FID);
		if (!w->next_fid)
			w->next_fid = 1;        /* fid 0 means "none" */
	}
	w->fid_dirty = true;
	return w->next_fid++;
}

static void chunk_flush(struct wctx *w)
{
	uint8_t k[STORE_CHUNK_KEY], v[STORE_CHUNK_MAX];
	size_t len;

	if (!w->ch_run || !w->ch_dirty)
		return;
	len = store_chunk_enc(&w->ch, v);
	store_key2(k, w->ch_run, w->ch_no);
	stxn_put(&w->t, SDB_CHUNKS, k, sizeof(k), v, len);
	w->ch_dirty = false;
}

int wctx_commit(struct wctx *w)
{
	chunk_flush(w);
	if (w->fid_dirty)
		wctx_meta_put(w, STORE_META_NEXT_FID, w->next_fid);
	if (w->run_dirty)
		wctx_meta_put(w, STORE_META_NEXT_RUN, w->next_run);
	if (w->pages)
		wctx_meta_put(w, STORE_META_PAGES,
			 wctx_meta_get(w, STORE_META_PAGES) + (uint64_t)w->pages);
	if (w->digests)
		wctx_meta_put(w, STORE_META_DIGESTS,
			 wctx_meta_get(w, STORE_META_DIGESTS) +
			 (uint64_t)w->digests);
	return stxn_commit(&w->t);
}

/* ---- runs ---- */

bool wctx_run_get(struct wctx *w, uint64_t run, uint64_t *len,
		    uint64_t *refs)
{
	uint8_t k[STORE_RUN_KEY], v[STORE_RUN_VAL];

	store_be64(k, run);
	if (!stxn_get(&w->t, SDB_RUNS, k, sizeof(k), v, sizeof(v)))
		return false;
	*len = store_get64(v);
	*refs = store_get64(v + 8);
	return true;
}

static void run_put(struct wctx *w, uint64_t run, uint64_t len,
		    uint64_t refs)
{
	uint8_t k[STORE_RUN_KEY], v[STORE_RUN_VAL];

	store_be64(k, run);
	store_be64(v, len);
	store_be64(v + 8, refs);
	stxn_put(&w->t, SDB_RUNS, k, sizeof(k), v, sizeof(v));
}

static uint64_t run_new(struct wctx *w)
{
	if (!w->next_run) {
		w->next_run = wctx_meta_get(w, STORE_META_NEXT_RUN);
		if (w->next_run <= STORE_RUN_ZERO)
			w->next_run = STORE_RUN_ZERO + 1;
	}
	w->run_dirty = true;
	run_put(w, w->next_run, 0, 0);
	return w->next_run++;
}

/* Drop run with its chunks. */
static void run_delete(struct wctx *w, uint64_t run, uint64_t len)
{
	uint8_t k[STORE_CHUNK_KEY], rk[STORE_RUN_KEY];

	if (w->ch_run == run)
		w->ch_run = 0;          /* its changes go with it */
	for (uint64_t c = 0; c * STORE_CHUNK < len && !w->t.rc; c++) {
		store_key2(k, run, c);
		stxn_del(&w->t, SDB_CHUNKS, k, sizeof(k));
	}
	store_be64(rk, run);
	stxn_del(&w->t, SDB_RUNS, rk, sizeof(rk));
	w->digests -= (int64_t)len;
	w->freed += len;
}

static void run_ref(struct wctx *w, uint64_t run, int delta)
{
	uint64_t len, refs;

	if (run == STORE_RUN_ZERO)
		return;
	if (!wctx_run_get(w, run, &len, &refs)) {
		stxn_fail(&w->t, MDB_CORRUPTED);
		return;
	}
	if (delta < 0 && refs <= 1) {
		run_delete(w, run, len);
		return;
	}
	run_put(w, run, len, delta < 0 ? refs - 1 : refs + 1);
}

/* Chunk c of run into w->ch (a new, empty one if create and absent). */
static bool chunk_load(struct wctx *w, uint64_t run, uint64_t c, bool create)
{
	uint8_t k[STORE_CHUNK_KEY], v[STORE_CHUNK_MAX];
	size_t len;

	if (w->ch_run == run && w->ch_no == c)
		return true;
	chunk_flush(w);
	w->ch_run = 0;
	store_key2(k, run, c);
	if (stxn_getv(&w->t, SDB_CHUNKS, k, sizeof(k), v, sizeof(v), &len)) {
		if (!store_chunk_dec(v, len, &w->ch)) {
			stxn_fail(&w->t, MDB_CORRUPTED);
			return false;
		}
	} else if (create && !w->t.rc) {
		w->ch.n = 0;
	} else {
		if (!w->t.rc)
			stxn_fail(&w->t, MDB_CORRUPTED);
		return false;
	}
	w->ch_run = run;
	w->ch_no = c;
	return true;
}

/* Does entry off of run hold sha256? With a whole group, only its tag
 * can be compared: enough to tell a record is still the one made for
 * the same page at the same identity (full false), never to point a
 * page at it (full true: only whole digests). */
static bool entry_is(struct wctx *w, uint64_t run, uint64_t off,
		     const uint8_t *sha256, bool full)
{
	uint32_t e = (uint32_t)(off % STORE_CHUNK);

	if (!chunk_load(w, run, off / STORE_CHUNK, false) || e >= w->ch.n)
		return false;
	if (e < w->ch.n / STORE_GROUP * STORE_GROUP)
		return !full && !memcmp(w->ch.tag[e], sha256, STORE_TAG_LEN);
	return !memcmp(w->ch.open[e % STORE_GROUP], sha256, STORE_SHA256_LEN);
}

/* Append sha256 to run (whose length is len); a group once whole gets
 * its digest. */
static void run_append(struct wctx *w, uint64_t run, uint64_t len,
		       uint64_t refs, const uint8_t *sha256)
{
	uint32_t e = (uint32_t)(len % STORE_CHUNK), g;

	if (!chunk_load(w, run, len / STORE_CHUNK, e == 0))
		return;
	if (w->ch.n != e) {
		stxn_fail(&w->t, MDB_CORRUPTED);
		return;
	}
	memcpy(w->ch.tag[e], sha256, STORE_TAG_LEN);
	memcpy(w->ch.open[e % STORE_GROUP], sha256, STORE_SHA256_LEN);
	w->ch.n++;
	w->ch_dirty = true;
	if (w->ch.n % STORE_GROUP == 0) {
		g = e / STORE_GROUP;
		if (store_group_digest((const uint8_t (*)[STORE_SHA256_LEN])
				       w->ch.open, w->ch.gdigest[g]))
			stxn_fail(&w->t, EIO);
	}
	run_put(w, run, len + 1, refs);
	w->digests++;
}

/* ---- recipes ---- */

static void recipe_put(struct wctx *w, uint64_t fid,
		       const struct store_recipe *r)
{
	uint8_t k[STORE_RECIPE_KEY], v[STORE_RECIPE_VAL];

	store_key2(k, fid, r->first);
	store_recipe_enc(v, r);
	stxn_put(&w->t, SDB_RECIPES, k, sizeof(k), v, sizeof(v));
}

static void recipe_del(struct wctx *w, uint64_t fid, uint64_t first)
{
	uint8_t k[STORE_RECIPE_KEY];

	store_key2(k, fid, first);
	stxn_del(&w->t, SDB_RECIPES, k, sizeof(k));
}

/* The recipe covering page idx of fid, if any. */
static bool recipe_at(struct wctx *w, uint64_t fid, uint64_t idx,
		      struct store_recipe *r)
{
	return store_recipe_find(&w->t, fid, idx, r) && r->first <= idx;
}

/* Does b continue a (b's pages right after a's, at the entries after)? */
static bool recipe_continues(const struct store_recipe *a,
			     const struct store_recipe *b)
{
	if (a->first + a->count != b->first || a->run != b->run)
		return false;
	return a->run == STORE_RUN_ZERO || a->off + a->count == b->off;
}

/*
 * Drop the pages [first, end) of fid from its recipes; returns how many
 * were described. limit: recipes to touch at most (for pruning steps);
 * *next is where to go on from.
 */
uint64_t wctx_drop_some(struct wctx *w, uint64_t fid, uint64_t first,
			  uint64_t end, uint64_t limit, uint64_t *next)
{
	struct store_recipe r, rest;
	uint64_t at = first, n = 0, touched = 0, lo, hi;

	while (at < end && touched < limit &&
	       store_recipe_find(&w->t, fid, at, &r) && r.first < end) {
		lo = r.first > first ? r.first : first;
		hi = r.first + r.count < end ? r.first + r.count : end;
		recipe_del(w, fid, r.first);
		if (r.first < lo) {
			rest = r;
			rest.count = lo - r.first;
			recipe_put(w, fid, &rest);
			run_ref(w, r.run, +1);
		}
		if (hi < r.first + r.count) {
			rest = r;
			rest.first = hi;
			rest.count = r.first + r.count - hi;
			if (r.run != STORE_RUN_ZERO)
				rest.off = r.off + (hi - r.first);
			recipe_put(w, fid, &rest);
			run_ref(w, r.run, +1);
		}
		run_ref(w, r.run, -1);
		n += hi - lo;
		touched++;
		at = hi;
		if (!hi)
			break;
	}
	w->pages -= (int64_t)n;
	if (next)
		*next = touched < limit ? end : at;
	return n;
}

uint64_t wctx_drop_range(struct wctx *w, uint64_t fid, uint64_t first,
			   uint64_t end)
{
	return wctx_drop_some(w, fid, first, end, UINT64_MAX, NULL);
}

/* Point page idx of fid (described by no recipe) at entry off of run. */
static void map_set(struct wctx *w, uint64_t fid, uint64_t idx, uint64_t run,
		    uint64_t off)
{
	struct store_recipe me = { idx, 1, run, off }, prev, next;
	bool has_prev, has_next;

	has_prev = idx > 0 && recipe_at(w, fid, idx - 1, &prev) &&
		   recipe_continues(&prev, &me);
	has_next = idx < UINT64_MAX &&
		   recipe_at(w, fid, idx + 1, &next) && next.first == idx + 1 &&
		   recipe_continues(&me, &next);
	if (has_prev) {
		prev.count++;
		if (has_next) {
			prev.count += next.count;
			recipe_del(w, fid, next.first);
			run_ref(w, run, -1);
		}
		recipe_put(w, fid, &prev);
	} else if (has_next) {
		recipe_del(w, fid, next.first);
		me.count += next.count;
		recipe_put(w, fid, &me);
	} else {
		recipe_put(w, fid, &me);
		run_ref(w, run, +1);
	}
	w->pages++;
}

/* ---- files ---- */

static bool file_get(struct wctx *w, uint64_t dev, uint64_t ino,
		     struct store_file_rec *r)
{
	uint8_t k[STORE_FILE_KEY], v[STORE_FILE_VAL];

	store_key2(k, dev, ino);
	if (!stxn_get(&w->t, SDB_FILES, k, sizeof(k), v, sizeof(v)))
		return false;
	store_file_dec(v, r);
	return true;
}

static void file_put(struct wctx *w, const struct store_ident *id,
		     struct store_file_rec *r)
{
	uint8_t k[STORE_FILE_KEY], v[STORE_FILE_VAL];

	r->size = id->size;
	r->mtime_ns = id->mtime_ns;
	r->ctime_ns = id->ctime_ns;
	store_key2(k, id->dev, id->ino);
	store_file_enc(v, r);
	stxn_put(&w->t, SDB_FILES, k, sizeof(k), v, sizeof(v));
}

static uint64_t file_forget(struct wctx *w, uint64_t dev, uint64_t ino,
			    const struct store_file_rec *r)
{
	uint8_t k[STORE_FILE_KEY];
	uint64_t n = wctx_drop_range(w, r->fid, 0, UINT64_MAX);

	store_key2(k, dev, ino);
	stxn_del(&w->t, SDB_FILES, k, sizeof(k));
	return n;
}

/* ---- applying queued updates ---- */

/* Where the page a put names as holding the same content is recorded:
 * false if its file is not recorded at that identity, or the page not. */
static bool ref_entry(struct wctx *w, const struct store_op *op,
		      uint64_t *run, uint64_t *off)
{
	struct store_file_rec rr;
	struct store_recipe r;

	if (!op->has_ref || !file_get(w, op->ref.dev, op->ref.ino, &rr) ||
	    !store_file_is(&rr, &op->ref) || !recipe_at(w, rr.fid, op->b, &r))
		return false;
	*run = r.run;
	*off = r.run == STORE_RUN_ZERO ? 0 : r.off + (op->b - r.first);
	return true;
}

static void apply_put(struct wctx *w, const struct store_op *op)
{
	uint64_t i = op->a, run = 0, off = 0, len, refs;
	struct store_recipe cur, prev;
	struct store_file_rec r;
	bool target;

	if (!file_get(w, op->id.dev, op->id.ino, &r)) {
		r.fid = wctx_new_fid(w);
		r.last_used_s = w->now_s;
		file_put(w, &op->id, &r);
	} else if (!store_file_is(&r, &op->id)) {
		/* Changed outside the mount: the old records are worthless.
		 * The id stays, so no holder of it can see another file's
		 * pages. */
		wctx_drop_range(w, r.fid, 0, UINT64_MAX);
		r.last_used_s = w->now_s;
		file_put(w, &op->id, &r);
	}
	if (op->zero) {
		target = true;
		run = STORE_RUN_ZERO;
	} else {
		target = ref_entry(w, op, &run, &off);
	}
	if (recipe_at(w, r.fid, i, &cur)) {
		uint64_t at = cur.run == STORE_RUN_ZERO ? 0 :
			      cur.off + (i - cur.first);

		/* Put again (a mapper was busy, a frame recorded twice):
		 * nothing to do. */
		if (target ? cur.run == run && at == off :
		    cur.run != STORE_RUN_ZERO &&
		    entry_is(w, cur.run, at, op->sha256, false))
			return;
		wctx_drop_range(w, r.fid, i, i + 1);
	}
	if (!target && i > 0 && recipe_at(w, r.fid, i - 1, &prev) &&
	    prev.run != STORE_RUN_ZERO &&
	    wctx_run_get(w, prev.run, &len, &refs)) {
		/* Next to the previous page's entry, if that is where the
		 * run ends or already holds this digest. */
		uint64_t p = prev.off + (i - 1 - prev.first) + 1;

		if (p == len) {
			run_append(w, prev.run, len, refs, op->sha256);
			target = true;
		} else if (p < len && entry_is(w, prev.run, p, op->sha256,
					       true)) {
			target = true;
		}
		run = prev.run;
		off = p;
	}
	if (!target) {
		run = run_new(w);
		run_append(w, run, 0, 0, op->sha256);
		off = 0;
	}
	if (!w->t.rc)
		map_set(w, r.fid, i, run, off);
}

static void apply_changed(struct wctx *w, const struct store_op *op)
{
	uint64_t end = op->b > UINT64_MAX - op->a ? UINT64_MAX : op->a + op->b;
	uint64_t tail = op->id.size / STORE_PAGE_SIZE +
			!!(op->id.size % STORE_PAGE_SIZE);
	struct store_file_rec r;

	if (!file_get(w, op->id.dev, op->id.ino, &r))
		return;
	wctx_drop_range(w, r.fid, op->a, end);
	/* Pages past the new end of the file are gone as well. */
	wctx_drop_range(w, r.fid, tail, UINT64_MAX);
	r.last_used_s = w->now_s;
	file_put(w, &op->id, &r);
}

void wctx_apply(struct wctx *w, const struct store_op *op)
{
	struct store_file_rec r;

	switch (op->kind) {
	case SOP_PUT:
		apply_put(w, op);
		break;
	case SOP_CHANGED:
		apply_changed(w, op);
		break;
	case SOP_FORGET:
		if (file_get(w, op->id.dev, op->id.ino, &r))
			file_forget(w, op->id.dev, op->id.ino, &r);
		break;
	case SOP_FORGET_STALE:
		if (file_get(w, op->id.dev, op->id.ino, &r) &&
		    !store_file_is(&r, &op->id))
			file_forget(w, op->id.dev, op->id.ino, &r);
		break;
	case SOP_TOUCH:
		if (file_get(w, op->id.dev, op->id.ino, &r) &&
		    store_file_is(&r, &op->id) && r.last_used_s < op->a) {
			r.last_used_s = op->a;
			file_put(w, &op->id, &r);
		}
		break;
	}
}
