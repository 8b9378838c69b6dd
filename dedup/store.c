/*
 * store: the reads made on the caller's thread, each a short read-only
 * transaction: a file's identity (store_file_match), the records of its
 * pages (store_get_recs) and whether any holds content
 * (store_file_has_content), the pass that finds the files gone
 * (store_prune_missing) and the statistics. See store.h for the schema
 * and the contract, store_i.h for the locking. Opening and closing are in
 * store_open.c, queueing updates in store_queue.c, committing them in
 * store_writer.c.
 */
#include "store_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int store_file_match(struct store *s, const struct store_ident *id,
		     uint64_t *file_id)
{
	uint8_t k[STORE_FILE_KEY], v[STORE_FILE_VAL];
	struct store_file_rec r;
	struct store_op op = { .id = *id };
	uint64_t now;
	struct stxn t;
	bool found;
	int rc;

	if (!s->env || !s->have_dbs)
		return -ENOENT;
	store_key2(k, id->dev, id->ino);
	stxn_begin(s, &t, false);
	found = stxn_get(&t, SDB_FILES, k, sizeof(k), v, sizeof(v));
	rc = t.rc;
	stxn_abort(&t);
	if (rc)
		return store_errno(rc);
	if (!found)
		return -ENOENT;
	store_file_dec(v, &r);
	if (!store_file_is(&r, id)) {
		/* Dropped through the queue; if it is full, the next match
		 * tries again. */
		op.kind = SOP_FORGET_STALE;
		store_queue_op(s, &op);
		return -ESTALE;
	}
	*file_id = r.fid;
	now = (uint64_t)time(NULL);
	if (r.last_used_s + STORE_TOUCH_S <= now) {
		op.kind = SOP_TOUCH;
		op.a = now;
		store_queue_op(s, &op);
	}
	return 0;
}

/* Where the groups of one store_get_recs() call came from. */
#define STORE_RECS_GROUPS 256u

struct recs_groups {
	uint64_t run[STORE_RECS_GROUPS], chunk[STORE_RECS_GROUPS];
	uint32_t g[STORE_RECS_GROUPS];
};

/* The index of group g of chunk c (decoded in ch) in groups, added if
 * new; -1 if there is no room. */
static int recs_group(struct recs_groups *from, struct store_group *groups,
		      unsigned *used, unsigned room, uint64_t run,
		      uint64_t c, uint32_t g, const struct store_chunk *ch)
{
	for (unsigned i = *used; i-- > 0;)
		if (from->run[i] == run && from->chunk[i] == c &&
		    from->g[i] == g)
			return (int)i;
	if (*used >= room)
		return -1;
	from->run[*used] = run;
	from->chunk[*used] = c;
	from->g[*used] = g;
	memcpy(groups[*used].tag, ch->tag[g * STORE_GROUP],
	       sizeof(groups[*used].tag));
	memcpy(groups[*used].digest, ch->gdigest[g], STORE_SHA256_LEN);
	return (int)(*used)++;
}

/* Load chunk c of run into ch unless it is there already (*have). */
static bool recs_chunk(struct stxn *t, uint64_t run, uint64_t c,
		       struct store_chunk *ch, uint64_t have[2])
{
	uint8_t k[STORE_CHUNK_KEY], v[STORE_CHUNK_MAX];
	size_t len;

	if (have[0] == run && have[1] == c)
		return true;
	store_key2(k, run, c);
	if (!stxn_getv(t, SDB_CHUNKS, k, sizeof(k), v, sizeof(v), &len) ||
	    !store_chunk_dec(v, len, ch)) {
		/* A recipe into entries that are not there. */
		stxn_fail(t, MDB_CORRUPTED);
		return false;
	}
	have[0] = run;
	have[1] = c;
	return true;
}

int store_get_recs(struct store *s, uint64_t file_id, uint64_t first,
		   unsigned n, struct store_rec *recs,
		   struct store_group *groups, unsigned *ngroups)
{
	unsigned room = *ngroups < STORE_RECS_GROUPS ? *ngroups
						      : STORE_RECS_GROUPS;
	struct recs_groups *from;
	struct store_chunk *ch;
	struct store_recipe r;
	uint64_t end, next = first, have[2] = { 0, UINT64_MAX };
	unsigned used = 0;
	struct stxn t;
	int rc;

	memset(recs, 0, n * sizeof(*recs));
	*ngroups = 0;
	if (!n || !s->env || !s->have_dbs)
		return 0;
	/* Before the snapshot is taken: see store_i.h. */
	if (store_masked(s, file_id))
		return 0;
	from = malloc(sizeof(*from) + sizeof(*ch));
	if (!from)
		return -ENOMEM;
	ch = (struct store_chunk *)(from + 1);
	end = first > UINT64_MAX - n ? UINT64_MAX : first + n;
	stxn_begin(s, &t, false);
	while (next < end && store_recipe_find(&t, file_id, next, &r) &&
	       r.first < end) {
		uint64_t i = r.first > first ? r.first : first;
		uint64_t stop = r.first + r.count < end ? r.first + r.count
							 : end;

		for (; i < stop && !t.rc; i++) {
			struct store_rec *rec = &recs[i - first];
			uint64_t off = r.off + (i - r.first);
			uint32_t e = (uint32_t)(off % STORE_CHUNK), g;
			int gi;

			if (r.run == STORE_RUN_ZERO) {
				rec->kind = STORE_REC_ZERO;
				continue;
			}
			if (!recs_chunk(&t, r.run, off / STORE_CHUNK, ch, have))
				break;
			if (e >= ch->n) {
				stxn_fail(&t, MDB_CORRUPTED);
				break;
			}
			g = e / STORE_GROUP;
			if (g < ch->n / STORE_GROUP) {
				gi = recs_group(from, groups, &used, room,
						r.run, off / STORE_CHUNK, g, ch);
				if (gi < 0)
					continue;       /* no room: none */
				rec->kind = STORE_REC_GROUP;
				rec->group = (uint16_t)gi;
				rec->member = (uint8_t)(e % STORE_GROUP);
				memcpy(rec->sha256, ch->tag[e], STORE_TAG_LEN);
			} else {
				rec->kind = STORE_REC_DIGEST;
				memcpy(rec->sha256,
				       ch->open[e % STORE_GROUP],
				       STORE_SHA256_LEN);
			}
		}
		next = r.first + r.count;
		if (next <= r.first)
			break;                  /* wrapped: the last page */
	}
	rc = t.rc;
	stxn_abort(&t);
	free(from);
	if (rc) {
		memset(recs, 0, n * sizeof(*recs));
		return store_errno(rc);
	}
	*ngroups = used;
	return 0;
}

