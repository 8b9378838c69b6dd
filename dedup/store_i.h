/*
 * store_i: the insides of struct store, shared by the files of the store
 * module, one job each:
 *   store_open.c    open and close: the directory and its lock, the
 *                   environment, the databases and meta, older formats
 *   store_check.c   the check of data.mdb before LMDB maps it
 *   store.c         the reads on the caller's thread, statistics
 *   store_queue.c   queueing updates for the writer, the masks
 *   store_writer.c  the writer thread: batches, map growth, pause
 *   store_apply.c   what an update does to the records (struct wctx)
 *   store_prune.c   keeping the store inside its quota
 *   store_txn.c     the transaction wrapper, the record codecs
 *   store_errno.c   LMDB codes as -errno (store_errno.h; samepagectl
 *                   links it too)
 *
 * Locking (never nested; no LMDB call is made under q_lock):
 *   q_lock    the queue, the sequence numbers, stop/sync flags, the mask
 *             table and the paused state.
 *   map_lock  rwlock: every read transaction of this process holds it
 *             shared; the writer takes it exclusive to resize the map
 *             (mdb_env_set_mapsize needs no live transaction in the
 *             process). Write transactions run only on the writer thread,
 *             which is also the only resizer, so they need no lock.
 *
 * Masks: an update that invalidates fingerprints (a write through the
 * mount, an unlink) is queued, so for up to one batch period the committed
 * store still holds the old fingerprints. The cache trusts a stored
 * fingerprint without comparing content, so until the update commits the
 * file's id is masked: store_get_recs() reports no page. A mask is checked
 * *before* the read transaction begins and removed only *after* the commit,
 * so a reader either sees the mask or a snapshot with the update in it.
 * Masks of updates that never commit (persistence paused) stay forever.
 */
#ifndef SAMEPAGE_STORE_I_H
#define SAMEPAGE_STORE_I_H

#include "store.h"
#include "store_errno.h"
#include "u64map.h"

#include <endian.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

/* The page size fingerprints are taken over; stored in meta. */
#define STORE_PAGE_SIZE 4096u
/* Older formats: rebuilt, never read (store.h). */
#define STORE_FORMAT_NO_DIGEST 1u
#define STORE_FORMAT_PER_PAGE 2u
/* Updates waiting for the writer; puts beyond this get -ENOMEM. Updates
 * that invalidate fingerprints may use twice as much (see store_enqueue). */
#define STORE_QUEUE_MAX (1u << 20)
/* Map size to start with; doubled on MDB_MAP_FULL up to the quota. */
#define STORE_MAP_INITIAL (8ull << 20)
/* Smallest quota accepted: one full batch of new records must fit. */
#define STORE_QUOTA_MIN (4ull << 20)
/* Prune when the live pages pass HIGH percent of the quota (or the map is
 * full at the quota), keeping LOW percent of the stored digests. */
#define STORE_PRUNE_HIGH 90u
#define STORE_PRUNE_LOW 70u
/* A match refreshes last_used_s at most this often (seconds). */
#define STORE_TOUCH_S 1
/* The run of all-zero pages (no entries, never stored). */
#define STORE_RUN_ZERO 0u
/* Seq of a mask that no commit will lift. */
#define STORE_SEQ_NEVER UINT64_MAX

enum store_db { SDB_META, SDB_FILES, SDB_RECIPES, SDB_RUNS, SDB_CHUNKS,
		SDB_COUNT };

/* Keys of the meta database (no terminating NUL is stored). */
#define STORE_META_FORMAT "format"
#define STORE_META_PAGE_SIZE "page_size"
#define STORE_META_NEXT_FID "next_file_id"
#define STORE_META_NEXT_RUN "next_run_id"
#define STORE_META_PAGES "pages"
#define STORE_META_DIGESTS "digests"
#define STORE_KEYLEN(lit) (sizeof(lit) - 1)

enum store_op_kind {
	SOP_PUT,          /* id, a = index, sha256 (zero: all zeros);
			   * ref, b = ref index if has_ref */
	SOP_CHANGED,      /* id = new identity, a = first, b = n */
	SOP_FORGET,       /* id.dev, id.ino */
	SOP_FORGET_STALE, /* id: drop the record unless it has this identity */
	SOP_TOUCH,        /* id, a = now (s): refresh last_used_s */
};

struct store_op {
	uint32_t kind;
	uint32_t order;           /* writer: place among the puts it sorts */
	bool zero, has_ref;
	struct store_ident id;
	uint64_t a, b;
	struct store_ident ref;
	uint8_t sha256[STORE_SHA256_LEN];
};

struct store_queue {
	struct store_op *ops;
	size_t len, cap;
};

