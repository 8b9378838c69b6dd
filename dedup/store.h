/*
 * store: the LMDB store that lets a restarted daemon know which pages are
 * identical without reading or hashing them again.
 *
 * One LMDB environment in the state directory (data.mdb, lock.mdb), with
 * four named databases. All integers are big-endian so that keys sort in
 * numeric order and range scans walk a file's pages in order.
 *
 *   meta   "format" -> u32 STORE_FORMAT; "page_size" -> u32 4096;
 *          "next_file_id" -> u64.
 *   files  key  dev u64 | ino u64                         (16 bytes)
 *          val  file_id u64 | size u64 | mtime_ns i64 | ctime_ns i64 |
 *               last_used_s u64                            (40 bytes)
 *   pages  key  file_id u64 | page index u64               (16 bytes)
 *          val  fingerprint: XXH3-128 lo u64 | hi u64 |
 *               SHA-256 of the page (32 bytes)             (48 bytes)
 *   fps    key  fingerprint, as in pages                   (48 bytes)
 *          val  refs u64 (pages with this content) | file_id u64 |
 *               page index u64 (where one copy lives)     (24 bytes)
 *               (file_id and index are all-ones once that copy is
 *               dropped while other copies remain, until a new one is
 *               recorded)
 *
 * The XXH3 half finds the resident frames a page may be; the SHA-256 half
 * is what a page may be mapped on without being read (see fp.h): XXH3
 * alone does not resist a crafted collision. Format 1 stored XXH3 only;
 * such a store is never trusted: store_open() rebuilds it (empty) with
 * one line on stderr, since a digest cannot be had without the page.
 *
 * A file's fingerprints are trusted only while its identity (device,
 * inode, size, mtime and ctime in ns) equals the stored one: any change,
 * even with the old mtime put back (ctime moves), makes store_file_match()
 * drop the file's records.
 *
 * Writes never happen on the caller's thread: store_put_page() and the
 * other updates go into a queue that one writer thread (LMDB allows one
 * writer) commits in batches (up to STORE_BATCH updates or 100 ms). Reads
 * use short read-only transactions on the caller's thread.
 *
 * Read-your-invalidations: from the moment store_file_changed() or
 * store_forget_file() returns until that update is committed,
 * store_get_fps() reports no page of the file (were the update dropped
 * because persistence paused, it stays so), so a fingerprint the daemon
 * has made wrong is never handed out. Puts need no such care: a page
 * not yet committed is merely not known.
 *
 * Failures: a full map grows it (up to the quota: data.mdb never gets
 * larger), a full quota (the map full at the quota, or live pages past
 * 90% of it) prunes 30% of the pages records, those least likely to pay
 * first (unique pages of the files used longest ago, then whole files),
 * and a commit that still fails (full disk, read-only state directory)
 * pauses persistence with one logged warning: the mount keeps serving
 * correct data, only without persistence. Paused, the update calls return
 * 0 without queueing and reads go on from what was committed.
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
 * -EPROTO for a store of another format version (but format 1, rebuilt
 * always) or page size, -EBADMSG for a file that is not an LMDB store or
 * is corrupt. With rebuild set, an unusable store is removed and created
 * afresh instead. store_open_readonly() never rebuilds: -EPROTO for
 * format 1 too.
 * Other calls: -EAGAIN when LMDB's reader table is full (512 readers),
 * -EBADMSG for a record of the wrong size.
 */
#ifndef SAMEPAGE_STORE_H
#define SAMEPAGE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_FORMAT 2u
#define STORE_BATCH 4096u
/* quota_bytes 0 means this; less than 4 MiB is raised to 4 MiB. */
#define STORE_DEFAULT_QUOTA (1ull << 30)

struct store;

struct store_ident {
	uint64_t dev, ino, size;
	int64_t mtime_ns, ctime_ns;
};

/* A page's fingerprint: XXH3-128 (lo, hi) and SHA-256 (fp.h). */
#define STORE_SHA256_LEN 32
struct store_fp {
	uint64_t lo, hi;
	uint8_t sha256[STORE_SHA256_LEN];
};

struct store_stats {
	uint64_t files;            /* file records */
	uint64_t pages;            /* page fingerprints */
	uint64_t distinct;         /* distinct fingerprints */
	uint64_t dup_pages;        /* pages - distinct: potential saving */
	uint64_t bytes;            /* pages the trees use (data.mdb may be
				    * larger: LMDB reuses, never shrinks) */
	uint64_t quota_bytes;
	uint64_t commits, commit_errors, pruned_pages;
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
/* Stored fingerprints of pages [first, first + n) of a matched file;
 * present[i] says whether page first+i has one. */
int store_get_fps(struct store *s, uint64_t file_id, uint64_t first,
		  unsigned n, struct store_fp *fps, bool *present);

/* Queued updates (never block on LMDB; -ENOMEM if the queue is full;
 * 0 without queueing while persistence is paused). */
int store_put_page(struct store *s, const struct store_ident *id,
		   uint64_t index, const struct store_fp *fp);
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