/* Recipes looked at before store_file_has_content() gives up. */
#define CONTENT_WALK 4096u

int store_file_has_content(struct store *s, uint64_t file_id)
{
	uint8_t k[STORE_RECIPE_KEY], v[STORE_RECIPE_VAL];
	MDB_cursor_op op = MDB_SET_RANGE;
	struct store_recipe r;
	unsigned walked = 0;
	int found = 0;
	struct stxn t;

	if (!s->env || !s->have_dbs || store_masked(s, file_id))
		return 0;
	store_key2(k, file_id, 0);
	stxn_begin(s, &t, false);
	while (stxn_seek(&t, SDB_RECIPES, op, k, sizeof(k), v, sizeof(v)) &&
	       store_get64(k) == file_id) {
		op = MDB_NEXT;
		store_recipe_dec(k, v, &r);
		/* So many zero recipes: too long to tell, say yes. */
		if (r.run != STORE_RUN_ZERO || ++walked >= CONTENT_WALK) {
			found = 1;
			break;
		}
	}
	if (t.rc)
		found = store_errno(t.rc);
	stxn_abort(&t);
	return found;
}

#define PRUNE_CHUNK 1024u

int store_prune_missing(struct store *s, store_exists_cb exists, void *arg)
{
	uint8_t k[STORE_FILE_KEY] = { 0 }, v[STORE_FILE_VAL];
	uint8_t start[STORE_FILE_KEY];
	uint64_t dev[PRUNE_CHUNK], ino[PRUNE_CHUNK];
	MDB_cursor_op op;
	unsigned n, i;
	struct stxn t;
	int rc;

	if (!s->env || !s->have_dbs)
		return 0;
	/* In chunks: the callback may be slow (it stats files) and must
	 * not run inside a read transaction, which would hold off resizes. */
	for (;;) {
		n = 0;
		op = MDB_SET_RANGE;
		memcpy(start, k, sizeof(k));
		stxn_begin(s, &t, false);
		while (n < PRUNE_CHUNK && stxn_seek(&t, SDB_FILES, op, k,
						    sizeof(k), v, sizeof(v))) {
			op = MDB_NEXT;
			if (memcmp(k, start, sizeof(k)) < 0) {
				/* Misordered: going on could loop. */
				stxn_fail(&t, MDB_CORRUPTED);
				break;
			}
			dev[n] = store_get64(k);
			ino[n] = store_get64(k + 8);
			n++;
		}
		rc = t.rc;
		stxn_abort(&t);
		if (rc)
			return store_errno(rc);
		for (i = 0; i < n; i++)
			if (!exists(arg, dev[i], ino[i]))
				store_forget_file(s, dev[i], ino[i]);
		if (n < PRUNE_CHUNK)
			return 0;
		/* Resume after the last key seen. */
		if (ino[n - 1] != UINT64_MAX) {
			store_key2(k, dev[n - 1], ino[n - 1] + 1);
		} else if (dev[n - 1] != UINT64_MAX) {
			store_key2(k, dev[n - 1] + 1, 0);
		} else {
			return 0;
		}
	}
}

static uint64_t store_meta_u64(struct stxn *t, const char *key)
{
	uint8_t v[8];

	if (!stxn_get(t, SDB_META, key, strlen(key), v, sizeof(v)))
		return 0;
	return store_get64(v);
}

void store_get_stats(struct store *s, struct store_stats *st)
{
	struct stxn t;

	memset(st, 0, sizeof(*st));
	st->quota_bytes = s->quota;
	st->commits = atomic_load(&s->commits);
	st->commit_errors = atomic_load(&s->commit_errors);
	st->pruned_pages = atomic_load(&s->pruned_pages);
	st->queue_full = atomic_load(&s->queue_full);
	pthread_mutex_lock(&s->q_lock);
	st->paused = s->paused;
	pthread_mutex_unlock(&s->q_lock);
	if (!s->env)
		return;
	stxn_begin(s, &t, false);
	st->bytes = stxn_used_bytes(&t);
	if (s->have_dbs) {
		st->files = stxn_entries(&t, SDB_FILES);
		st->recipes = stxn_entries(&t, SDB_RECIPES);
		st->runs = stxn_entries(&t, SDB_RUNS);
		st->pages = store_meta_u64(&t, STORE_META_PAGES);
		st->distinct = store_meta_u64(&t, STORE_META_DIGESTS);
	}
	stxn_abort(&t);
	st->dup_pages = st->pages > st->distinct ? st->pages - st->distinct : 0;
}
