/*
 * fp: page fingerprints and digests.
 *
 * A fingerprint is the XXH3-128 of a 4 KiB page: fast, and good enough to
 * find candidates, but not collision-resistant (someone can craft a page
 * with the same XXH3 as another), so a merge is always confirmed with
 * memcmp and a fingerprint only ever names a candidate.
 *
 * A digest is the SHA-256 of a page: what a page mapped *without being
 * read* (warm restart) is trusted on, as ZFS dedup trusts only a
 * cryptographic checksum without verify. It costs several times the
 * fingerprint, so it is taken only for pages that may be mapped unread.
 *
 * Stateless and thread-safe.
 */
#ifndef SAMEPAGE_FP_H
#define SAMEPAGE_FP_H

#include <stdbool.h>
#include <stdint.h>

#define FP_DIGEST_LEN 32

struct fp {
	uint64_t lo, hi;
};

void fp_page(const void *page, struct fp *out);
bool fp_equal(const struct fp *a, const struct fp *b);
/* The fingerprint of an all-zero page (computed once). */
const struct fp *fp_zero(void);
bool fp_page_is_zero(const void *page);

/* SHA-256 of a page: 0, or -ENOMEM/-EIO from OpenSSL (then out is not a
 * digest and nothing may be trusted on it). */
int fp_digest(const void *page, uint8_t out[FP_DIGEST_LEN]);
bool fp_digest_equal(const uint8_t a[FP_DIGEST_LEN],
		     const uint8_t b[FP_DIGEST_LEN]);
/* The digest of an all-zero page (computed once); NULL if OpenSSL could
 * not compute it. */
const uint8_t *fp_zero_digest(void);

#endif
