/*
 * store_errno: the one place LMDB's return codes become -errno.
 *
 * Owns nothing but the mapping. Every caller of LMDB links it: the store
 * (dedup/store*.c) and samepagectl's offline store report
 * (tools/ctl_store.c), so a code means the same errno in both.
 *
 *   MDB_SUCCESS                                    0
 *   MDB_NOTFOUND                                   -ENOENT
 *   MDB_KEYEXIST                                   -EEXIST
 *   MDB_MAP_FULL, MDB_TXN_FULL, MDB_PAGE_FULL,
 *   MDB_CURSOR_FULL                                -ENOSPC
 *   MDB_READERS_FULL, MDB_TLS_FULL, MDB_MAP_RESIZED -EAGAIN
 *   MDB_DBS_FULL                                   -EMFILE
 *   MDB_INVALID, MDB_CORRUPTED, MDB_PAGE_NOTFOUND,
 *   MDB_VERSION_MISMATCH                           -EBADMSG (not a store
 *                                                  we can read)
 *   MDB_INCOMPATIBLE                               -EPROTO
 *   MDB_BAD_RSLOT, MDB_BAD_TXN, MDB_BAD_VALSIZE,
 *   MDB_BAD_DBI                                    -EINVAL
 *   MDB_PANIC, any other negative code             -EIO
 *   a positive code (a system errno from LMDB)     its negation
 *
 * Locking: none (a pure function).
 */
#ifndef SAMEPAGE_STORE_ERRNO_H
#define SAMEPAGE_STORE_ERRNO_H

int store_errno(int mdb_rc);

#endif
