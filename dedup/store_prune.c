/*
 * store_prune: keeping the store inside its quota, on the writer thread.
 * At the quota (the map full at it, or the live pages past
 * STORE_PRUNE_HIGH% of it) the digests least likely to pay are pruned:
 * runs no other file points into, from the files used longest ago; then
 * whole files, oldest first. The last resort, when one update does not
 * fit even so, is emptying the store: it is a cache of hashes, worth less
 * than a working mount.
 *
 * Copy-on-write needs room for a batch's new copy of every page it
 * touches next to the old one (and LMDB reuses a freed page only two
 * commits later), so in a small store the map fills long before the live
 * pages reach STORE_PRUNE_HIGH% of the quota: the MAP_FULL path is the
 * common one there.
 */
#include "store_i.h"

#include <stdlib.h>
#include <string.h>

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
			    wctx_run_get(&w, r.run, &len, &refs) && refs <= 1) {
				wctx_drop_range(&w, fid, r.first, next);
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
		n = wctx_drop_some(&w, f->fid, next, UINT64_MAX, p->step, &next);
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
void store_prune(struct store *s)
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
int store_empty(struct store *s)
{
	static const enum store_db dbs[] = { SDB_FILES, SDB_RECIPES, SDB_RUNS,
					     SDB_CHUNKS };
	uint64_t digests;
	struct wctx w;
	int rc, ret;

	wctx_begin(s, &w);
	digests = wctx_meta_get(&w, STORE_META_DIGESTS);
	for (size_t i = 0; i < sizeof(dbs) / sizeof(dbs[0]) && !w.t.rc; i++) {
		rc = mdb_drop(w.t.txn, s->dbi[dbs[i]], 0);
		if (rc)
			stxn_fail(&w.t, rc);
	}
	wctx_meta_put(&w, STORE_META_PAGES, 0);
	wctx_meta_put(&w, STORE_META_DIGESTS, 0);
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
void store_check_quota(struct store *s)
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
