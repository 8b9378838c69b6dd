/*
 * store_queue: the updates of the store, queued on the caller's thread for
 * the writer thread (store_writer.c), and the masks that keep the
 * fingerprints an update makes wrong from being read until it commits.
 * See store.h for the contract, store_i.h for the locking and the masks.
 */
#include "store_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- masks (q_lock held) ---- */

static void mask_add(struct store *s, uint64_t fid, uint64_t seq)
{
	uint64_t *until = u64map_put(&s->masks, fid, seq, NULL);

	if (!until) {
		/* No memory for the table: mask everything instead. */
		if (s->mask_all < seq)
			s->mask_all = seq;
		return;
	}
	if (*until < seq)
		*until = seq;
}

static bool mask_pending(uint64_t fid, uint64_t until, void *arg)
{
	const struct store *s = arg;

	(void)fid;
	return until > s->done_seq;
}

void store_masks_lift(struct store *s)
{
	if (s->mask_all && s->mask_all <= s->done_seq)
		s->mask_all = 0;
	/* Without memory to rebuild the table, the masks are lifted
	 * later: masking longer is safe. */
	u64map_filter(&s->masks, mask_pending, s);
}

bool store_masked(struct store *s, uint64_t fid)
{
	bool masked;

	pthread_mutex_lock(&s->q_lock);
	masked = (s->mask_all && s->mask_all > s->done_seq) ||
		 u64map_find(&s->masks, fid);
	pthread_mutex_unlock(&s->q_lock);
	return masked;
}

/* ---- the queue ---- */

/* Queue op; 0 and *seq, or -ENOMEM. Invalidating updates (must) may use
 * twice the bound: dropping one would cost persistence, not just a page.
 * q_lock held. */
static int store_enqueue(struct store *s, const struct store_op *op,
			 bool must, uint64_t *seq)
{
	size_t limit = must ? 2 * (size_t)STORE_QUEUE_MAX : STORE_QUEUE_MAX;
	struct store_op *ops;
	size_t cap;

	if (s->q.len >= limit) {
		atomic_fetch_add(&s->queue_full, 1);
		return -ENOMEM;
	}
	if (s->q.len == s->q.cap) {
		cap = s->q.cap ? s->q.cap * 2 : 1024;
		ops = realloc(s->q.ops, cap * sizeof(*ops));
		if (!ops)
			return -ENOMEM;
		s->q.ops = ops;
		s->q.cap = cap;
	}
	s->q.ops[s->q.len++] = *op;
	*seq = ++s->q_seq;
	/* Wake the writer when its 100 ms clock starts and when a batch is
	 * full; in between it sleeps. */
	if (s->q.len == 1) {
		clock_gettime(CLOCK_MONOTONIC, &s->q_first);
		pthread_cond_signal(&s->q_wake);
	} else if (s->q.len == STORE_BATCH) {
		pthread_cond_signal(&s->q_wake);
	}
	return 0;
}

static bool store_accepts(const struct store *s)
{
	return s->writer_started && !s->paused && !s->stop;
}

/* Queue a plain update; 0 without queueing when not persisting. */
int store_queue_op(struct store *s, const struct store_op *op)
{
	uint64_t seq;
	int ret = 0;

	pthread_mutex_lock(&s->q_lock);
	if (store_accepts(s))
		ret = store_enqueue(s, op, false, &seq);
	pthread_mutex_unlock(&s->q_lock);
	return ret;
}

/* The file id of (dev, ino): 0 and *fid (0 if no record), or -errno. */
static int store_lookup_fid(struct store *s, uint64_t dev, uint64_t ino,
			    uint64_t *fid)
{
	uint8_t k[STORE_FILE_KEY], v[STORE_FILE_VAL];
	struct stxn t;
	int rc;

	*fid = 0;
	if (!s->env || !s->have_dbs)
		return 0;
	store_key2(k, dev, ino);
	stxn_begin(s, &t, false);
	if (stxn_get(&t, SDB_FILES, k, sizeof(k), v, sizeof(v)))
		*fid = store_get64(v);
	rc = t.rc;
	stxn_abort(&t);
	return store_errno(rc);
}

/* Queue an update that makes stored fingerprints of the file wrong, and
 * mask the file until it commits (for good if it never will). */
static int store_invalidate(struct store *s, const struct store_op *op)
{
	uint64_t fid, seq = STORE_SEQ_NEVER;
	int found, ret = 0;

	found = store_lookup_fid(s, op->id.dev, op->id.ino, &fid);
	pthread_mutex_lock(&s->q_lock);
	if (store_accepts(s)) {
		ret = store_enqueue(s, op, true, &seq);
		if (ret)
			seq = STORE_SEQ_NEVER;
	}
	if (found < 0) {
		/* Could not tell which id: mask them all. */
		if (s->mask_all < seq)
			s->mask_all = seq;
	} else if (fid) {
		mask_add(s, fid, seq);
	}
	pthread_mutex_unlock(&s->q_lock);
	return ret;
}

/* ---- updates ---- */

int store_put_page(struct store *s, const struct store_ident *id,
		   uint64_t index, const uint8_t *sha256,
		   const struct store_ident *ref, uint64_t ref_index)
{
	struct store_op op = { .kind = SOP_PUT, .id = *id, .a = index };

	if (sha256)
		memcpy(op.sha256, sha256, STORE_SHA256_LEN);
	else
		op.zero = true;
	if (ref) {
		op.has_ref = true;
		op.ref = *ref;
		op.b = ref_index;
	}
	return store_queue_op(s, &op);
}

int store_file_changed(struct store *s, uint64_t dev, uint64_t ino,
		       const struct store_ident *now, uint64_t first,
		       uint64_t n)
{
	struct store_op op = { .kind = SOP_CHANGED, .id = *now, .a = first,
			       .b = n };

	op.id.dev = dev;
	op.id.ino = ino;
	return store_invalidate(s, &op);
}

int store_forget_file(struct store *s, uint64_t dev, uint64_t ino)
{
	struct store_op op = { .kind = SOP_FORGET };

	op.id.dev = dev;
	op.id.ino = ino;
	return store_invalidate(s, &op);
}

int store_sync(struct store *s)
{
	uint64_t target;
	int ret;

	pthread_mutex_lock(&s->q_lock);
	if (s->writer_started) {
		target = s->q_seq;
		s->sync_req = true;
		pthread_cond_signal(&s->q_wake);
		while (s->done_seq < target)
			pthread_cond_wait(&s->q_done, &s->q_lock);
	}
	ret = s->paused ? s->pause_err : 0;
	pthread_mutex_unlock(&s->q_lock);
	return ret;
}
