/*
 * Unit tests of content merging without FUSE: merge on fill, copy-on-write
 * isolation, zero pages, the scanner re-merging written pages, the reverse
 * map across truncate and release, max_page_sharing (and stable_chains, a
 * gauge) and the uid scope. Persistence is in test_persist.c.
 */
#include "testdedup.h"

static void test_identical_copies_share_frames(void)
{
	struct env e = new_env(64 << 20, NULL);
	struct cfile *f[8];
	struct dedup_stats ds;
	struct cache_stats cs;

	copies("same", 8, 2 << 20, 1, e.c, f);
	for (int i = 0; i < 8; i++)
		CHECK(tc_matches(f[i], 0, 2 << 20, 1, NULL));
	dedup_get_stats(e.d, &ds);
	cache_get_stats(e.c, &cs);
	/* one copy's frames (512 pages) hold all eight */
	CHECK(cs.cache_bytes <= (512 + 8) * PG);
	CHECK_EQ(ds.pages_shared, 512);
	CHECK_EQ(ds.pages_sharing, 7 * 512);
	CHECK_EQ(ds.content_merges, 7 * 512);
	CHECK_EQ(ds.hashes_computed, 8 * 512);
	CHECK(ds.general_profit > 0);
	for (int i = 0; i < 8; i++)
		cfile_put(f[i]);
	free_env(&e);
}

static void test_cow_write_seen_by_writer_only(void)
{
	struct env e = new_env(64 << 20, NULL);
	struct cfile *f[3];
	unsigned char model[16 * PG];
	struct {
		uint64_t off;
		size_t len;
	} w[] = { { 0, 1 }, { PG - 1, 1 }, { PG, PG }, { 3 * PG - 5, 10 },
		  { 5 * PG + 100, 3 * PG }, { 15 * PG, PG } };
	struct cache_stats cs;

	copies("cow", 3, sizeof(model), 2, e.c, f);
	for (int i = 0; i < 3; i++)
		CHECK(tc_matches(f[i], 0, sizeof(model), 2, NULL));
	testfs_fill(model, 0, sizeof(model), 2);
	for (unsigned k = 0; k < sizeof(w) / sizeof(w[0]); k++) {
		unsigned char buf[3 * PG];

		memset(buf, 0x40 + k, w[k].len);
		memcpy(model + w[k].off, buf, w[k].len);
		CHECK_EQ(cache_write(f[1], buf, w[k].len, w[k].off, false,
				     NULL), (ssize_t)w[k].len);
		CHECK(tc_matches(f[1], 0, sizeof(model), 0, model));
		CHECK(tc_matches(f[0], 0, sizeof(model), 2, NULL));
		CHECK(tc_matches(f[2], 0, sizeof(model), 2, NULL));
	}
	cache_get_stats(e.c, &cs);
	CHECK(cs.cow_breaks >= 7);
	CHECK_EQ(cache_fsync(f[1], false), 0);
	unsigned char disk[sizeof(model)];
	CHECK_EQ(testfs_read_backing("cow1", disk, sizeof(disk), 0),
		 sizeof(disk));
	CHECK(!memcmp(disk, model, sizeof(disk)));
	CHECK_EQ(testfs_read_backing("cow0", disk, sizeof(disk), 0),
		 sizeof(disk));
	testfs_fill(model, 0, sizeof(model), 2);
	CHECK(!memcmp(disk, model, sizeof(disk)));
	for (int i = 0; i < 3; i++)
		cfile_put(f[i]);
	free_env(&e);
}

static void test_zero_pages_share_one_frame(void)
{
	struct env e = new_env(64 << 20, NULL);
	struct cfile *f;
	struct dedup_stats ds;
	struct cache_stats cs;

	testfs_make("zeros", 1000 * PG, 0);
	f = tc_open(e.c, "zeros");
	CHECK(tc_matches(f, 0, 1000 * PG, 0, NULL));
	dedup_get_stats(e.d, &ds);
	cache_get_stats(e.c, &cs);
	CHECK_EQ(ds.zero_pages, 1000);
	CHECK(cs.cache_bytes <= 70 * PG); /* only fills in flight */
	/* writing into a zero page breaks it away from the zero frame */
	CHECK_EQ(cache_write(f, "q", 1, 10 * PG, false, NULL), 1);
	unsigned char model[PG] = { 'q' };
	CHECK(tc_matches(f, 10 * PG, PG, 0, model));
	CHECK(tc_matches(f, 11 * PG, PG, 0, NULL));
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.zero_pages, 999);
	cfile_put(f);
	free_env(&e);
}

