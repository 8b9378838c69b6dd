/*
 * store: opening and closing the LMDB store, and the calls made on the
 * caller's thread: the read path (store_file_match, store_get_fps, stats)
 * and queueing updates for the writer thread (store_writer.c), with the
 * masks that keep invalidated fingerprints from being read meanwhile. See
 * store.h for the schema and the contract, store_i.h for the locking.
 *
 * One daemon owns a state directory at a time: it holds an exclusive
 * flock() on the directory while the store is open. That is what lets
 * store_open() check data.mdb before LMDB maps it (nobody is writing it)
 * and remove it when asked to rebuild (nobody is using it).
 */
#include "store_i.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- masks (q_lock held) ---- */

static size_t mask_slot(uint64_t fid, size_t cap)
{
	return (size_t)((fid * 0x9E3779B97F4A7C15ull) >> 17) & (cap - 1);
}

static struct store_mask *mask_find(struct store *s, uint64_t fid)
{
	size_t i;

	if (!s->mask_len)
		return NULL;
	for (i = mask_slot(fid, s->mask_cap); s->masks[i].fid;
	     i = (i + 1) & (s->mask_cap - 1))
		if (s->masks[i].fid == fid)
			return &s->masks[i];
	return NULL;
}

static void mask_insert(struct store_mask *tab, size_t cap, uint64_t fid,
			uint64_t seq)
{
	size_t i = mask_slot(fid, cap);

	while (tab[i].fid)
		i = (i + 1) & (cap - 1);
	tab[i] = (struct store_mask){ fid, seq };
}

/* Rebuild the table with room for want entries, keeping those that keep. */
static int mask_rehash(struct store *s, size_t want, bool lift)
{
	size_t cap = 16, len = 0;
	struct store_mask *tab;

	while (cap < want * 2)
		cap *= 2;
	tab = calloc(cap, sizeof(*tab));
	if (!tab)
		return -ENOMEM;
	for (size_t i = 0; i < s->mask_cap; i++) {
		struct store_mask *m = &s->masks[i];

		if (!m->fid || (lift && m->seq <= s->done_seq))
			continue;
		mask_insert(tab, cap, m->fid, m->seq);
		len++;
	}
	free(s->masks);
	s->masks = tab;
	s->mask_cap = cap;
	s->mask_len = len;
	return 0;
}

static void mask_add(struct store *s, uint64_t fid, uint64_t seq)
{
	struct store_mask *m = mask_find(s, fid);

	if (m) {
		if (m->seq < seq)
			m->seq = seq;
		return;
	}
	if ((s->mask_len + 1) * 2 > s->mask_cap &&
	    mask_rehash(s, s->mask_len + 1, false)) {
		/* No memory for the table: mask everything instead. */
		if (s->mask_all < seq)
			s->mask_all = seq;
		return;
	}
	mask_insert(s->masks, s->mask_cap, fid, seq);
	s->mask_len++;
}

void store_masks_lift(struct store *s)
{
	size_t keep = 0;

	if (s->mask_all && s->mask_all <= s->done_seq)
		s->mask_all = 0;
	if (!s->mask_len)
		return;
	for (size_t i = 0; i < s->mask_cap; i++)
		if (s->masks[i].fid && s->masks[i].seq > s->done_seq)
			keep++;
	if (keep == s->mask_len)
		return;
	if (!keep) {
		memset(s->masks, 0, s->mask_cap * sizeof(*s->masks));
		s->mask_len = 0;
		return;
	}
	if (mask_rehash(s, keep, true))
		return;         /* lifted later, masking longer is safe */
}