struct store {
	MDB_env *env;                       /* NULL: detached (no store) */
	MDB_dbi dbi[SDB_COUNT];             /* immutable after open */
	bool have_dbs;                      /* immutable: false in an empty
					     * store opened read-only */
	bool readonly;                      /* immutable: no writer thread */
	char *dir;                          /* immutable */
	char *name;                         /* immutable: dir, for messages */
	int dir_fd;                         /* holds the flock; -1 if none */
	uint64_t quota;                     /* immutable */
	unsigned psize;                     /* immutable: LMDB page size */
	uint32_t found_format;              /* open only: meta's format, 0
					     * if none was read */
	pthread_rwlock_t map_lock;

	pthread_mutex_t q_lock;
	pthread_cond_t q_wake;              /* writer: work or stop */
	pthread_cond_t q_done;              /* syncers: done_seq moved */
	struct store_queue q;               /* q_lock */
	uint64_t q_seq;                     /* q_lock: seq of the last op */
	uint64_t done_seq;                  /* q_lock: all ops <= are done */
	struct timespec q_first;            /* q_lock: when q became non-empty */
	bool sync_req, stop;                /* q_lock */
	bool paused;                        /* q_lock (read racily in stats) */
	int pause_err;                      /* q_lock: -errno that paused */
	/* masked file ids (never 0) -> the update that lifts the mask
	 * once done_seq reaches it (q_lock) */
	struct u64map masks;
	uint64_t mask_all;                  /* q_lock: every fid masked while
					     * done_seq < mask_all */

	pthread_t writer;
	bool writer_started;                /* immutable after open */
	uint64_t prune_mark;                /* writer: digests stored when it
					     * last pruned */

	_Atomic uint64_t commits, commit_errors, pruned_pages, queue_full;
};

/* ---- store_txn.c ---- */

/*
 * Transaction wrapper with a sticky error: after the first failure every
 * further step is a no-op and commit aborts, so callers check once.
 * rc keeps the raw LMDB code so the writer can tell MDB_MAP_FULL apart.
 */
struct stxn {
	struct store *s;
	MDB_txn *txn;
	MDB_cursor *cur[SDB_COUNT];
	int rc;
	bool write;
	bool locked;                        /* holds map_lock shared */
};

void stxn_begin(struct store *s, struct stxn *t, bool write);
/* Copy the value of key into val (exactly vlen bytes). False if absent or
 * after an error; a value of another size is MDB_CORRUPTED. */
bool stxn_get(struct stxn *t, enum store_db db, const void *key, size_t klen,
	      void *val, size_t vlen);
/* The same for a value of up to max bytes; *vlen gets its length. */
bool stxn_getv(struct stxn *t, enum store_db db, const void *key,
	       size_t klen, void *val, size_t max, size_t *vlen);
void stxn_put(struct stxn *t, enum store_db db, const void *key, size_t klen,
	      const void *val, size_t vlen);
/* Delete key; a missing key is not an error. */
void stxn_del(struct stxn *t, enum store_db db, const void *key, size_t klen);
/* The first record with key >= *key (op MDB_SET_RANGE) or the one after
 * the cursor (MDB_NEXT); key and value are copied and must have exactly
 * klen/vlen bytes. False at the end or after an error. */
bool stxn_seek(struct stxn *t, enum store_db db, MDB_cursor_op op,
	       void *key, size_t klen, void *val, size_t vlen);
/* The same, for the key only (any value size). */
bool stxn_seek_key(struct stxn *t, enum store_db db, MDB_cursor_op op,
		   void *key, size_t klen);
/* Entries of a database (0 after an error). */
uint64_t stxn_entries(struct stxn *t, enum store_db db);
/* Bytes of the pages in use by every tree, metas included. */
uint64_t stxn_used_bytes(struct stxn *t);
int stxn_commit(struct stxn *t);
void stxn_abort(struct stxn *t);
/* Fail the transaction with an LMDB or system code (if not failed yet). */
void stxn_fail(struct stxn *t, int mdb_rc);

/* Records (big-endian, see store.h). */
struct store_file_rec {
	uint64_t fid, size;
	int64_t mtime_ns, ctime_ns;
	uint64_t last_used_s;
};
#define STORE_FILE_KEY 16
#define STORE_FILE_VAL 40
#define STORE_RECIPE_KEY 16
#define STORE_RECIPE_VAL 24
#define STORE_RUN_KEY 8
#define STORE_RUN_VAL 16
#define STORE_CHUNK_KEY 16
#define STORE_CHUNK_HDR 8
#define STORE_GROUP_BYTES (STORE_GROUP * STORE_TAG_LEN + STORE_SHA256_LEN)
/* Largest chunk value: full groups, or fewer and an open group. */
#define STORE_CHUNK_MAX (STORE_CHUNK_HDR + \
	(STORE_CHUNK / STORE_GROUP - 1) * STORE_GROUP_BYTES + \
	(STORE_GROUP - 1) * STORE_SHA256_LEN)
