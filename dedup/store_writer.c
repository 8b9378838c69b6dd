/*
 * store_writer: the one thread that writes the store (LMDB allows one
 * writer). It takes the queue in one swap, applies it in transactions of
 * at most STORE_BATCH updates (store_apply.c), and keeps the store inside
 * its quota (store_prune.c).
 *
 * Puts between two other updates are applied sorted: the pages that
 * bring their own digest first, each file's in page order, so that a run
 * grows in page order; then those that point at another page, in the
 * order they were queued. That order, not the pages', keeps a reference
 * recorded before the pages that point at it: the reference may itself
 * be a page that points elsewhere (the mount names any recorded mapper
 * of a shared frame), queued before them but of a file that sorts after.
 * A page joins the recipes on both sides of it, so a copy's recipe
 * comes out whole in either order.
 *
 * A full map is grown (doubled, up to the quota) and the batch retried;
 * at the quota the store is pruned. If a batch still does not fit, it is
 * split; if one update does not, the store is emptied. Any other failure
 * pauses persistence (store_pause).
 */
#include "store_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- map growth ---- */

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

/* ---- batches ---- */

/* One transaction for ops[0, n). 0, or -errno once persistence paused. */
static int store_commit_batch(struct store *s, const struct store_op *ops,
			      size_t n)
{
	bool pruned = false, emptied = false;
	struct wctx w;
	int ret, rc;

	for (;;) {
		wctx_begin(s, &w);
		for (size_t i = 0; i < n && !w.t.rc; i++)
			wctx_apply(&w, &ops[i]);
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
				ret = store_commit_batch(s, ops, n / 2);
				if (!ret)
					ret = store_commit_batch(s,
						ops + n / 2, n - n / 2);
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
			ret = store_commit_batch(s, ops, n / 2);
			if (!ret)
				ret = store_commit_batch(s, ops + n / 2,
							 n - n / 2);
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
	if (a->has_ref)
		return a->order < b->order ? -1 : a->order > b->order;
	if (a->id.dev != b->id.dev)
		return a->id.dev < b->id.dev ? -1 : 1;
	if (a->id.ino != b->id.ino)
		return a->id.ino < b->id.ino ? -1 : 1;
	if (a->a != b->a)
		return a->a < b->a ? -1 : 1;
	return a->order < b->order ? -1 : a->order > b->order;
}

/* Sort each stretch of puts in ops[0, n) (see the top of this file);
 * other updates stay where they are. Puts of one page keep their order
 * but for a page's own digest, which goes before a put pointing it
 * elsewhere even if queued after it: the page still ends up where it
 * would have, at the cost of that digest stored unused until its run
 * goes. */
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
		if (store_commit_batch(s, b->ops + off, n))
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

static void mask_forever(uint64_t fid, uint64_t *until, void *arg)
{
	(void)fid, (void)arg;
	*until = STORE_SEQ_NEVER;
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
	u64map_each(&s->masks, mask_forever, NULL);
	if (s->mask_all > s->done_seq)
		s->mask_all = STORE_SEQ_NEVER;
	s->q.len = 0;
	s->done_seq = s->q_seq;
	pthread_cond_broadcast(&s->q_done);
	pthread_mutex_unlock(&s->q_lock);
	fprintf(stderr, "samepagefs: state store: %s: %s: %s: persistence "
		"paused\n", s->name, what, strerror(-err));
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