static void test_scanner_remerges_written_page(void)
{
	struct env e = new_env(64 << 20, NULL);
	struct cfile *f[2];
	struct dedup_stats ds;
	unsigned char orig[PG];

	copies("re", 2, 8 * PG, 3, e.c, f);
	CHECK(tc_matches(f[0], 0, 8 * PG, 3, NULL));
	CHECK(tc_matches(f[1], 0, 8 * PG, 3, NULL));
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.pages_sharing, 8);
	/* change page 2 of copy 1, then put the old bytes back */
	CHECK_EQ(cache_write(f[1], "xxxx", 4, 2 * PG, false, NULL), 4);
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.pages_sharing, 7);
	CHECK(ds.pages_volatile >= 1);
	testfs_fill(orig, 2 * PG, PG, 3);
	CHECK_EQ(cache_write(f[1], orig, PG, 2 * PG, false, NULL), PG);
	CHECK_EQ(cache_fsync(f[1], false), 0);
	/* two passes: one to note the checksum, one to find it unchanged */
	CHECK_EQ(dedup_scan_now(e.d, true), 0);
	CHECK_EQ(dedup_scan_now(e.d, true), 0);
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.pages_sharing, 8);
	CHECK_EQ(ds.pages_volatile, 0);
	CHECK(ds.full_scans >= 2);
	CHECK(tc_matches(f[1], 0, 8 * PG, 3, NULL));
	cfile_put(f[0]);
	cfile_put(f[1]);
	free_env(&e);
}

static void test_scanner_merges_two_written_copies(void)
{
	struct env e = new_env(64 << 20, NULL);
	struct cfile *f[2];
	unsigned char buf[4 * PG];
	struct dedup_stats ds;

	testfs_fill(buf, 0, sizeof(buf), 4);
	copies("wr", 2, 0, 0, e.c, f);
	/* written (not read) pages: only the scanner can merge them */
	for (int i = 0; i < 2; i++) {
		CHECK_EQ(cache_write(f[i], buf, sizeof(buf), 0, false, NULL),
			 (ssize_t)sizeof(buf));
		CHECK_EQ(cache_fsync(f[i], false), 0);
	}
	CHECK_EQ(dedup_scan_now(e.d, true), 0);
	CHECK_EQ(dedup_scan_now(e.d, true), 0);
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.pages_sharing, 4);
	CHECK(tc_matches(f[0], 0, sizeof(buf), 4, NULL));
	/* and a write after the merge is still private */
	CHECK_EQ(cache_write(f[0], "!", 1, PG, false, NULL), 1);
	CHECK(tc_matches(f[1], 0, sizeof(buf), 4, NULL));
	cfile_put(f[0]);
	cfile_put(f[1]);
	free_env(&e);
}

static void test_truncate_and_release_keep_other_copy(void)
{
	struct env e = new_env(64 << 20, NULL);
	struct cfile *f[3];
	struct dedup_stats ds;

	copies("tr", 3, 64 * PG, 5, e.c, f);
	for (int i = 0; i < 3; i++)
		CHECK(tc_matches(f[i], 0, 64 * PG, 5, NULL));
	CHECK_EQ(cache_truncate(f[0], 10 * PG + 7), 0);
	CHECK(tc_matches(f[1], 0, 64 * PG, 5, NULL));
	cfile_set_orphan(f[2], true); /* unlink-and-close of a copy */
	cfile_put(f[2]);
	CHECK(tc_matches(f[1], 0, 64 * PG, 5, NULL));
	CHECK(tc_matches(f[0], 0, 10 * PG + 7, 5, NULL));
	dedup_get_stats(e.d, &ds);
	/* f0 keeps 10 whole pages on f1's frames; its tail page differs */
	CHECK_EQ(ds.pages_sharing, 10);
	cfile_put(f[0]);
	cfile_put(f[1]);
	free_env(&e);
}

static void tune_max2(struct dedup_config *dc)
{
	dc->max_page_sharing = 2;
}

static void test_max_page_sharing_chains(void)
{
	struct env e = new_env(64 << 20, tune_max2);
	struct cfile *f[5];
	struct dedup_stats ds;
	struct cache_stats cs;

	copies("mx", 5, 4 * PG, 6, e.c, f);
	for (int i = 0; i < 5; i++)
		CHECK(tc_matches(f[i], 0, 4 * PG, 6, NULL));
	dedup_get_stats(e.d, &ds);
	cache_get_stats(e.c, &cs);
	/* five copies, two per frame: three frames per page, two of them
	 * there because the first was full */
	CHECK_EQ(ds.stable_chains, 2 * 4);
	CHECK_EQ(ds.pages_sharing, 2 * 4);
	CHECK(cs.cache_bytes >= 12 * PG);
	for (int i = 0; i < 5; i++)
		cfile_put(f[i]);
	free_env(&e);
}

/*
 * stable_chains counts the extra frames that exist, not the times a full
 * frame was met: the scanner passing again and again over written pages
 * identical to full frames leaves it alone, a pair of them made stable
 * adds one per page, and a chain frame leaving the tree takes one away.
 */
