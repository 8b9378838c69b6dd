/*
 * fp: page fingerprints. XXH3-128 of a 4 KiB page: collisions are
 * astronomically rare, yet a merge is still confirmed with memcmp, so a
 * fingerprint only ever names a candidate. Stateless and thread-safe.
 */
#ifndef SAMEPAGE_FP_H
#define SAMEPAGE_FP_H

#include <stdbool.h>
#include <stdint.h>

struct fp {
	uint64_t lo, hi;
};

void fp_page(const void *page, struct fp *out);
bool fp_equal(const struct fp *a, const struct fp *b);
/* The fingerprint of an all-zero page (computed once). */
const struct fp *fp_zero(void);
bool fp_page_is_zero(const void *page);

#endif
