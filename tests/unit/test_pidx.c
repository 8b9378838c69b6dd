/* Unit tests of the page index: sparse terabyte offsets, tags, gang. */
#include "check.h"
#include "pidx.h"

#include <stdint.h>

static void test_pidx_empty_lookup(void)
{
	struct pidx p;

	pidx_init(&p);
	CHECK_EQ(pidx_lookup(&p, 0), 0);
	CHECK_EQ(pidx_lookup(&p, UINT64_MAX >> 12), 0);
	CHECK_EQ(pidx_erase(&p, 5), 0);
	pidx_destroy(&p);
}

static void test_pidx_sparse_terabytes(void)
{
	struct pidx p;
	/* pages at 0, 1 TiB, 2 TiB - 4 KiB and the top of a 64-bit offset */
	uint64_t idx[] = { 0, 1ull << 28, (2ull << 28) - 1, 63, 64, 4095,
			   (1ull << 52) - 1 };
	unsigned n = sizeof(idx) / sizeof(idx[0]);

	pidx_init(&p);
	for (unsigned i = 0; i < n; i++)
		CHECK_EQ(pidx_store(&p, idx[i], 100 + i), 0);
	CHECK_EQ(p.nr, n);
	for (unsigned i = 0; i < n; i++)
		CHECK_EQ(pidx_lookup(&p, idx[i]), 100 + i);
	CHECK_EQ(pidx_lookup(&p, 1), 0);
	CHECK_EQ(pidx_lookup(&p, (1ull << 28) + 1), 0);
	/* a sparse index costs a few nodes per page, not the file size */
	CHECK(p.bytes < n * 9 * 600);
	for (unsigned i = 0; i < n; i++)
		CHECK_EQ(pidx_erase(&p, idx[i]), 100 + i);
	CHECK_EQ(p.nr, 0);
	CHECK_EQ(p.bytes, 0);
	CHECK(p.root == NULL);
	pidx_destroy(&p);
}

static void test_pidx_replace_keeps_count(void)
{
	struct pidx p;

	pidx_init(&p);
	CHECK_EQ(pidx_store(&p, 7, 1), 0);
	CHECK_EQ(pidx_store(&p, 7, 2), 0);
	CHECK_EQ(p.nr, 1);
	CHECK_EQ(pidx_lookup(&p, 7), 2);
	CHECK_EQ(pidx_store(&p, 8, 0), -EINVAL);
	pidx_destroy(&p);
}

static void test_pidx_tags_find_only_dirty(void)
{
	struct pidx p;
	uint64_t idx[16];
	uint32_t fid[16];
	unsigned n;

	pidx_init(&p);
	for (uint64_t i = 0; i < 100000; i += 7)
		CHECK_EQ(pidx_store(&p, i, (uint32_t)(i + 1)), 0);
	pidx_tag_set(&p, 7 * 1000);
	pidx_tag_set(&p, 7 * 9000);
	pidx_tag_set(&p, 5); /* not present: ignored */
	CHECK_EQ(p.nr_tagged, 2);
	CHECK(pidx_tag_get(&p, 7000));
	CHECK(!pidx_tag_get(&p, 7007));
	n = pidx_gang(&p, 0, UINT64_MAX, true, idx, fid, 16);
	CHECK_EQ(n, 2);
	CHECK_EQ(idx[0], 7000);
	CHECK_EQ(idx[1], 63000);
	CHECK_EQ(fid[1], 63001);
	n = pidx_gang(&p, 7001, UINT64_MAX, true, idx, fid, 16);
	CHECK_EQ(n, 1);
	CHECK_EQ(idx[0], 63000);
	pidx_tag_clear(&p, 7000);
	CHECK_EQ(p.nr_tagged, 1);
	/* erasing a tagged slot clears its tag all the way up */
	pidx_erase(&p, 63000);
	CHECK_EQ(p.nr_tagged, 0);
	CHECK_EQ(pidx_gang(&p, 0, UINT64_MAX, true, idx, fid, 16), 0);
	pidx_destroy(&p);
}

static void test_pidx_gang_range_and_order(void)
{
	struct pidx p;
	uint64_t idx[64];
	uint32_t fid[64];
	uint64_t start = 0, seen = 0, last = 0;
	unsigned n;

	pidx_init(&p);
	for (uint64_t i = 1; i <= 5000; i++)
		pidx_store(&p, i * 131, (uint32_t)i);
	while ((n = pidx_gang(&p, start, UINT64_MAX, false, idx, fid, 64))) {
		for (unsigned k = 0; k < n; k++) {
			CHECK(idx[k] > last || seen == 0);
			CHECK_EQ(fid[k] * 131, idx[k]);
			last = idx[k];
			seen++;
		}
		start = idx[n - 1] + 1;
	}
	CHECK_EQ(seen, 5000);
	n = pidx_gang(&p, 131 * 10, 131 * 13, false, idx, fid, 64);
	CHECK_EQ(n, 3);
	CHECK_EQ(idx[0], 1310);
	CHECK_EQ(idx[2], 131 * 12);
	pidx_destroy(&p);
}

int main(void)
{
	RUN(test_pidx_empty_lookup);
	RUN(test_pidx_sparse_terabytes);
	RUN(test_pidx_replace_keeps_count);
	RUN(test_pidx_tags_find_only_dirty);
	RUN(test_pidx_gang_range_and_order);
	return CHECK_DONE();
}
