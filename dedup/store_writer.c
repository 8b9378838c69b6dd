/*
 * store_writer: the one thread that writes the store (LMDB allows one
 * writer). It takes the queue in one swap, applies it in transactions of
 * at most STORE_BATCH updates, and keeps the store inside its quota.
 *
 * A full map is grown (doubled, up to the quota) and the batch retried.
 * At the quota (or when the live pages pass STORE_PRUNE_HIGH% of it) the
 * fingerprints least likely to pay are pruned: pages whose content no
 * other page shares (refs == 1), from the files used longest ago; then
 * whole files, oldest first. If a batch still does not fit, it is split;
 * if one update does not, the store is emptied: it is a cache of hashes,
 * worth less than a working mount. Any other failure pauses persistence
 * (store_pause).
 *
 * Copy-on-write needs room for a batch's new copy of every page it
 * touches next to the old one (and LMDB reuses a freed page only two
 * commits later), so in a small store the map fills long before the live
 * pages reach STORE_PRUNE_HIGH% of the quota: the MAP_FULL path is the
 * common one there.
 *
 * Refcounts: fps.refs counts the pages records holding that fingerprint.
 * Every path that adds, replaces or deletes a pages record goes through
 * page_set() or page_drop(), which keep refs in step in the same
 * transaction.
 */
#include "store_i.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct wctx {
	struct stxn t;
	uint64_t now_s;
	uint64_t next_fid;          /* 0: not read from meta yet */
	bool fid_dirty;
};

static void wctx_begin(struct store *s, struct wctx *w)
{
	memset(w, 0, sizeof(*w));
	w->now_s = (uint64_t)time(NULL);
	stxn_begin(s, &w->t, true);
}

static uint64_t wctx_new_fid(struct wctx *w)
{
	uint8_t v[8];

	if (!w->next_fid) {
		if (stxn_get(&w->t, SDB_META, STORE_META_NEXT_FID,
			     STORE_KEYLEN(STORE_META_NEXT_FID), v, sizeof(v)))
			w->next_fid = store_get64(v);
		if (!w->next_fid)
			w->next_fid = 1;        /* fid 0 means "none" */
	}
	w->fid_dirty = true;
	return w->next_fid++;
}

static int wctx_commit(struct wctx *w)
{
	uint8_t v[8];

	if (w->fid_dirty) {
		store_be64(v, w->next_fid);
		stxn_put(&w->t, SDB_META, STORE_META_NEXT_FID,
			 STORE_KEYLEN(STORE_META_NEXT_FID), v, sizeof(v));
	}
	return stxn_commit(&w->t);
}

/* ---- records ---- */

static void fps_ref(struct wctx *w, const struct store_fp *fp, uint64_t fid,
		    uint64_t index)
{
	uint8_t k[STORE_FP_KEY], v[STORE_FP_VAL];

	store_fp_enc(k, fp);
	if (stxn_get(&w->t, SDB_FPS, k, sizeof(k), v, sizeof(v))) {
		store_be64(v, store_get64(v) + 1);
		if (store_get64(v + 8) == STORE_WHERE_NONE)
			store_key2(v + 8, fid, index);
	} else {
		store_be64(v, 1);
		store_key2(v + 8, fid, index);
	}
	stxn_put(&w->t, SDB_FPS, k, sizeof(k), v, sizeof(v));
}

static void fps_unref(struct wctx *w, const struct store_fp *fp, uint64_t fid,
		      uint64_t index)
{
	uint8_t k[STORE_FP_KEY], v[STORE_FP_VAL];
	uint64_t refs;

	store_fp_enc(k, fp);
	if (!stxn_get(&w->t, SDB_FPS, k, sizeof(k), v, sizeof(v)))
		return;
	refs = store_get64(v);
	if (refs <= 1) {
		stxn_del(&w->t, SDB_FPS, k, sizeof(k));
		return;
	}
	store_be64(v, refs - 1);
	if (store_get64(v + 8) == fid && store_get64(v + 16) == index) {
		store_be64(v + 8, STORE_WHERE_NONE);
		store_be64(v + 16, STORE_WHERE_NONE);
	}
	stxn_put(&w->t, SDB_FPS, k, sizeof(k), v, sizeof(v));
}