static void test_stable_chains_is_a_gauge(void)
{
	struct env e = new_env(64 << 20, tune_max2);
	struct cfile *f[4], *w[2];
	unsigned char buf[4 * PG];
	struct dedup_stats ds;

	copies("gc", 4, sizeof(buf), 21, e.c, f);
	for (int i = 0; i < 4; i++)
		CHECK(tc_matches(f[i], 0, sizeof(buf), 21, NULL));
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.stable_chains, 4);          /* two full frames a page */

	/* Written pages of that content meet only full frames. */
	testfs_fill(buf, 0, sizeof(buf), 21);
	copies("gcw", 2, 0, 0, e.c, w);
	CHECK_EQ(cache_write(w[0], buf, sizeof(buf), 0, false, NULL),
		 (ssize_t)sizeof(buf));
	CHECK_EQ(cache_fsync(w[0], false), 0);
	for (int pass = 0; pass < 3; pass++)
		CHECK_EQ(dedup_scan_now(e.d, true), 0);
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.pages_sharing, 2 * 4);
	CHECK_EQ(ds.stable_chains, 4);

	/* A second written copy pairs with the first: one more frame. */
	CHECK_EQ(cache_write(w[1], buf, sizeof(buf), 0, false, NULL),
		 (ssize_t)sizeof(buf));
	CHECK_EQ(cache_fsync(w[1], false), 0);
	for (int pass = 0; pass < 3; pass++)
		CHECK_EQ(dedup_scan_now(e.d, true), 0);
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.pages_sharing, 3 * 4);
	CHECK_EQ(ds.stable_chains, 2 * 4);

	/* Page 0 of both written: its chain frame leaves the tree. */
	CHECK_EQ(cache_write(w[1], "!", 1, 0, false, NULL), 1);
	CHECK_EQ(cache_write(w[0], "!", 1, 0, false, NULL), 1);
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.stable_chains, 2 * 4 - 1);
	for (int i = 0; i < 4; i++)
		cfile_put(f[i]);
	for (int i = 0; i < 2; i++)
		cfile_put(w[i]);
	free_env(&e);
}

static void tune_uid(struct dedup_config *dc)
{
	dc->scope = DEDUP_SCOPE_UID;
}

static void test_uid_scope_never_shares_across_owners(void)
{
	struct env e = new_env(64 << 20, tune_uid);
	struct cfile *f[4];
	struct dedup_stats ds;
	/* root twice, and two owners whose uids differ from root's and from
	 * each other by multiples of 65535 (a naive 16-bit tag would mix
	 * them) */
	uid_t owner[4] = { 0, 0, 65535, 131070 };
	char path[512];

	for (int i = 0; i < 4; i++) {
		char name[16];

		snprintf(name, sizeof(name), "own%d", i);
		testfs_make(name, 8 * PG, 7);
		snprintf(path, sizeof(path), "%s/%s", testfs_dir, name);
		REQUIRE(chown(path, owner[i], owner[i]) == 0);
		f[i] = tc_open(e.c, name);
		CHECK(tc_matches(f[i], 0, 8 * PG, 7, NULL));
	}
	dedup_get_stats(e.d, &ds);
	/* own0 and own1 (same owner) share; the others keep their frames */
	CHECK_EQ(ds.pages_sharing, 8);
	for (int i = 0; i < 4; i++)
		cfile_put(f[i]);
	free_env(&e);
}

static void test_eviction_of_shared_frames(void)
{
	/* 100 frames for 4 copies of 64 pages: shared frames get evicted
	 * from all mappers and come back right */
	struct env e = new_env(100 * PG, NULL);
	struct cfile *f[4], *g;
	struct cache_stats cs;

	copies("ev", 4, 64 * PG, 8, e.c, f);
	testfs_make("evother", 256 * PG, 9);
	g = tc_open(e.c, "evother");
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 4; i++)
			CHECK(tc_matches(f[i], 0, 64 * PG, 8, NULL));
		CHECK(tc_matches(g, 0, 256 * PG, 9, NULL));
	}
	cache_get_stats(e.c, &cs);
	CHECK(cs.evictions > 0);
	CHECK(cs.cache_bytes <= 102 * PG);
	for (int i = 0; i < 4; i++)
		cfile_put(f[i]);
	cfile_put(g);
	free_env(&e);
}

int main(void)
{
	testfs_init();
	RUN(test_identical_copies_share_frames);
	RUN(test_cow_write_seen_by_writer_only);
	RUN(test_zero_pages_share_one_frame);
	RUN(test_scanner_remerges_written_page);
	RUN(test_scanner_merges_two_written_copies);
	RUN(test_truncate_and_release_keep_other_copy);
	RUN(test_max_page_sharing_chains);
	RUN(test_stable_chains_is_a_gauge);
	RUN(test_uid_scope_never_shares_across_owners);
	RUN(test_eviction_of_shared_frames);
	return CHECK_DONE();
}
