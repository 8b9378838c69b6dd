/*
 * store_writer: the one thread that writes the store (LMDB allows one
 * writer). It takes the queue in one swap, applies it in transactions of
 * at most STORE_BATCH updates, and keeps the store inside its quota.
 *
 * Puts between two other updates are applied sorted: the pages that
 * bring their own digest first, then those that point at another page,
 * each file's in page order. So a run grows in page order, a reference
 * is recorded before the pages that point at it, and a copy's recipe is
 * extended page by page rather than split.
 *
 * A full map is grown (doubled, up to the quota) and the batch retried.
 * At the quota (or when the live pages pass STORE_PRUNE_HIGH% of it) the
 * digests least likely to pay are pruned: runs no other file points into,
 * from the files used longest ago; then whole files, oldest first. If a
 * batch still does not fit, it is split; if one update does not, the
 * store is emptied: it is a cache of hashes, worth less than a working
 * mount. Any other failure pauses persistence (store_pause).
 *
 * Copy-on-write needs room for a batch's new copy of every page it
 * touches next to the old one (and LMDB reuses a freed page only two
 * commits later), so in a small store the map fills long before the live
 * pages reach STORE_PRUNE_HIGH% of the quota: the MAP_FULL path is the
 * common one there.
 *
 * Counts: runs.refs counts the recipes pointing into the run, and a run
 * goes (its chunks with it) when the last one does. meta's "pages" and
 * "digests" follow every recipe and run change in the same transaction.
 * Every path that changes a recipe goes through map_set(), map_unset()
 * or drop_range(), which keep them in step.
 */
#include "store_i.h"

#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct wctx {
	struct stxn t;
	uint64_t now_s;
	uint64_t next_fid;          /* 0: not read from meta yet */
	uint64_t next_run;          /* 0: not read from meta yet */
	bool fid_dirty, run_dirty;
	int64_t pages, digests;     /* changes of the meta counts */
	uint64_t freed;             /* digests of runs dropped */
	/* The chunk being appended to, decoded (ch_run 0: none). */
	uint64_t ch_run, ch_no;
	bool ch_dirty;
	struct store_chunk ch;
};

static void wctx_begin(struct store *s, struct wctx *w)
{
	memset(w, 0, offsetof(struct wctx, ch));
	w->now_s = (uint64_t)time(NULL);
	stxn_begin(s, &w->t, true);
}

static uint64_t meta_get(struct wctx *w, const char *key)
{
	uint8_t v[8];

	if (!stxn_get(&w->t, SDB_META, key, strlen(key), v, sizeof(v)))
		return 0;
	return store_get64(v);
}

static void meta_put(struct wctx *w, const char *key, uint64_t val)
{
	uint8_t v[8];

	store_be64(v, val);
	stxn_put(&w->t, SDB_META, key, strlen(key), v, sizeof(v));
}