static void page_set(struct wctx *w, uint64_t fid, uint64_t index,
		     const struct store_fp *fp)
{
	uint8_t k[STORE_PAGE_KEY], v[STORE_PAGE_VAL];
	struct store_fp old;

	store_key2(k, fid, index);
	if (stxn_get(&w->t, SDB_PAGES, k, sizeof(k), v, sizeof(v))) {
		store_fp_dec(v, &old);
		if (store_fp_same(&old, fp))
			return;
		fps_unref(w, &old, fid, index);
	}
	store_fp_enc(v, fp);
	stxn_put(&w->t, SDB_PAGES, k, sizeof(k), v, sizeof(v));
	fps_ref(w, fp, fid, index);
}

/*
 * Drop up to limit pages of fid in [*from, end); *from moves past the
 * last one dropped, to end when none is left. Re-seeking after each
 * delete keeps this independent of how LMDB moves a cursor under a delete.
 */
static uint64_t page_drop_some(struct wctx *w, uint64_t fid, uint64_t *from,
			       uint64_t end, uint64_t limit)
{
	uint8_t k[STORE_PAGE_KEY], v[STORE_PAGE_VAL];
	struct store_fp fp;
	uint64_t index, n = 0;

	store_key2(k, fid, *from);
	while (*from < end && n < limit &&
	       stxn_seek(&w->t, SDB_PAGES, MDB_SET_RANGE, k, sizeof(k), v,
			 sizeof(v))) {
		index = store_get64(k + 8);
		if (store_get64(k) != fid || index >= end)
			break;
		if (index < *from) {
			/* Below what we asked for: a misordered tree. */
			stxn_fail(&w->t, MDB_CORRUPTED);
			break;
		}
		store_fp_dec(v, &fp);
		fps_unref(w, &fp, fid, index);
		stxn_del(&w->t, SDB_PAGES, k, sizeof(k));
		n++;
		*from = index == UINT64_MAX ? end : index + 1;
		store_key2(k, fid, *from);
	}
	if (n < limit)
		*from = end;
	return n;
}

static uint64_t page_drop(struct wctx *w, uint64_t fid, uint64_t first,
			  uint64_t end)
{
	return page_drop_some(w, fid, &first, end, UINT64_MAX);
}

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
	uint64_t n = page_drop(w, r->fid, 0, UINT64_MAX);

	store_key2(k, dev, ino);
	stxn_del(&w->t, SDB_FILES, k, sizeof(k));
	return n;
}

/* ---- applying queued updates ---- */

static void apply_put(struct wctx *w, const struct store_op *op)
{
	struct store_file_rec r;

	if (!file_get(w, op->id.dev, op->id.ino, &r)) {
		r.fid = wctx_new_fid(w);
		r.last_used_s = w->now_s;
		file_put(w, &op->id, &r);
	} else if (!store_file_is(&r, &op->id)) {
		/* Changed outside the mount: the old fingerprints are
		 * worthless. The id stays, so no holder of it can see
		 * another file's pages. */
		page_drop(w, r.fid, 0, UINT64_MAX);
		r.last_used_s = w->now_s;
		file_put(w, &op->id, &r);
	}
	page_set(w, r.fid, op->a, &op->fp);
}