_Static_assert(STORE_CHUNK % STORE_GROUP == 0, "whole groups per chunk");
_Static_assert(STORE_CHUNK_MAX <= 4080, "a chunk fits one overflow page");

static inline void store_be64(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}

static inline uint64_t store_get64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return be64toh(v);
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
}

static inline uint32_t store_get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return be32toh(v);
}

static inline void store_key2(uint8_t k[16], uint64_t a, uint64_t b)
{
	store_be64(k, a);
	store_be64(k + 8, b);
}

void store_file_enc(uint8_t v[STORE_FILE_VAL], const struct store_file_rec *r);
void store_file_dec(const uint8_t v[STORE_FILE_VAL], struct store_file_rec *r);
bool store_file_is(const struct store_file_rec *r, const struct store_ident *id);
struct store_recipe {
	uint64_t first, count, run, off;
};
/* The recipe of file fid that covers page idx, or else the first one
 * after it; false if none (or after an error: a malformed recipe fails
 * the transaction). The recipes cursor is moved. */
bool store_recipe_find(struct stxn *t, uint64_t fid, uint64_t idx,
		       struct store_recipe *r);
void store_recipe_enc(uint8_t v[STORE_RECIPE_VAL],
		      const struct store_recipe *r);
void store_recipe_dec(const uint8_t k[STORE_RECIPE_KEY],
		      const uint8_t v[STORE_RECIPE_VAL], struct store_recipe *r);

/* A chunk decoded: entries [0, n) of it; tags of entries in whole groups,
 * the digests of those groups, and the open group's entries whole. */
struct store_chunk {
	uint32_t n;
	uint8_t tag[STORE_CHUNK][STORE_TAG_LEN];
	uint8_t gdigest[STORE_CHUNK / STORE_GROUP][STORE_SHA256_LEN];
	uint8_t open[STORE_GROUP][STORE_SHA256_LEN];
};
/* Decode a chunk value of len bytes: false if it is malformed. */
bool store_chunk_dec(const uint8_t *v, size_t len, struct store_chunk *c);
/* Encode into v (STORE_CHUNK_MAX bytes); returns the length. */
size_t store_chunk_enc(const struct store_chunk *c, uint8_t *v);

/* ---- store_queue.c ---- */

/* Lift masks whose update is now committed (q_lock held). */
void store_masks_lift(struct store *s);
/* Is fid masked (q_lock not held)? Asked before a read transaction. */
bool store_masked(struct store *s, uint64_t fid);
/* Queue a plain update; 0 without queueing when not persisting, -ENOMEM
 * if the queue is full. */
int store_queue_op(struct store *s, const struct store_op *op);

/* ---- store_apply.c (writer thread only) ---- */

/* One write transaction of the writer, with what it changes in meta
 * kept aside until commit. */
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

void wctx_begin(struct store *s, struct wctx *w);
/* Write the meta counts and the open chunk, then commit: 0 or -errno
 * (w->t.rc says which LMDB code). */
int wctx_commit(struct wctx *w);
/* A u64 of meta (0 if absent), and setting one. */
uint64_t wctx_meta_get(struct wctx *w, const char *key);
void wctx_meta_put(struct wctx *w, const char *key, uint64_t val);
/* Length and refs of a run; false if it has no record. */
bool wctx_run_get(struct wctx *w, uint64_t run, uint64_t *len,
		  uint64_t *refs);
/* Drop pages [first, end) of file fid from its recipes, touching at most
 * limit recipes; returns how many pages were described, *next (if not
 * NULL) where to go on from. */
uint64_t wctx_drop_some(struct wctx *w, uint64_t fid, uint64_t first,
			uint64_t end, uint64_t limit, uint64_t *next);
uint64_t wctx_drop_range(struct wctx *w, uint64_t fid, uint64_t first,
			 uint64_t end);
/* Apply one queued update. */
void wctx_apply(struct wctx *w, const struct store_op *op);

/* ---- store_prune.c (writer thread only) ---- */

/* Drop (100 - STORE_PRUNE_LOW)% of the records, least useful first. */
void store_prune(struct store *s);
/* Forget every file (meta stays): 0 or -errno. */
int store_empty(struct store *s);
/* Prune if the live pages passed STORE_PRUNE_HIGH% of the quota. */
void store_check_quota(struct store *s);

/* ---- store_writer.c ---- */

void *store_writer_main(void *arg);
/* Log once and stop persisting: drop the queue, accept no more updates. */
void store_pause(struct store *s, int err, const char *what);

/* ---- store_check.c ---- */

/*
 * Walk the newest snapshot of an LMDB data file the way LMDB would reach
 * it and refuse anything it could trip over. 0: safe to open (or the file
 * is empty: LMDB creates a new one); -EBADMSG: damaged or not a store of
 * ours; other -errno: the file could not be read.
 */
int store_check_file(const char *path);

#endif
