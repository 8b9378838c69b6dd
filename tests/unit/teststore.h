/*
 * teststore: helpers the store unit tests share: a directory per test
 * case under the test root, file identities, made-up SHA-256s, and
 * putting and counting the page records of a file.
 */
#ifndef SAMEPAGE_TESTSTORE_H
#define SAMEPAGE_TESTSTORE_H

#include "check.h"
#include "testfs.h"

#include "store.h"

#define PG 4096u

/* The test directory; main() sets it. */
static const char *root;

/* A fresh directory for one test case. */
static inline const char *case_dir(const char *name)
{
	static char path[512];

	snprintf(path, sizeof(path), "%s/%s", root, name);
	return path;
}

static inline struct store_ident ident(uint64_t ino, uint64_t size)
{
	return (struct store_ident){ .dev = 42, .ino = ino, .size = size,
				     .mtime_ns = 1000000000ll * (int64_t)ino,
				     .ctime_ns = 2000000000ll * (int64_t)ino };
}

/* A made-up SHA-256 of page i of content seed. */
struct dg {
	uint8_t b[STORE_SHA256_LEN];
};

static inline struct dg dg_of(unsigned seed, uint64_t i)
{
	uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed * 0xBF58476D1CE4E5B9ull;
	struct dg d;

	x ^= x >> 29;
	for (unsigned k = 0; k < sizeof(d.b); k++)
		d.b[k] = (uint8_t)(x >> (k % 8 * 8)) ^ (uint8_t)(k * 7 + seed);
	return d;
}

static const struct dg dg_12 = { { 1, 2 } };

static inline struct store *open_ok(const char *dir, uint64_t quota)
{
	struct store *s = NULL;
	int ret = store_open(dir, quota, false, &s);

	if (ret)
		fprintf(stderr, "store_open(%s): %s\n", dir, strerror(-ret));
	REQUIRE(ret == 0 && s);
	return s;
}

/* Pages [first, first + n) of id, each with its own digest of seed; or,
 * with ref, each the same content as page i of ref. */
static inline void put_range_ref(struct store *s,
				 const struct store_ident *id, uint64_t first,
				 uint64_t n, unsigned seed,
				 const struct store_ident *ref,
				 uint64_t ref_first)
{
	for (uint64_t i = first; i < first + n; i++) {
		struct dg d = dg_of(seed, ref ? ref_first + (i - first) : i);

		REQUIRE(store_put_page(s, id, i, d.b, ref,
				       ref_first + (i - first)) == 0);
	}
}

static inline void put_range(struct store *s, const struct store_ident *id,
			     uint64_t first, uint64_t n, unsigned seed)
{
	put_range_ref(s, id, first, n, seed, NULL, 0);
}

/* How many of pages [first, first + n) have a record, and whether every
 * one found is dg_of(seed, index - shift) (whole, or its tag). */
static inline unsigned count_fps_shift(struct store *s, uint64_t fid,
				       uint64_t first, unsigned n,
				       unsigned seed, uint64_t shift,
				       bool *right)
{
	static struct store_rec recs[4096];
	static struct store_group groups[4096];
	unsigned found = 0, ng = 4096;

	REQUIRE(n <= 4096);
	*right = true;
	if (store_get_recs(s, fid, first, n, recs, groups, &ng))
		return 0;
	for (unsigned i = 0; i < n; i++) {
		struct dg want = dg_of(seed, first + i - shift);

		if (recs[i].kind == STORE_REC_NONE)
			continue;
		found++;
		if (recs[i].kind == STORE_REC_DIGEST)
			*right &= !memcmp(recs[i].sha256, want.b, sizeof(want.b));
		else if (recs[i].kind == STORE_REC_GROUP)
			*right &= !memcmp(groups[recs[i].group].tag[recs[i].member],
					  want.b, STORE_TAG_LEN);
		else
			*right = false;
	}
	return found;
}

static inline unsigned count_fps(struct store *s, uint64_t fid,
				 uint64_t first, unsigned n, unsigned seed,
				 bool *right)
{
	return count_fps_shift(s, fid, first, n, seed, 0, right);
}

#endif