static void apply_changed(struct wctx *w, const struct store_op *op)
{
	uint64_t end = op->b > UINT64_MAX - op->a ? UINT64_MAX : op->a + op->b;
	uint64_t tail = op->id.size / STORE_PAGE_SIZE +
			!!(op->id.size % STORE_PAGE_SIZE);
	struct store_file_rec r;

	if (!file_get(w, op->id.dev, op->id.ino, &r))
		return;
	page_drop(w, r.fid, op->a, end);
	/* Pages past the new end of the file are gone as well. */
	page_drop(w, r.fid, tail, UINT64_MAX);
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
 * Pruning runs in steps of at most STORE_PRUNE_STEP deletions, each its
 * own transaction: a delete copies the pages it touches, and with the map
 * full a large step would not fit. A step that does not fit is retried at
 * half the size, down to one deletion.
 */
#define STORE_PRUNE_STEP 512u

struct pruner {
	struct store *s;
	uint64_t goal;          /* pages records to drop */
	uint64_t done;
	uint64_t step;
};

/* Commit a step and say whether enough is dropped; *retry when the step
 * should be tried again smaller. */
static enum prune_result prune_commit(struct pruner *p, struct wctx *w,
				      uint64_t n, bool *retry)
{
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
	atomic_fetch_add(&p->s->pruned_pages, n);
	p->done += n;
	return p->done >= p->goal ? PRUNE_DONE : PRUNE_MORE;
}

/* Drop the pages of fid that share their content with no other page. */
static enum prune_result prune_unique(struct pruner *p, uint64_t fid)
{
	uint8_t k[STORE_PAGE_KEY], v[STORE_PAGE_VAL];
	uint8_t fk[STORE_FP_KEY], fv[STORE_FP_VAL];
	enum prune_result res;
	uint64_t index, next = 0, from, n;
	bool more = true, retry;
	struct wctx w;

	while (more) {
		more = false;
		n = 0;
		from = next;
		wctx_begin(p->s, &w);
		store_key2(k, fid, next);
		while (stxn_seek(&w.t, SDB_PAGES, MDB_SET_RANGE, k, sizeof(k),
				 v, sizeof(v))) {
			index = store_get64(k + 8);
			if (store_get64(k) != fid)
				break;
			if (index < next) {
				stxn_fail(&w.t, MDB_CORRUPTED);
				break;
			}
			memcpy(fk, v, sizeof(fk));      /* same encoding */
			if (stxn_get(&w.t, SDB_FPS, fk, sizeof(fk), fv,
				     sizeof(fv)) && store_get64(fv) <= 1) {
				stxn_del(&w.t, SDB_FPS, fk, sizeof(fk));
				stxn_del(&w.t, SDB_PAGES, k, sizeof(k));
				n++;
			}
			if (index == UINT64_MAX)
				break;
			next = index + 1;
			store_key2(k, fid, next);
			if (n >= p->step || p->done + n >= p->goal) {
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

/* Drop a whole file, its pages first. */
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
		n = page_drop_some(&w, f->fid, &next, UINT64_MAX,
				   p->step < p->goal - p->done ?
				   p->step : p->goal - p->done);
		if (next == UINT64_MAX) {
			store_key2(k, f->dev, f->ino);
			stxn_del(&w.t, SDB_FILES, k, sizeof(k));
		}
		res = prune_commit(p, &w, n, &retry);
		if (retry) {
			next = from;
			continue;
		}
		if (res != PRUNE_MORE || next == UINT64_MAX)
			return res;
	}
}

/*
 * Drop (100 - STORE_PRUNE_LOW)% of the pages records, least useful first.
 * Counted in records, not bytes: LMDB does not compact, so deleting
 * records scattered over the fingerprint tree frees few whole pages; it
 * leaves room inside them, which is what the next records fill.
 */
static void store_prune(struct store *s)
{
	struct pruner p = { s, 0, 0, STORE_PRUNE_STEP };
	enum prune_result res = PRUNE_MORE;
	struct prune_file *files;
	struct stxn t;
	size_t n, i;

	stxn_begin(s, &t, false);
	s->prune_mark = stxn_entries(&t, SDB_PAGES);
	stxn_abort(&t);
	p.goal = s->prune_mark / 100 * (100 - STORE_PRUNE_LOW) + 1;
	files = prune_list(s, &n);
	for (i = 0; i < n && res == PRUNE_MORE; i++)
		res = prune_unique(&p, files[i].fid);
	for (i = 0; i < n && res == PRUNE_MORE; i++)
		res = prune_whole(&p, &files[i]);
	free(files);
}

/* Last resort at the quota: forget every file (meta stays). */
static int store_empty(struct store *s)
{
	static const enum store_db dbs[] = { SDB_FILES, SDB_PAGES, SDB_FPS };
	uint64_t pages;
	struct stxn t;
	int rc, ret;

	stxn_begin(s, &t, true);
	pages = stxn_entries(&t, SDB_PAGES);
	for (size_t i = 0; i < sizeof(dbs) / sizeof(dbs[0]) && !t.rc; i++) {
		rc = mdb_drop(t.txn, s->dbi[dbs[i]], 0);
		if (rc)
			stxn_fail(&t, rc);
	}
	ret = stxn_commit(&t);
	if (!ret) {
		atomic_fetch_add(&s->commits, 1);
		atomic_fetch_add(&s->pruned_pages, pages);
	}
	return ret;
}

/*
 * Prune before the map is full where we can: in a large store, a batch
 * copies a small share of the pages and the live ones can come close.
 * Not again until the records we dropped have been replaced, though:
 * their room is inside pages that still count as live.
 */
static void store_check_quota(struct store *s)
{
	struct stxn t;
	uint64_t used, pages;

	stxn_begin(s, &t, false);
	used = stxn_used_bytes(&t);
	pages = stxn_entries(&t, SDB_PAGES);
	stxn_abort(&t);
	if (used > s->quota / 100 * STORE_PRUNE_HIGH && pages >= s->prune_mark)
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

static void store_run_batch(struct store *s, const struct store_queue *b,
			    uint64_t first_seq)
{
	size_t off, n;

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
