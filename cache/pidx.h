/*
 * pidx: the page index of one file, page number -> frame id.
 *
 * A 64-ary radix tree (like the kernel's xarray): a lookup touches one node
 * per 6 bits of the page number that are in use, so a sparse file of
 * terabytes costs memory only for the pages that are cached. Every node
 * keeps a tag bitmap so that the dirty pages of a file are found without
 * walking the clean ones (fsync cost follows the dirty pages).
 *
 * Invariants: fid 0 means "no page"; a tag is set only on a present slot;
 * an interior tag bit is set iff the child has a tagged slot below it.
 *
 * Locking: none inside. The owner (struct cfile) serialises access with its
 * pidx_lock: lookups under the read side, everything else under the write
 * side.
 *
 * Errors: pidx_insert returns -ENOMEM when a node cannot be allocated; the
 * tree is unchanged then.
 */
#ifndef SAMEPAGE_PIDX_H
#define SAMEPAGE_PIDX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PIDX_BITS 6
#define PIDX_FANOUT (1u << PIDX_BITS)

struct pidx_node;

/* Entries naming this frame id are counted apart: the cache's zero frame,
 * which costs no memory, so that a file holding nothing else is known to
 * hold nothing worth keeping. */
#define PIDX_COUNTED_FID 1u

struct pidx {
	struct pidx_node *root;
	unsigned height;     /* 0: empty; root covers 64^height pages */
	uint64_t nr;         /* present entries */
	uint64_t nr_counted; /* entries naming PIDX_COUNTED_FID */
	uint64_t nr_tagged;
	size_t bytes;        /* node memory, for metadata_bytes */
};

void pidx_init(struct pidx *p);
/* Frees the nodes, not the frames they name. */
void pidx_destroy(struct pidx *p);

uint32_t pidx_lookup(const struct pidx *p, uint64_t index);
/* Insert or replace; returns 0 or -ENOMEM. Keeps the slot's tag. */
int pidx_store(struct pidx *p, uint64_t index, uint32_t fid);
/* Remove; returns the old fid (0 if none) and clears its tag. */
uint32_t pidx_erase(struct pidx *p, uint64_t index);

void pidx_tag_set(struct pidx *p, uint64_t index);
void pidx_tag_clear(struct pidx *p, uint64_t index);
bool pidx_tag_get(const struct pidx *p, uint64_t index);

/*
 * Collect up to max present entries with index >= start and index < end
 * (only tagged ones when tagged is true), in index order. Returns how many.
 */
unsigned pidx_gang(const struct pidx *p, uint64_t start, uint64_t end,
		   bool tagged, uint64_t *indexes, uint32_t *fids,
		   unsigned max);

#endif
