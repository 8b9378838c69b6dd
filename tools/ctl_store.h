/*
 * ctl_store: offline statistics of a samepage LMDB store.
 *
 * Owns a read-only LMDB environment for the duration of one report. The
 * store's record layout belongs to dedup/; this module reads only what
 * every LMDB environment has: the environment's info and page statistics,
 * and the named databases listed as keys of the main database.
 *
 * Invariants: the store is opened with MDB_RDONLY and never written; a
 * daemon that has the store open keeps working (LMDB readers do not block
 * the writer). Everything opened is closed before returning.
 *
 * Locking: none (single-threaded tool; one short read transaction).
 *
 * Errors: 0 or -errno. LMDB's own codes are mapped where the store's are
 * (dedup/store_errno.h, linked into samepagectl); the message printed to
 * stderr names the directory and the reason, so callers only choose the
 * exit code.
 */
#ifndef SAMEPAGE_CTL_STORE_H
#define SAMEPAGE_CTL_STORE_H

#include <stdio.h>

/* Print the statistics of the store in state_dir to f (mount, if not
 * NULL, is the mount whose store it is); errors go to stderr, prefixed
 * with prog. */
int ctl_store_report(FILE *f, const char *prog, const char *state_dir,
		     const char *mount);

#endif
