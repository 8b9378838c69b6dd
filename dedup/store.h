/*
 * store: the LMDB store that lets a restarted daemon know which pages are
 * identical without reading or hashing them again.
 *
 * What is stored is the stable hash tree, compactly: the SHA-256 of each
 * content once, in runs, and for each file a recipe that says which run
 * its pages are at. Eight copies of a file cost one run (12.5 bytes a
 * page) and eight recipe records.
 *
 * One LMDB environment in the state directory (data.mdb, lock.mdb), with
 * five named databases. All integers are big-endian so that keys sort in
 * numeric order and range scans walk a file's pages in order.
 *
 *   meta    "format" -> u32 STORE_FORMAT; "page_size" -> u32 4096;
 *           "next_file_id", "next_run_id", "pages" (pages the recipes
 *           describe), "digests" (entries the runs hold) -> u64.
 *   files   key  dev u64 | ino u64                           (16 bytes)
 *           val  file_id u64 | size u64 | mtime_ns i64 | ctime_ns i64 |
 *                last_used_s u64                             (40 bytes)
 *   recipes key  file_id u64 | first page index u64          (16 bytes)
 *           val  count u64 | run u64 | offset u64            (24 bytes)
 *           pages [first, first + count) of the file hold the contents
 *           at [offset, offset + count) of the run; run 0 is all zeros
 *           (offset 0). A file's recipes do not overlap.
 *   runs    key  run u64                                      (8 bytes)
 *           val  length u64 (entries) | refs u64 (recipes)   (16 bytes)
 *   chunks  key  run u64 | chunk u64                          (16 bytes)
 *           val  entries [chunk * STORE_CHUNK, + n) of the run: u32 n |
 *                u32 0 | n / STORE_GROUP groups of STORE_GROUP tags
 *                (8 bytes each) and the group's digest (32 bytes) |
 *                n % STORE_GROUP SHA-256s (the run's open group, in its
 *                last chunk only)
 *
 * A tag is the first 8 bytes of a page's SHA-256: it finds candidates (a
 * resident frame with that digest prefix), it proves nothing. A group's
 * digest is the SHA-256 of its members' SHA-256s (store_group_digest), a
 * Merkle node: frames whose own digests hash to it hold exactly the
 * group's contents, so a page may be mapped unread on it as on its own
 * SHA-256 (fp.h). Entries are never changed once written; a run grows at
 * its end only, and a group's digest is taken once its STORE_GROUP
 * entries are there (until then they are kept whole).
 *
 * A run lives while a recipe refers to it (refs); its entries are shared
 * by every recipe that points there. A put names, besides the page's
 * digest, a page known to hold the same content (another mapper of the
 * same frame, recorded first): the store then points the page at that
 * page's entry, extending the recipe that ends just before it, instead
 * of storing the digest again. Without such a page, the digest is
 * appended to the run the file's previous page is at, if that is where
 * it ends, or else starts a new run.
 *
 * Format 1 stored XXH3 only, format 2 a 48-byte record per page and an
 * index of fingerprints; such a store is never trusted: store_open()
 * rebuilds it (empty) with one line on stderr.
 *
 * A file's records are trusted only while its identity (device,
 * inode, size, mtime and ctime in ns) equals the stored one: any change,
 * even with the old mtime put back (ctime moves), makes store_file_match()
 * drop the file's records. A reference page is used only while its own
 * file has the identity the put names.
 *
 * Writes never happen on the caller's thread: store_put_page() and the
 * other updates go into a queue that one writer thread (LMDB allows one
 * writer) commits in batches (up to STORE_BATCH updates or 100 ms). Reads
 * use short read-only transactions on the caller's thread.
 *
 * Read-your-invalidations: from the moment store_file_changed() or
 * store_forget_file() returns until that update is committed,
 * store_get_recs() reports no page of the file (were the update dropped
 * because persistence paused, it stays so), so a record the daemon has
 * made wrong is never handed out. Puts need no such care: a page not yet
 * committed is merely not known.
 *
 * Failures: a full map grows it (up to the quota: data.mdb never gets
 * larger), a full quota (the map full at the quota, or the live pages
 * past 90% of it) prunes 30% of the stored digests, those least likely
 * to pay first (runs of the files used longest ago that no other file
 * points into, then whole files), and a commit that still fails (full
 * disk, read-only state directory) pauses persistence with one logged
 * warning: the mount keeps serving correct data, only without
 * persistence. Paused, the update calls return 0 without queueing and
 * reads go on from what was committed.
 *
 * Ownership: an open store holds an exclusive flock() on its directory,
 * so it is checked before LMDB maps it (LMDB trusts its file; a damaged
 * one must not crash the daemon) and rebuilt only while nobody uses it.
 * A directory another daemon holds (for 2 s), or one on a read-only file
 * system, still opens: with persistence paused from the start (reading
 * what the read-only store holds).
 *
 * Locking: the queue has its own mutex; map resizing holds a rwlock
 * exclusively against readers (mdb_env_set_mapsize needs no live txn).
 *
 * Errors (from store_open): -ENOENT/-EACCES/-ENOTDIR for the directory,
 * -EPROTO for a store of another format version (but formats 1 and 2,
 * rebuilt always) or page size, -EBADMSG for a file that is not an LMDB
 * store or is corrupt. With rebuild set, an unusable store is removed and
 * created afresh instead. store_open_readonly() never rebuilds: -EPROTO
 * for formats 1 and 2 too.
 * Other calls: -EAGAIN when LMDB's reader table is full (512 readers),
 * -EBADMSG for a record of the wrong size.
 */