static uint64_t wctx_new_fid(struct wctx *w)
{
	if (!w->next_fid) {
		w->next_fid = meta_get(w, STORE_META_NEXT_FID);
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

static int wctx_commit(struct wctx *w)
{
	chunk_flush(w);
	if (w->fid_dirty)
		meta_put(w, STORE_META_NEXT_FID, w->next_fid);
	if (w->run_dirty)
		meta_put(w, STORE_META_NEXT_RUN, w->next_run);
	if (w->pages)
		meta_put(w, STORE_META_PAGES,
			 meta_get(w, STORE_META_PAGES) + (uint64_t)w->pages);
	if (w->digests)
		meta_put(w, STORE_META_DIGESTS,
			 meta_get(w, STORE_META_DIGESTS) +
			 (uint64_t)w->digests);
	return stxn_commit(&w->t);
}

/* ---- runs ---- */

static bool run_get(struct wctx *w, uint64_t run, uint64_t *len,
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
		w->next_run = meta_get(w, STORE_META_NEXT_RUN);
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
	if (!run_get(w, run, &len, &refs)) {
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
static uint64_t drop_some(struct wctx *w, uint64_t fid, uint64_t first,
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

static uint64_t drop_range(struct wctx *w, uint64_t fid, uint64_t first,
			   uint64_t end)
{
	return drop_some(w, fid, first, end, UINT64_MAX, NULL);
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
	uint64_t n = drop_range(w, r->fid, 0, UINT64_MAX);

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
		drop_range(w, r.fid, 0, UINT64_MAX);
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
		drop_range(w, r.fid, i, i + 1);
	}
	if (!target && i > 0 && recipe_at(w, r.fid, i - 1, &prev) &&
	    prev.run != STORE_RUN_ZERO &&
	    run_get(w, prev.run, &len, &refs)) {
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
	drop_range(w, r.fid, op->a, end);
	/* Pages past the new end of the file are gone as well. */
	drop_range(w, r.fid, tail, UINT64_MAX);
	r.last_used_s = w->now_s;
	file_put(w, &op->id, &r);
}

static void apply_op(struct wctx *w, const struct store_op *op)
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

/* ---- room: map growth, pruning, emptying ---- */

static int store_grow_map(struct store *s)
{
	MDB_envinfo info;
	uint64_t size;
	int rc;

	mdb_env_info(s->env, &info);
	if (info.me_mapsize >= s->quota)
		return -ENOSPC;
	size = (uint64_t)info.me_mapsize * 2;
	if (size > s->quota)
		size = s->quota;
	pthread_rwlock_wrlock(&s->map_lock);
	rc = mdb_env_set_mapsize(s->env, size);
	pthread_rwlock_unlock(&s->map_lock);
	return store_errno(rc);
}

struct prune_file {
	uint64_t last_used_s, fid, dev, ino;
};

static int prune_cmp(const void *a, const void *b)
{
	const struct prune_file *x = a, *y = b;

	if (x->last_used_s != y->last_used_s)
		return x->last_used_s < y->last_used_s ? -1 : 1;
	return x->fid < y->fid ? -1 : x->fid > y->fid;
}

/* Every file record, least recently used first (ties: oldest id). */
static struct prune_file *prune_list(struct store *s, size_t *count)
{
	uint8_t k[STORE_FILE_KEY] = { 0 }, v[STORE_FILE_VAL];
	struct prune_file *files = NULL, *grown;
	size_t n = 0, cap = 0;
	struct store_file_rec r;
	MDB_cursor_op op = MDB_FIRST;
	struct stxn t;

	stxn_begin(s, &t, false);
	while (stxn_seek(&t, SDB_FILES, op, k, sizeof(k), v, sizeof(v))) {
		op = MDB_NEXT;
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			grown = realloc(files, cap * sizeof(*files));
			if (!grown)
				break;
			files = grown;
		}
		store_file_dec(v, &r);
		files[n++] = (struct prune_file){ r.last_used_s, r.fid,
			store_get64(k), store_get64(k + 8) };
	}
	stxn_abort(&t);
	if (files)
		qsort(files, n, sizeof(*files), prune_cmp);
	*count = n;
	return files;
}

enum prune_result { PRUNE_DONE, PRUNE_MORE, PRUNE_FAILED };

/*
 * Pruning runs in steps of at most STORE_PRUNE_STEP recipes, each its
 * own transaction: a delete copies the pages it touches, and with the map
 * full a large step would not fit. A step that does not fit is retried at
 * half the size, down to one recipe. What it counts is records: digests
 * of the runs dropped and recipes.
 */
#define STORE_PRUNE_STEP 512u

struct pruner {
	struct store *s;
	uint64_t goal;          /* records to drop */
	uint64_t done;
	uint64_t step;
};

/* Records in the store, as pruning counts them. */
static uint64_t prune_records(struct store *s)
{
	uint8_t v[8];
	uint64_t n = 0;
	struct stxn t;

	stxn_begin(s, &t, false);
	if (stxn_get(&t, SDB_META, STORE_META_DIGESTS,
		     STORE_KEYLEN(STORE_META_DIGESTS), v, sizeof(v)))
		n = store_get64(v);
	n += stxn_entries(&t, SDB_RECIPES);
	stxn_abort(&t);
	return n;
}

/* Commit a step and say whether enough is dropped; *retry when the step
 * should be tried again smaller. */
static enum prune_result prune_commit(struct pruner *p, struct wctx *w,
				      uint64_t recipes, bool *retry)
{
	uint64_t n = w->freed + recipes;

	*retry = false;
	if (wctx_commit(w)) {
		if (w->t.rc == MDB_MAP_FULL && p->step > 1) {
			p->step /= 2;
			*retry = true;
			return PRUNE_MORE;
		}
		return PRUNE_FAILED;
	}
	atomic_fetch_add(&p->s->commits, 1);
	atomic_fetch_add(&p->s->pruned_pages, w->freed);
	p->done += n;
	return p->done >= p->goal ? PRUNE_DONE : PRUNE_MORE;
}

/* Drop the recipes of fid into runs no other recipe points into: their
 * digests go with them, and no other file loses anything. */
static enum prune_result prune_sole(struct pruner *p, uint64_t fid)
{
	enum prune_result res;
	struct store_recipe r;
	uint64_t next = 0, from, n, len, refs;
	bool more = true, retry;
	struct wctx w;

	while (more) {
		more = false;
		n = 0;
		from = next;
		wctx_begin(p->s, &w);
		while (store_recipe_find(&w.t, fid, next, &r)) {
			next = r.first + r.count;
			if (r.run != STORE_RUN_ZERO &&
			    run_get(&w, r.run, &len, &refs) && refs <= 1) {
				drop_range(&w, fid, r.first, next);
				n++;
			}
			if (!next)
				break;          /* the last page */
			if (n >= p->step || p->done + w.freed + n >= p->goal) {
				more = true;
				break;
			}
		}
		res = prune_commit(p, &w, n, &retry);
		if (retry) {
			next = from;
			more = true;
			continue;
		}
		if (res != PRUNE_MORE)
			return res;
	}
	return PRUNE_MORE;
}

/* Drop a whole file, its recipes first. */
static enum prune_result prune_whole(struct pruner *p,
				     const struct prune_file *f)
{
	uint8_t k[STORE_FILE_KEY];
	enum prune_result res;
	uint64_t next = 0, from, n;
	bool retry;
	struct wctx w;

	for (;;) {
		from = next;
		wctx_begin(p->s, &w);
		n = drop_some(&w, f->fid, next, UINT64_MAX, p->step, &next);
		if (next == UINT64_MAX) {
			store_key2(k, f->dev, f->ino);
			stxn_del(&w.t, SDB_FILES, k, sizeof(k));
		}
		res = prune_commit(p, &w, n ? 1 : 0, &retry);
		if (retry) {
			next = from;
			continue;
		}
		if (res != PRUNE_MORE || next == UINT64_MAX)
			return res;
	}
}

/*
 * Drop (100 - STORE_PRUNE_LOW)% of the records, least useful first:
 * digests of runs only files used long ago point into, then whole files.
 */
static void store_prune(struct store *s)
{
	struct pruner p = { s, 0, 0, STORE_PRUNE_STEP };
	enum prune_result res = PRUNE_MORE;
	struct prune_file *files;
	size_t n, i;

	s->prune_mark = prune_records(s);
	p.goal = s->prune_mark / 100 * (100 - STORE_PRUNE_LOW) + 1;
	files = prune_list(s, &n);
	for (i = 0; i < n && res == PRUNE_MORE; i++)
		res = prune_sole(&p, files[i].fid);
	for (i = 0; i < n && res == PRUNE_MORE; i++)
		res = prune_whole(&p, &files[i]);
	free(files);
}

/* Last resort at the quota: forget every file (meta stays). */
static int store_empty(struct store *s)
{
	static const enum store_db dbs[] = { SDB_FILES, SDB_RECIPES, SDB_RUNS,
					     SDB_CHUNKS };
	uint64_t digests;
	struct wctx w;
	int rc, ret;

	wctx_begin(s, &w);
	digests = meta_get(&w, STORE_META_DIGESTS);
	for (size_t i = 0; i < sizeof(dbs) / sizeof(dbs[0]) && !w.t.rc; i++) {
		rc = mdb_drop(w.t.txn, s->dbi[dbs[i]], 0);
		if (rc)
			stxn_fail(&w.t, rc);
	}
	meta_put(&w, STORE_META_PAGES, 0);
	meta_put(&w, STORE_META_DIGESTS, 0);
	ret = stxn_commit(&w.t);
	if (!ret) {
		atomic_fetch_add(&s->commits, 1);
		atomic_fetch_add(&s->pruned_pages, digests);
	}
	return ret;
}

/*
 * Prune before the map is full where we can: in a large store, a batch
 * copies a small share of the pages and the live ones can come close.
 * Not again until the records we dropped have been replaced, though:
 * their room may be inside pages that still count as live.
 */
static void store_check_quota(struct store *s)
{
	struct stxn t;
	uint64_t used;

	stxn_begin(s, &t, false);
	used = stxn_used_bytes(&t);
	stxn_abort(&t);
	if (used > s->quota / 100 * STORE_PRUNE_HIGH &&
	    prune_records(s) >= s->prune_mark)
		store_prune(s);
}

/* ---- batches ---- */

/* One transaction for ops[0, n). 0, or -errno once persistence paused. */
static int store_apply(struct store *s, const struct store_op *ops, size_t n)
{
	bool pruned = false, emptied = false;
	struct wctx w;
	int ret, rc;

	for (;;) {
		wctx_begin(s, &w);
		for (size_t i = 0; i < n && !w.t.rc; i++)
			apply_op(&w, &ops[i]);
		ret = wctx_commit(&w);
		if (!ret) {
			atomic_fetch_add(&s->commits, 1);
			return 0;
		}
		rc = w.t.rc;
		if (rc == MDB_MAP_FULL) {
			if (!store_grow_map(s))
				continue;
			if (!pruned) {
				pruned = true;
				store_prune(s);
				continue;
			}
			if (n > 1) {
				/* A smaller batch copies fewer pages. */
				ret = store_apply(s, ops, n / 2);
				if (!ret)
					ret = store_apply(s, ops + n / 2,
							  n - n / 2);
				return ret;
			}
			if (!emptied) {
				emptied = true;
				if (!store_empty(s))
					continue;
			}
		}
		if (rc == MDB_TXN_FULL && n > 1) {
			/* Too many dirty pages for one transaction. */
			ret = store_apply(s, ops, n / 2);
			if (!ret)
				ret = store_apply(s, ops + n / 2, n - n / 2);
			return ret;
		}
		break;
	}
	atomic_fetch_add(&s->commit_errors, 1);
	store_pause(s, ret, "commit");
	return ret;
}

static int put_cmp(const void *pa, const void *pb)
{
	const struct store_op *a = pa, *b = pb;

	if (a->has_ref != b->has_ref)
		return a->has_ref ? 1 : -1;
	if (a->id.dev != b->id.dev)
		return a->id.dev < b->id.dev ? -1 : 1;
	if (a->id.ino != b->id.ino)
		return a->id.ino < b->id.ino ? -1 : 1;
	if (a->a != b->a)
		return a->a < b->a ? -1 : 1;
	return a->order < b->order ? -1 : a->order > b->order;
}

/* Sort each stretch of puts in ops[0, n) (see the top of this file);
 * other updates stay where they are, and puts of one page keep their
 * order. */
static void sort_puts(struct store_op *ops, size_t n)
{
	size_t i = 0, j;

	while (i < n) {
		if (ops[i].kind != SOP_PUT) {
			i++;
			continue;
		}
		for (j = i; j < n && ops[j].kind == SOP_PUT; j++)
			ops[j].order = (uint32_t)(j - i);
		if (j - i > 1)
			qsort(ops + i, j - i, sizeof(*ops), put_cmp);
		i = j;
	}
}

static void store_run_batch(struct store *s, struct store_queue *b,
			    uint64_t first_seq)
{
	size_t off, n;

	/* Whole: barriers stay in place, so done_seq still means that
	 * every invalidation up to it is committed. */
	sort_puts(b->ops, b->len);
	for (off = 0; off < b->len; off += n) {
		n = b->len - off < STORE_BATCH ? b->len - off : STORE_BATCH;
		if (store_apply(s, b->ops + off, n))
			return;         /* paused: the rest is dropped */
		pthread_mutex_lock(&s->q_lock);
		if (!s->paused) {
			s->done_seq = first_seq + off + n - 1;
			store_masks_lift(s);
			pthread_cond_broadcast(&s->q_done);
		}
		pthread_mutex_unlock(&s->q_lock);
		store_check_quota(s);
	}
}

void store_pause(struct store *s, int err, const char *what)
{
	pthread_mutex_lock(&s->q_lock);
	if (s->paused) {
		pthread_mutex_unlock(&s->q_lock);
		return;
	}
	s->paused = true;
	s->pause_err = err;
	/* What is masked now will never be committed: mask it for good
	 * before done_seq jumps over the dropped updates. */
	for (size_t i = 0; i < s->mask_cap; i++)
		if (s->masks[i].fid)
			s->masks[i].seq = STORE_SEQ_NEVER;
	if (s->mask_all > s->done_seq)
		s->mask_all = STORE_SEQ_NEVER;
	s->q.len = 0;
	s->done_seq = s->q_seq;
	pthread_cond_broadcast(&s->q_done);
	pthread_mutex_unlock(&s->q_lock);
	fprintf(stderr, "samepagefs: state store: %s: %s: %s: persistence "
		"paused\n", s->dir, what, strerror(-err));
}

static void batch_deadline(const struct store *s, struct timespec *ts)
{
	*ts = s->q_first;
	ts->tv_nsec += STORE_BATCH_MS * 1000000L;
	ts->tv_sec += ts->tv_nsec / 1000000000L;
	ts->tv_nsec %= 1000000000L;
}

void *store_writer_main(void *arg)
{
	struct store *s = arg;
	struct store_queue batch = { 0 }, tmp;
	struct timespec deadline;
	uint64_t first;

	pthread_setname_np(pthread_self(), "sp-store");
	pthread_mutex_lock(&s->q_lock);
	for (;;) {
		while (!s->stop && !s->sync_req && s->q.len < STORE_BATCH) {
			if (!s->q.len) {
				pthread_cond_wait(&s->q_wake, &s->q_lock);
				continue;
			}
			batch_deadline(s, &deadline);
			if (pthread_cond_timedwait(&s->q_wake, &s->q_lock,
						   &deadline) == ETIMEDOUT)
				break;
		}
		s->sync_req = false;
		if (!s->q.len) {
			/* Everything handed to us is done. */
			s->done_seq = s->q_seq;
			store_masks_lift(s);
			pthread_cond_broadcast(&s->q_done);
			if (s->stop)
				break;
			continue;
		}
		tmp = s->q;
		s->q = batch;
		s->q.len = 0;
		batch = tmp;
		first = s->q_seq - batch.len + 1;
		pthread_mutex_unlock(&s->q_lock);

		store_run_batch(s, &batch, first);
		batch.len = 0;
		if (batch.cap > 4 * STORE_BATCH) {
			/* A burst is over: give its memory back. */
			free(batch.ops);
			batch = (struct store_queue){ 0 };
		}
		pthread_mutex_lock(&s->q_lock);
	}
	pthread_mutex_unlock(&s->q_lock);
	free(batch.ops);
	return NULL;
}