static bool store_masked(struct store *s, uint64_t fid)
{
	bool masked;

	pthread_mutex_lock(&s->q_lock);
	masked = (s->mask_all && s->mask_all > s->done_seq) ||
		 mask_find(s, fid);
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
static int store_queue_op(struct store *s, const struct store_op *op)
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

/* ---- caller-side API ---- */

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

/* ---- open and close ---- */

static const char *const store_db_names[SDB_COUNT] = {
	[SDB_META] = "meta",
	[SDB_FILES] = "files",
	[SDB_RECIPES] = "recipes",
	[SDB_RUNS] = "runs",
	[SDB_CHUNKS] = "chunks",
};

#define STORE_MAX_READERS 512
/* How long store_open waits for another opener to let go (50 ms steps). */
#define STORE_LOCK_TRIES 40

static int store_alloc(const char *dir, uint64_t quota, bool readonly,
		       struct store **out)
{
	pthread_rwlockattr_t rwa;
	pthread_condattr_t ca;
	struct store *s;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dir = strdup(dir);
	if (!s->dir) {
		free(s);
		return -ENOMEM;
	}
	s->dir_fd = -1;
	s->readonly = readonly;
	if (!quota)
		quota = STORE_DEFAULT_QUOTA;
	if (quota < STORE_QUOTA_MIN)
		quota = STORE_QUOTA_MIN;
	s->quota = quota & ~(uint64_t)(STORE_PAGE_SIZE - 1);
	s->psize = STORE_PAGE_SIZE;
	/* Prefer the resizer: a steady stream of readers must not starve
	 * the writer thread waiting to grow the map. */
	pthread_rwlockattr_init(&rwa);
	pthread_rwlockattr_setkind_np(&rwa,
		PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&s->map_lock, &rwa);
	pthread_rwlockattr_destroy(&rwa);
	pthread_mutex_init(&s->q_lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->q_wake, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&s->q_done, NULL);
	*out = s;
	return 0;
}

static void store_close_env(struct store *s)
{
	if (s->env)
		mdb_env_close(s->env);
	s->env = NULL;
	s->have_dbs = false;
}

static void store_free(struct store *s)
{
	store_close_env(s);
	if (s->dir_fd >= 0)
		close(s->dir_fd);       /* releases the flock */
	pthread_rwlock_destroy(&s->map_lock);
	pthread_mutex_destroy(&s->q_lock);
	pthread_cond_destroy(&s->q_wake);
	pthread_cond_destroy(&s->q_done);
	free(s->q.ops);
	free(s->masks);
	free(s->dir);
	free(s);
}

/* mkdir -p, each missing component mode 0700. */
static int store_mkdir_p(const char *dir)
{
	struct stat st;
	char *path, *p;
	int ret = 0;

	if (!*dir)
		return -ENOENT;
	path = strdup(dir);
	if (!path)
		return -ENOMEM;
	for (p = strchr(path + 1, '/'); p && !ret; p = strchr(p + 1, '/')) {
		*p = '\0';
		if (mkdir(path, 0700) && errno != EEXIST)
			ret = -errno;
		*p = '/';
	}
	if (!ret && mkdir(path, 0700) && errno != EEXIST)
		ret = -errno;
	free(path);
	/* A component we could not create matters only if the directory
	 * itself is not there (e.g. it exists on a read-only mount). */
	if (!stat(dir, &st))
		return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	return ret ? ret : -errno;
}

static int store_lock_dir(struct store *s, bool exclusive, bool wait)
{
	int op = (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB;

	s->dir_fd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dir_fd < 0)
		return -errno;
	for (int i = 0; i < STORE_LOCK_TRIES; i++) {
		if (!flock(s->dir_fd, op))
			return 0;
		if (errno != EWOULDBLOCK)
			return -errno;
		if (!wait)
			break;
		usleep(50 * 1000);
	}
	return -EBUSY;
}

static int store_path(const struct store *s, const char *name, char *buf,
		      size_t len)
{
	if ((size_t)snprintf(buf, len, "%s/%s", s->dir, name) >= len)
		return -ENAMETOOLONG;
	return 0;
}

static int store_remove_files(struct store *s)
{
	static const char *const names[] = { "data.mdb", "lock.mdb" };
	char path[PATH_MAX];
	int ret;

	for (size_t i = 0; i < 2; i++) {
		ret = store_path(s, names[i], path, sizeof(path));
		if (ret)
			return ret;
		if (unlink(path) && errno != ENOENT)
			return -errno;
	}
	return 0;
}

/* The meta records: check them, or write them into a new store. */
static int store_check_meta(struct stxn *t, bool create)
{
	uint8_t v4[4], v8[8];
	bool found;

	found = stxn_get(t, SDB_META, STORE_META_FORMAT,
			 STORE_KEYLEN(STORE_META_FORMAT), v4, sizeof(v4));
	if (t->rc)
		return -EBADMSG;
	if (!found) {
		if (!create || stxn_entries(t, SDB_META) ||
		    stxn_entries(t, SDB_FILES) ||
		    stxn_entries(t, SDB_RECIPES) ||
		    stxn_entries(t, SDB_RUNS) || stxn_entries(t, SDB_CHUNKS))
			return -EBADMSG;
		store_be32(v4, STORE_FORMAT);
		stxn_put(t, SDB_META, STORE_META_FORMAT,
			 STORE_KEYLEN(STORE_META_FORMAT), v4, sizeof(v4));
		store_be32(v4, STORE_PAGE_SIZE);
		stxn_put(t, SDB_META, STORE_META_PAGE_SIZE,
			 STORE_KEYLEN(STORE_META_PAGE_SIZE), v4, sizeof(v4));
		store_be64(v8, 1);
		stxn_put(t, SDB_META, STORE_META_NEXT_FID,
			 STORE_KEYLEN(STORE_META_NEXT_FID), v8, sizeof(v8));
		return 0;
	}
	t->s->found_format = store_get32(v4);
	if (store_get32(v4) != STORE_FORMAT)
		return -EPROTO;
	found = stxn_get(t, SDB_META, STORE_META_PAGE_SIZE,
			 STORE_KEYLEN(STORE_META_PAGE_SIZE), v4, sizeof(v4));
	if (!found || t->rc)
		return -EBADMSG;
	if (store_get32(v4) != STORE_PAGE_SIZE)
		return -EPROTO;
	return 0;
}

/* Open (creating if writable) the databases and check meta. meta
 * first: a store of another format may not have the others. */
static int store_attach(struct store *s)
{
	struct stxn t;
	MDB_stat st;
	int rc = 0, ret;

	stxn_begin(s, &t, !s->readonly);
	if (t.rc)
		return store_errno(t.rc);
	rc = mdb_dbi_open(t.txn, store_db_names[SDB_META],
			  s->readonly ? 0 : MDB_CREATE, &s->dbi[SDB_META]);
	if (rc == MDB_NOTFOUND && s->readonly &&
	    !mdb_stat(t.txn, 1, &st) && !st.ms_entries) {
		/* A store created but never written: nothing to read. */
		stxn_abort(&t);
		return 0;
	}
	if (!rc) {
		uint8_t v4[4];
		MDB_val k = { STORE_KEYLEN(STORE_META_FORMAT),
			      (void *)STORE_META_FORMAT }, v;

		if (!mdb_get(t.txn, s->dbi[SDB_META], &k, &v) &&
		    v.mv_size == sizeof(v4)) {
			memcpy(v4, v.mv_data, sizeof(v4));
			s->found_format = store_get32(v4);
			if (s->found_format != STORE_FORMAT) {
				stxn_abort(&t);
				return -EPROTO;
			}
		}
	}
	for (int i = SDB_META + 1; i < SDB_COUNT && !rc; i++)
		rc = mdb_dbi_open(t.txn, store_db_names[i],
				  s->readonly ? 0 : MDB_CREATE, &s->dbi[i]);
	if (rc) {
		stxn_abort(&t);
		return rc == MDB_INCOMPATIBLE || rc == MDB_NOTFOUND ?
			-EBADMSG : store_errno(rc);
	}
	s->have_dbs = true;
	ret = store_check_meta(&t, !s->readonly);
	if (ret) {
		stxn_abort(&t);
		s->have_dbs = false;
		return ret;
	}
	/* Commit (read-only too): that keeps the dbi handles open. */
	ret = stxn_commit(&t);
	if (ret)
		s->have_dbs = false;
	return ret;
}

static int store_env_open(struct store *s, unsigned flags)
{
	struct stat st;
	char path[PATH_MAX];
	uint64_t map;
	int rc;

	rc = mdb_env_create(&s->env);
	if (rc) {
		s->env = NULL;
		return store_errno(rc);
	}
	rc = mdb_env_set_maxreaders(s->env, STORE_MAX_READERS);
	if (!rc)
		rc = mdb_env_set_maxdbs(s->env, SDB_COUNT);
	if (!rc && !(flags & MDB_RDONLY)) {
		/* Start small, but never below what the file holds. */
		map = STORE_MAP_INITIAL;
		if (!store_path(s, "data.mdb", path, sizeof(path)) &&
		    !stat(path, &st) && (uint64_t)st.st_size > map)
			map = ((uint64_t)st.st_size + (1u << 20) - 1) &
			      ~(uint64_t)((1u << 20) - 1);
		if (map > s->quota)
			map = s->quota;
		rc = mdb_env_set_mapsize(s->env, map);
	}
	if (!rc)
		rc = mdb_env_open(s->env, s->dir, flags, 0600);
	if (rc)
		store_close_env(s);
	return store_errno(rc);
}

/*
 * Check data.mdb (unless a live daemon owns it, check false), open the
 * environment and attach the databases.
 */
static int store_open_env(struct store *s, bool check)
{
	/* No readahead into the map: the store's look-ups and updates are
	 * random, and what a fault reads around them would only swell the
	 * page cache. The kernel manages the map's clean pages. */
	unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
	char path[PATH_MAX];
	MDB_stat st;
	int ret;

	ret = store_path(s, "data.mdb", path, sizeof(path));
	if (ret)
		return ret;
	if (check) {
		ret = store_check_file(path);
		if (ret)
			return ret;
	}
	if (s->readonly) {
		if (access(path, F_OK))
			return -errno;
		flags |= MDB_RDONLY;
	} else {
		/* Commits are batched, so syncing each is affordable; the
		 * meta page may lag one commit behind a system crash. */
		flags |= MDB_NOMETASYNC;
	}
	ret = store_env_open(s, flags);
	if (ret == -EACCES && s->readonly)
		/* Cannot even open lock.mdb: read without the reader table,
		 * as LMDB itself does on a read-only file system. */
		ret = store_env_open(s, flags | MDB_NOLOCK);
	if (ret)
		return ret;
	if (!mdb_env_stat(s->env, &st))
		s->psize = st.ms_psize;
	ret = store_attach(s);
	if (ret)
		store_close_env(s);
	return ret;
}

static int store_start_writer(struct store *s)
{
	int rc = pthread_create(&s->writer, NULL, store_writer_main, s);

	if (rc)
		return -rc;
	s->writer_started = true;
	return 0;
}

static bool store_format_old(uint32_t format)
{
	return format == STORE_FORMAT_NO_DIGEST ||
	       format == STORE_FORMAT_PER_PAGE;
}

static const char *store_format_why(uint32_t format)
{
	return format == STORE_FORMAT_NO_DIGEST ?
		"no cryptographic digests" : "a record per page";
}

/*
 * A store of format 1 holds XXH3 fingerprints only, which a page may not
 * be mapped on unread (store.h); one of format 2 a record per page,
 * which format 3 replaces by runs and recipes. Neither is converted: a
 * digest needs the page, and a converted store would be trusted on the
 * old code's records. Rebuilt, with one line, whatever rebuild says: it
 * is our own older store, not a foreign or damaged one.
 */
static int store_rebuild_old(struct store *s)
{
	uint32_t format = s->found_format;
	int ret = store_remove_files(s);

	s->found_format = 0;
	if (!ret)
		ret = store_open_env(s, true);
	if (!ret)
		fprintf(stderr, "samepagefs: store %s has format %u (%s): "
			"rebuilt\n", s->dir, format, store_format_why(format));
	return ret;
}

int store_open(const char *dir, uint64_t quota_bytes, bool rebuild,
	       struct store **out)
{
	struct store *s;
	int ret;

	*out = NULL;
	ret = store_alloc(dir, quota_bytes, false, &s);
	if (ret)
		return ret;
	ret = store_mkdir_p(dir);
	if (ret == -EROFS) {
		/* Nowhere to keep a store: serve without one. */
		store_pause(s, ret, "cannot create the directory");
		goto out_ok;
	}
	if (ret)
		goto out_free;
	ret = store_lock_dir(s, true, true);
	if (ret == -EBUSY) {
		store_pause(s, ret, "in use by another process");
		goto out_ok;
	}
	if (ret)
		goto out_free;

	ret = store_open_env(s, true);
	if (ret == -EPROTO && store_format_old(s->found_format))
		ret = store_rebuild_old(s);
	if ((ret == -EBADMSG || ret == -EPROTO) && rebuild) {
		ret = store_remove_files(s);
		if (!ret)
			ret = store_open_env(s, true);
	}
	if (ret == -EROFS || ret == -EACCES) {
		/* The directory is there but we cannot write in it: read
		 * what it holds, persist nothing. */
		int err = ret;

		s->readonly = true;
		s->found_format = 0;
		ret = store_open_env(s, false);
		if (ret == -EPROTO && store_format_old(s->found_format)) {
			/* Not to be read, and not ours to rebuild: none. */
			char what[96];

			snprintf(what, sizeof(what), "format %u (%s), cannot "
				 "rebuild it", s->found_format,
				 store_format_why(s->found_format));
			store_pause(s, err, what);
			goto out_ok;
		}
		if (ret && ret != -ENOENT)
			goto out_free;
		store_pause(s, err, "open");
		goto out_ok;
	}
	if (ret)
		goto out_free;
	ret = store_start_writer(s);
	if (ret)
		goto out_free;
out_ok:
	*out = s;
	return 0;
out_free:
	store_free(s);
	return ret;
}

int store_open_readonly(const char *dir, struct store **out)
{
	struct store *s;
	bool owned;
	int ret;

	*out = NULL;
	ret = store_alloc(dir, 0, true, &s);
	if (ret)
		return ret;
	/* A daemon that owns the store checked it when it opened it and
	 * keeps it consistent; otherwise check it like a daemon would. */
	ret = store_lock_dir(s, false, false);
	if (ret && ret != -EBUSY)
		goto out_free;
	owned = ret == -EBUSY;
	ret = store_open_env(s, !owned);
	if (!owned)
		flock(s->dir_fd, LOCK_UN);
	if (ret)
		goto out_free;
	*out = s;
	return 0;
out_free:
	store_free(s);
	return ret;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	if (s->writer_started) {
		pthread_mutex_lock(&s->q_lock);
		s->stop = true;
		pthread_cond_signal(&s->q_wake);
		pthread_mutex_unlock(&s->q_lock);
		pthread_join(s->writer, NULL);
	}
	if (s->env && !s->readonly)
		mdb_env_sync(s->env, 1);        /* the lagging meta page */
	store_free(s);
}
