/*
 * store_txn: the transaction wrapper with a sticky error, and the record
 * codecs of the store. See store_i.h.
 */
#include "store_i.h"

#include <errno.h>
#include <openssl/evp.h>

void stxn_fail(struct stxn *t, int rc)
{
	if (!t->rc)
		t->rc = rc;
}

/* Another process grew the map: adopt its size (no txn of ours is live
 * while we hold map_lock exclusively). */
static void stxn_adopt_mapsize(struct store *s)
{
	pthread_rwlock_wrlock(&s->map_lock);
	mdb_env_set_mapsize(s->env, 0);
	pthread_rwlock_unlock(&s->map_lock);
}

void stxn_begin(struct store *s, struct stxn *t, bool write)
{
	int rc;

	memset(t, 0, sizeof(*t));
	t->s = s;
	t->write = write;
	if (!s->env) {
		t->rc = EINVAL;
		return;
	}
	for (int tries = 0;; tries++) {
		if (!write) {
			pthread_rwlock_rdlock(&s->map_lock);
			t->locked = true;
		}
		rc = mdb_txn_begin(s->env, NULL, write ? 0 : MDB_RDONLY,
				   &t->txn);
		if (rc != MDB_MAP_RESIZED || tries)
			break;
		if (t->locked) {
			pthread_rwlock_unlock(&s->map_lock);
			t->locked = false;
		}
		stxn_adopt_mapsize(s);
	}
	if (rc) {
		t->txn = NULL;
		t->rc = rc;
		if (t->locked) {
			pthread_rwlock_unlock(&s->map_lock);
			t->locked = false;
		}
	}
}

static void stxn_close_cursors(struct stxn *t)
{
	for (int i = 0; i < SDB_COUNT; i++) {
		if (t->cur[i])
			mdb_cursor_close(t->cur[i]);
		t->cur[i] = NULL;
	}
}

static void stxn_end(struct stxn *t)
{
	t->txn = NULL;
	if (t->locked)
		pthread_rwlock_unlock(&t->s->map_lock);
	t->locked = false;
}

void stxn_abort(struct stxn *t)
{
	if (t->txn) {
		stxn_close_cursors(t);
		mdb_txn_abort(t->txn);
	}
	stxn_end(t);
}

int stxn_commit(struct stxn *t)
{
	int rc;

	if (!t->txn) {
		stxn_end(t);
		return store_errno(t->rc ? t->rc : EINVAL);
	}
	stxn_close_cursors(t);
	if (t->rc) {
		mdb_txn_abort(t->txn);
		stxn_end(t);
		return store_errno(t->rc);
	}
	rc = mdb_txn_commit(t->txn);
	stxn_end(t);
	if (rc)
		t->rc = rc;
	return store_errno(rc);
}

/* An empty store opened read-only has no databases: nothing is found. */
static bool stxn_usable(struct stxn *t)
{
	if (t->rc)
		return false;
	if (!t->s->have_dbs) {
		t->rc = MDB_NOTFOUND;
		return false;
	}
	return true;
}

/* Did a read find something? MDB_NOTFOUND is a plain miss; any other
 * error is kept in t->rc as well. */
static bool stxn_found(struct stxn *t, int rc)
{
	if (rc && rc != MDB_NOTFOUND)
		t->rc = rc;
	return rc == 0;
}

/* The value of key in db; false if there is none or after an error. */
static bool stxn_lookup(struct stxn *t, enum store_db db, const void *key,
			size_t klen, MDB_val *v)
{
	MDB_val k = { klen, (void *)key };

	if (!stxn_usable(t))
		return false;
	return stxn_found(t, mdb_get(t->txn, t->s->dbi[db], &k, v));
}

bool stxn_get(struct stxn *t, enum store_db db, const void *key, size_t klen,
	      void *val, size_t vlen)
{
	MDB_val v;

	if (!stxn_lookup(t, db, key, klen, &v))
		return false;
	if (v.mv_size != vlen) {
		t->rc = MDB_CORRUPTED;
		return false;
	}
	memcpy(val, v.mv_data, vlen);
	return true;
}

bool stxn_getv(struct stxn *t, enum store_db db, const void *key,
	       size_t klen, void *val, size_t max, size_t *vlen)
{
	MDB_val v;

	if (!stxn_lookup(t, db, key, klen, &v))
		return false;
	if (v.mv_size > max) {
		t->rc = MDB_CORRUPTED;
		return false;
	}
	memcpy(val, v.mv_data, v.mv_size);
	*vlen = v.mv_size;
	return true;
}

