/*
 * testcache: helpers the cache and dedup unit tests share: a cache of a
 * given size, open a file of the test directory through it, and read a
 * range through it and compare it with the seeded content (testfs.h) or
 * given bytes.
 */
#ifndef SAMEPAGE_TESTCACHE_H
#define SAMEPAGE_TESTCACHE_H

#include "testfs.h"
#include "cache.h"

/* A cache of bytes with a writeback interval short enough for tests. */
static inline struct cache *tc_new_cache(uint64_t bytes)
{
	struct cache_config cfg = { .size_bytes = bytes, .writeback_ms = 100 };
	struct cache *c;

	REQUIRE(cache_create(&cfg, &c) == 0);
	return c;
}

static inline struct cfile *tc_open(struct cache *c, const char *name)
{
	struct cfile *f;
	int pfd = testfs_open_path(name);

	REQUIRE(cfile_open(c, pfd, true, &f) == 0);
	close(pfd);
	return f;
}

/* Bytes [off, off + len) through the cache equal the seeded content of
 * the file (seed), zeros (seed 0 and no expect), or expect. */
static inline int tc_matches(struct cfile *f, uint64_t off, size_t len,
			     unsigned seed, const unsigned char *expect)
{
	unsigned char *got = malloc(len), *want = malloc(len);
	ssize_t r;
	int ok;

	REQUIRE(got && want);
	if (expect)
		memcpy(want, expect, len);
	else if (seed)
		testfs_fill(want, off, len, seed);
	else
		memset(want, 0, len);
	r = cache_pread(f, got, len, off);
	ok = r == (ssize_t)len && !memcmp(got, want, len);
	if (!ok)
		fprintf(stderr, "tc_matches: r=%zd len=%zu off=%llu\n", r, len,
			(unsigned long long)off);
	free(got);
	free(want);
	return ok;
}

#endif