#ifndef SAMEPAGE_STORE_H
#define SAMEPAGE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_FORMAT 3u
#define STORE_BATCH 4096u
/* Longest an update waits before the writer commits it. */
#define STORE_BATCH_MS 100
/* quota_bytes 0 means this; less than 4 MiB is raised to 4 MiB. */
#define STORE_DEFAULT_QUOTA (1ull << 30)
/* Pages per group of a run (one digest over their digests), and entries
 * per chunk (one LMDB overflow page: 41 groups). */
#define STORE_GROUP 8u
#define STORE_CHUNK 328u
#define STORE_TAG_LEN 8
#define STORE_SHA256_LEN 32

struct store;

struct store_ident {
	uint64_t dev, ino, size;
	int64_t mtime_ns, ctime_ns;
};

/* What the store holds for one page (store_get_recs). */
enum store_rec_kind {
	STORE_REC_NONE,             /* nothing */
	STORE_REC_ZERO,             /* the page is all zeros */
	STORE_REC_DIGEST,           /* sha256 is the page's SHA-256 */
	STORE_REC_GROUP,            /* member `member` of groups[group]: the
				     * tag alone, trusted once the group is */
};

struct store_rec {
	uint8_t kind;
	uint8_t member;
	uint16_t group;
	uint8_t sha256[STORE_SHA256_LEN];
};

struct store_group {
	uint8_t tag[STORE_GROUP][STORE_TAG_LEN];
	uint8_t digest[STORE_SHA256_LEN];  /* store_group_digest(members) */
};

struct store_stats {
	uint64_t files;            /* file records */
	uint64_t pages;            /* pages the recipes describe */
	uint64_t distinct;         /* digests stored (entries of the runs) */
	uint64_t dup_pages;        /* pages - distinct: potential saving */
	uint64_t recipes;          /* recipe records */
	uint64_t runs;
	uint64_t bytes;            /* pages the trees use (data.mdb may be
				    * larger: LMDB reuses, never shrinks) */
	uint64_t quota_bytes;
	uint64_t commits, commit_errors, pruned_pages;
	uint64_t queue_full;       /* updates dropped: the queue was full */
	bool paused;               /* persistence paused after a failure */
};

/* Open or create the store in dir (created mode 0700 if missing). */
int store_open(const char *dir, uint64_t quota_bytes, bool rebuild,
	       struct store **out);
/* Commit what is queued, stop the writer, close. */
void store_close(struct store *s);
/* Open an existing store read-only for offline statistics. */
int store_open_readonly(const char *dir, struct store **out);

/* 0 and *file_id if a record with exactly this identity exists; -ENOENT
 * if none; -ESTALE if one existed with another identity (its records are
 * dropped, through the queue). */
int store_file_match(struct store *s, const struct store_ident *id,
		     uint64_t *file_id);
/* What the store holds for pages [first, first + n) of a matched file:
 * recs[i] for page first + i; the groups the STORE_REC_GROUP pages are
 * in go to groups[0, *ngroups) (*ngroups in: room, out: used; a page
 * whose group finds no room is reported as STORE_REC_NONE). */
int store_get_recs(struct store *s, uint64_t file_id, uint64_t first,
		   unsigned n, struct store_rec *recs,
		   struct store_group *groups, unsigned *ngroups);
/* 1 if a page of a matched file has a record of content (not of zeros),
 * 0 if none does; -errno. Records are made of pages found shared
 * (persist_i.h), so this says the file shared something when its pages
 * were last read; a file with only zero records shared nothing worth
 * knowing (zeros are everywhere). */
int store_file_has_content(struct store *s, uint64_t file_id);
/* The digest of a group: SHA-256 over its members' SHA-256s, in order.
 * 0, or -EIO if it could not be computed (then nothing is trusted). */
int store_group_digest(const uint8_t members[STORE_GROUP][STORE_SHA256_LEN],
		       uint8_t out[STORE_SHA256_LEN]);

/* Queued updates (never block on LMDB; -ENOMEM if the queue is full;
 * 0 without queueing while persistence is paused). */
/* Page index of file id holds content whose SHA-256 is sha256 (NULL:
 * all zeros). ref, if not NULL, is a page of the same content (ref_index
 * of that file, at that identity), recorded before: the page then points
 * at ref's entry instead of storing the digest again. */
int store_put_page(struct store *s, const struct store_ident *id,
		   uint64_t index, const uint8_t *sha256,
		   const struct store_ident *ref, uint64_t ref_index);
/* The file was written through the mount: record its new identity and
 * forget the fingerprints of pages [first, first + n) (n may be
 * UINT64_MAX), which changed. */
int store_file_changed(struct store *s, uint64_t dev, uint64_t ino,
		       const struct store_ident *now, uint64_t first,
		       uint64_t n);
/* The file is gone (unlinked): drop all its records. */
int store_forget_file(struct store *s, uint64_t dev, uint64_t ino);
/* Wait until everything queued so far is committed (tests, unmount).
 * 0, or the -errno that paused persistence. */
int store_sync(struct store *s);
/* Background pass: drop records of files whose backing inode no longer
 * exists under root_fd (checked by the caller's callback). */
typedef bool (*store_exists_cb)(void *arg, uint64_t dev, uint64_t ino);
int store_prune_missing(struct store *s, store_exists_cb exists, void *arg);

void store_get_stats(struct store *s, struct store_stats *st);

#endif