void stxn_put(struct stxn *t, enum store_db db, const void *key, size_t klen,
	      const void *val, size_t vlen)
{
	MDB_val k = { klen, (void *)key }, v = { vlen, (void *)val };
	int rc;

	if (!stxn_usable(t))
		return;
	rc = mdb_put(t->txn, t->s->dbi[db], &k, &v, 0);
	if (rc)
		t->rc = rc;
}

void stxn_del(struct stxn *t, enum store_db db, const void *key, size_t klen)
{
	MDB_val k = { klen, (void *)key };
	int rc;

	if (!stxn_usable(t))
		return;
	rc = mdb_del(t->txn, t->s->dbi[db], &k, NULL);
	if (rc && rc != MDB_NOTFOUND)
		t->rc = rc;
}

/* Move db's cursor (opened on first use) by op; false at the end of the
 * database or after an error. */
static bool stxn_cursor_get(struct stxn *t, enum store_db db,
			    MDB_cursor_op op, MDB_val *k, MDB_val *v)
{
	int rc;

	if (!stxn_usable(t))
		return false;
	if (!t->cur[db]) {
		rc = mdb_cursor_open(t->txn, t->s->dbi[db], &t->cur[db]);
		if (rc) {
			t->cur[db] = NULL;
			t->rc = rc;
			return false;
		}
	}
	return stxn_found(t, mdb_cursor_get(t->cur[db], k, v, op));
}

bool stxn_seek(struct stxn *t, enum store_db db, MDB_cursor_op op,
	       void *key, size_t klen, void *val, size_t vlen)
{
	MDB_val k = { klen, key }, v;

	if (!stxn_cursor_get(t, db, op, &k, &v))
		return false;
	if (k.mv_size != klen || v.mv_size != vlen) {
		t->rc = MDB_CORRUPTED;
		return false;
	}
	memcpy(key, k.mv_data, klen);
	memcpy(val, v.mv_data, vlen);
	return true;
}

bool stxn_seek_key(struct stxn *t, enum store_db db, MDB_cursor_op op,
		   void *key, size_t klen)
{
	MDB_val k = { klen, key }, v;

	if (!stxn_cursor_get(t, db, op, &k, &v))
		return false;
	if (k.mv_size != klen) {
		t->rc = MDB_CORRUPTED;
		return false;
	}
	memcpy(key, k.mv_data, klen);
	return true;
}

uint64_t stxn_entries(struct stxn *t, enum store_db db)
{
	MDB_stat st;
	int rc;

	if (!stxn_usable(t))
		return 0;
	rc = mdb_stat(t->txn, t->s->dbi[db], &st);
	if (rc) {
		t->rc = rc;
		return 0;
	}
	return st.ms_entries;
}

/*
 * Live pages, not the file's high-water mark: LMDB never shrinks
 * data.mdb, it reuses freed pages, so only the pages the trees hold say
 * whether pruning made room. dbi 0 is LMDB's free-page tree, 1 the main
 * tree; pages 0 and 1 are the metas.
 */
uint64_t stxn_used_bytes(struct stxn *t)
{
	uint64_t pages = 2;
	MDB_stat st;

	if (t->rc)
		return 0;
	for (int i = -2; i < SDB_COUNT; i++) {
		MDB_dbi dbi = i < 0 ? (MDB_dbi)(i + 2) : t->s->dbi[i];

		if (i >= 0 && !t->s->have_dbs)
			break;
		if (mdb_stat(t->txn, dbi, &st))
			continue;
		pages += st.ms_branch_pages + st.ms_leaf_pages +
			 st.ms_overflow_pages;
	}
	return pages * t->s->psize;
}

void store_file_enc(uint8_t v[STORE_FILE_VAL], const struct store_file_rec *r)
{
	store_be64(v, r->fid);
	store_be64(v + 8, r->size);
	store_be64(v + 16, (uint64_t)r->mtime_ns);
	store_be64(v + 24, (uint64_t)r->ctime_ns);
	store_be64(v + 32, r->last_used_s);
}

void store_file_dec(const uint8_t v[STORE_FILE_VAL], struct store_file_rec *r)
{
	r->fid = store_get64(v);
	r->size = store_get64(v + 8);
	r->mtime_ns = (int64_t)store_get64(v + 16);
	r->ctime_ns = (int64_t)store_get64(v + 24);
	r->last_used_s = store_get64(v + 32);
}

bool store_file_is(const struct store_file_rec *r, const struct store_ident *id)
{
	return r->size == id->size && r->mtime_ns == id->mtime_ns &&
	       r->ctime_ns == id->ctime_ns;
}

