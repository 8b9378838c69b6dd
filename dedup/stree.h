/*
 * stree: a table of frame ids keyed by a 64-bit key taken from the frame
 * (its fingerprint for the stable and unstable trees, its physical block
 * for reflinked pages). Open addressing with linear probing; the table
 * stores only the 4-byte fid (8 bytes per entry at the worst load), the
 * key is read from the frame, so metadata stays small.
 *
 * Several frames may share a key (identical content in chains made by
 * max_page_sharing, or a fingerprint collision); stree_next walks them.
 *
 * Locking: none inside; the caller holds cache->map_lock.
 * Errors: stree_insert returns -ENOMEM if the table cannot grow.
 */
#ifndef SAMEPAGE_STREE_H
#define SAMEPAGE_STREE_H

#include <stddef.h>
#include <stdint.h>

typedef uint64_t (*stree_key_fn)(void *arg, uint32_t fid);

struct stree {
	uint32_t *slots;
	uint32_t cap;           /* power of two, or 0 */
	uint32_t used;          /* live entries */
	uint32_t tombs;
	stree_key_fn key;
	void *arg;
};

void stree_init(struct stree *t, stree_key_fn key, void *arg);
void stree_fini(struct stree *t);
int stree_insert(struct stree *t, uint32_t fid);
/* Remove fid (looked up by its key, which must not have changed). */
void stree_remove(struct stree *t, uint32_t fid);
/* Iterate the fids with this key: *pos starts at 0; returns 0 at the end. */
uint32_t stree_next(const struct stree *t, uint64_t key, uint32_t *pos);
size_t stree_bytes(const struct stree *t);

#endif