bool store_recipe_find(struct stxn *t, uint64_t fid, uint64_t idx,
		       struct store_recipe *r)
{
	uint8_t k[STORE_RECIPE_KEY], v[STORE_RECIPE_VAL];
	bool found;

	store_key2(k, fid, idx);
	found = stxn_seek(t, SDB_RECIPES, MDB_SET_RANGE, k, sizeof(k), v,
			  sizeof(v));
	if (!found || store_get64(k) != fid || store_get64(k + 8) != idx) {
		/* The one before may reach over idx. */
		if (t->rc)
			return false;
		if (stxn_seek(t, SDB_RECIPES, found ? MDB_PREV : MDB_LAST, k,
			      sizeof(k), v, sizeof(v)) &&
		    store_get64(k) == fid) {
			store_recipe_dec(k, v, r);
			if (!r->count || r->first + r->count < r->first ||
			    r->first >= idx) {
				stxn_fail(t, MDB_CORRUPTED);
				return false;
			}
			if (idx - r->first < r->count)
				return true;
		}
		if (t->rc || !found)
			return false;
		store_key2(k, fid, idx);
		if (!stxn_seek(t, SDB_RECIPES, MDB_SET_RANGE, k, sizeof(k), v,
			       sizeof(v)) || store_get64(k) != fid)
			return false;
	}
	store_recipe_dec(k, v, r);
	if (!r->count || r->first + r->count < r->first || r->first < idx) {
		stxn_fail(t, MDB_CORRUPTED);
		return false;
	}
	return true;
}

void store_recipe_enc(uint8_t v[STORE_RECIPE_VAL],
		      const struct store_recipe *r)
{
	store_be64(v, r->count);
	store_be64(v + 8, r->run);
	store_be64(v + 16, r->off);
}

void store_recipe_dec(const uint8_t k[STORE_RECIPE_KEY],
		      const uint8_t v[STORE_RECIPE_VAL], struct store_recipe *r)
{
	r->first = store_get64(k + 8);
	r->count = store_get64(v);
	r->run = store_get64(v + 8);
	r->off = store_get64(v + 16);
}

bool store_chunk_dec(const uint8_t *v, size_t len, struct store_chunk *c)
{
	uint32_t n, groups, open;
	const uint8_t *p = v + STORE_CHUNK_HDR;

	if (len < STORE_CHUNK_HDR)
		return false;
	n = store_get32(v);
	if (n == 0 || n > STORE_CHUNK || store_get32(v + 4))
		return false;
	groups = n / STORE_GROUP;
	open = n % STORE_GROUP;
	if (len != STORE_CHUNK_HDR + (size_t)groups * STORE_GROUP_BYTES +
		   (size_t)open * STORE_SHA256_LEN)
		return false;
	c->n = n;
	for (uint32_t g = 0; g < groups; g++) {
		memcpy(c->tag[g * STORE_GROUP], p,
		       STORE_GROUP * STORE_TAG_LEN);
		p += STORE_GROUP * STORE_TAG_LEN;
		memcpy(c->gdigest[g], p, STORE_SHA256_LEN);
		p += STORE_SHA256_LEN;
	}
	for (uint32_t i = 0; i < open; i++) {
		memcpy(c->open[i], p, STORE_SHA256_LEN);
		memcpy(c->tag[groups * STORE_GROUP + i], p, STORE_TAG_LEN);
		p += STORE_SHA256_LEN;
	}
	return true;
}

size_t store_chunk_enc(const struct store_chunk *c, uint8_t *v)
{
	uint32_t groups = c->n / STORE_GROUP, open = c->n % STORE_GROUP;
	uint8_t *p = v + STORE_CHUNK_HDR;

	store_be32(v, c->n);
	store_be32(v + 4, 0);
	for (uint32_t g = 0; g < groups; g++) {
		memcpy(p, c->tag[g * STORE_GROUP], STORE_GROUP * STORE_TAG_LEN);
		p += STORE_GROUP * STORE_TAG_LEN;
		memcpy(p, c->gdigest[g], STORE_SHA256_LEN);
		p += STORE_SHA256_LEN;
	}
	for (uint32_t i = 0; i < open; i++) {
		memcpy(p, c->open[i], STORE_SHA256_LEN);
		p += STORE_SHA256_LEN;
	}
	return (size_t)(p - v);
}

int store_group_digest(const uint8_t members[STORE_GROUP][STORE_SHA256_LEN],
		       uint8_t out[STORE_SHA256_LEN])
{
	unsigned len = 0;

	if (!EVP_Digest(members, (size_t)STORE_GROUP * STORE_SHA256_LEN, out,
			&len, EVP_sha256(), NULL) || len != STORE_SHA256_LEN)
		return -EIO;
	return 0;
}
