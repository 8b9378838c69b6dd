/*
 * Unit tests of kernel mode (cache.h, cfile_set_kernel_mode) without FUSE:
 * reads take no frame, written pages are kept only until written back,
 * entering kernel mode writes back and drops the file's private pages but
 * not the frames it shares, and reads find other files holding the same bytes
 * (a resident frame, or another kernel-mode file's pages); a file in
 * shared mode is said to have stopped sharing only after whole scans found
 * none of its pages shared.
 */
#include "testdedup.h"
#include "dedup_i.h" /* the ghost table's bound */

#define LEN (2u << 20)
#define NPAGES (LEN / PG)

static void stats(struct cache *c, struct cache_stats *cs)
{
	memset(cs, 0, sizeof(*cs));
	cache_get_stats(c, cs);
}

static void test_reads_take_no_frame(void)
{
	struct env e = new_env(64 << 20, NULL);
	struct cache_stats cs;
	struct cfile *f;

	testfs_make("kr", LEN + 100, 3);
	f = tc_open(e.c, "kr");
	CHECK_EQ(cfile_set_kernel_mode(f, true), 0);
	CHECK(cfile_kernel_mode(f));
	CHECK(tc_matches(f, 0, LEN + 100, 3, NULL));
	CHECK(tc_matches(f, PG - 7, 3 * PG, 3, NULL)); /* unaligned */
	stats(e.c, &cs);
	CHECK_EQ(cs.cache_bytes, 0);
	CHECK_EQ(cs.misses, 0);
	CHECK_EQ(cs.direct_read_pages, NPAGES + 1 + 4);
	CHECK_EQ(cfile_sharing_found(f), 0);
	cfile_put(f);
	free_env(&e);
}

static void test_writes_kept_until_written_back(void)
{
	struct env e = new_env(64 << 20, NULL);
	unsigned char model[8 * PG], disk[8 * PG], buf[2 * PG];
	struct cache_stats cs;
	struct cfile *f;

	testfs_make("kw", sizeof(model), 4);
	testfs_fill(model, 0, sizeof(model), 4);
	f = tc_open(e.c, "kw");
	CHECK_EQ(cfile_set_kernel_mode(f, true), 0);
	memset(buf, 0x5a, sizeof(buf));
	CHECK_EQ(cache_write(f, buf, sizeof(buf), 3 * PG - 10, false, NULL),
		 (ssize_t)sizeof(buf));
	memcpy(model + 3 * PG - 10, buf, sizeof(buf));
	/* Dirty in the cache until written back (the writeback thread may
	 * have been at it already), and read from there meanwhile. */
	stats(e.c, &cs);
	CHECK(cs.frames_dirty <= 3);
	CHECK(tc_matches(f, 0, sizeof(model), 0, model));
	/* Written back: on disk, and the cache keeps nothing. */
	CHECK_EQ(cache_fsync(f, false), 0);
	CHECK_EQ(testfs_read_backing("kw", disk, sizeof(disk), 0),
		 sizeof(disk));
	CHECK(!memcmp(disk, model, sizeof(disk)));
	stats(e.c, &cs);
	CHECK_EQ(cs.cache_bytes, 0);
	CHECK_EQ(cs.frames_dirty, 0);
	CHECK(tc_matches(f, 0, sizeof(model), 0, model));
	/* Past the end: the file grows, the gap reads as zeros. */
	CHECK_EQ(cache_write(f, "end", 3, 10 * PG, false, NULL), 3);
	CHECK_EQ(cfile_size(f), 10 * PG + 3);
	CHECK(tc_matches(f, 10 * PG, 3, 0, (const unsigned char *)"end"));
	CHECK(tc_matches(f, 8 * PG, 2 * PG, 0, NULL));
	cfile_put(f);
	free_env(&e);
}

static void test_entering_writes_back_drops_private_keeps_shared(void)
{
	struct env e = new_env(64 << 20, NULL);
	unsigned char buf[PG], disk[PG];
	struct cache_stats cs0, cs1;
	struct cfile *f[2];

	copies("ke", 2, LEN, 5, e.c, f);
	for (int i = 0; i < 2; i++)
		CHECK(tc_matches(f[i], 0, LEN, 5, NULL));
	/* f[1] gets one private, dirty page; the rest it shares. */
	memset(buf, 0x11, sizeof(buf));
	CHECK_EQ(cache_write(f[1], buf, PG, 7 * PG, false, NULL), PG);
	stats(e.c, &cs0);
	CHECK_EQ(cs0.cache_bytes, (uint64_t)(NPAGES + 1) * PG);
	CHECK_EQ(cfile_set_kernel_mode(f[1], true), 0);
	CHECK_EQ(testfs_read_backing("ke1", disk, PG, 7 * PG), PG);
	CHECK(!memcmp(disk, buf, PG));
	stats(e.c, &cs1);
	CHECK_EQ(cs1.cache_bytes, (uint64_t)NPAGES * PG);
	CHECK_EQ(cs1.frames_dirty, 0);
	/* Its shared pages still come from the frames: hits, not disk. */
	CHECK(tc_matches(f[1], 0, PG, 5, NULL));
	stats(e.c, &cs0);
	CHECK_EQ(cs0.direct_read_pages, 0);
	CHECK(tc_matches(f[1], 7 * PG, PG, 0, buf));
	stats(e.c, &cs1);
	CHECK_EQ(cs1.direct_read_pages, 1);
	CHECK(tc_matches(f[0], 0, LEN, 5, NULL));
	for (int i = 0; i < 2; i++)
		cfile_put(f[i]);
	free_env(&e);
}

static void test_reads_find_other_holders(void)
{
	struct env e = new_env(64 << 20, NULL);
	struct cfile *res[1], *k[2], *g[2], *u;

	/* A resident copy: the kernel-mode copy's first read finds it. */
	copies("kres", 1, LEN, 6, e.c, res);
	CHECK(tc_matches(res[0], 0, LEN, 6, NULL));
	copies("kcop", 1, LEN, 6, e.c, k);
	CHECK_EQ(cfile_set_kernel_mode(k[0], true), 0);
	CHECK(tc_matches(k[0], 0, PG, 6, NULL));
	CHECK(cfile_sharing_found(k[0]) > 0);
	/* Two kernel-mode copies, nothing resident: the second one's reads
	 * find the first one's (sampled) pages, and both are marked. */
	copies("kgh", 2, LEN, 7, e.c, g);
	for (int i = 0; i < 2; i++)
		CHECK_EQ(cfile_set_kernel_mode(g[i], true), 0);
	CHECK(tc_matches(g[0], 0, LEN, 7, NULL));
	CHECK_EQ(cfile_sharing_found(g[0]), 0);
	CHECK(tc_matches(g[1], 0, LEN, 7, NULL));
	CHECK(cfile_sharing_found(g[1]) > 0);
	CHECK(cfile_sharing_found(g[0]) > 0);
	/* A file of its own content finds nothing. */
	testfs_make("kuniq", LEN, 8);
	u = tc_open(e.c, "kuniq");
	CHECK_EQ(cfile_set_kernel_mode(u, true), 0);
	CHECK(tc_matches(u, 0, LEN, 8, NULL));
	CHECK_EQ(cfile_sharing_found(u), 0);
	/* Entering kernel mode afresh forgets what was found. */
	CHECK_EQ(cfile_set_kernel_mode(g[0], false), 0);
	CHECK(cfile_sharing_found(g[0]) > 0);
	CHECK_EQ(cfile_set_kernel_mode(g[0], true), 0);
	CHECK_EQ(cfile_sharing_found(g[0]), 0);
	cfile_put(res[0]);
	cfile_put(k[0]);
	cfile_put(g[0]);
	cfile_put(g[1]);
	cfile_put(u);
	free_env(&e);
}

static unsigned ghost_generation(struct env *e)
{
	unsigned g;

	pthread_mutex_lock(&e->c->map_lock);
	g = e->d->ghost_new;
	CHECK(e->d->ghost[0].len + e->d->ghost[1].len <= e->d->ghost_max);
	pthread_mutex_unlock(&e->c->map_lock);
	return g;
}

/* The ghost table is bounded and, full, forgets its older half only: a
 * copy read just before the table filled up is still found after. */
static void test_ghost_table_keeps_the_newest_reads(void)
{
	struct env e = new_env(8 << 20, NULL);
	uint64_t big = 64u << 20, off;
	struct cfile *g[2], *u;
	unsigned gen;

	copies("kgn", 2, LEN, 12, e.c, g);
	for (int i = 0; i < 2; i++)
		CHECK_EQ(cfile_set_kernel_mode(g[i], true), 0);
	CHECK(tc_matches(g[0], 0, LEN, 12, NULL));
	/* Other reads, until the generation g[0]'s pages went into is full. */
	testfs_make("kgu", big, 11);
	u = tc_open(e.c, "kgu");
	CHECK_EQ(cfile_set_kernel_mode(u, true), 0);
	gen = ghost_generation(&e);
	for (off = 0; off < big && ghost_generation(&e) == gen;
	     off += 16 * PG)
		CHECK(tc_matches(u, off, 16 * PG, 11, NULL));
	CHECK(off < big);
	CHECK(tc_matches(g[1], 0, LEN, 12, NULL));
	CHECK(cfile_sharing_found(g[1]) > 0);
	CHECK(cfile_sharing_found(g[0]) > 0);
	CHECK_EQ(cfile_sharing_found(u), 0);
	cfile_put(u);
	cfile_put(g[0]);
	cfile_put(g[1]);
	free_env(&e);
}

static void test_stopped_sharing_needs_scans_and_no_sharer(void)
{
	struct env e = new_env(64 << 20, NULL);
	struct cfile *f[2], *u;
	uint64_t since, before;

	/* Two copies, resident and merged: they share. */
	copies("kst", 2, LEN, 9, e.c, f);
	for (int i = 0; i < 2; i++)
		CHECK(tc_matches(f[i], 0, LEN, 9, NULL));
	since = before = dedup_full_scans(e.d);
	/* Too early: the scan under way may not have seen them. */
	CHECK(!dedup_file_stopped_sharing(e.d, f[0], &since));
	CHECK_EQ(since, before);
	/* After whole scans: it shares; asked again only later. */
	CHECK_EQ(dedup_scan_now(e.d, true), 0);
	CHECK(!dedup_file_stopped_sharing(e.d, f[0], &since));
	CHECK(since >= before + 2);
	/* The other copy's pages go: too early again, then after the
	 * scans nothing of f[0] is shared any more. */
	CHECK_EQ(cache_invalidate_file(f[1]), 0);
	cfile_put(f[1]);
	CHECK(!dedup_file_stopped_sharing(e.d, f[0], &since));
	CHECK_EQ(dedup_scan_now(e.d, true), 0);
	CHECK(dedup_file_stopped_sharing(e.d, f[0], &since));
	/* A file with no resident page gives no evidence either way. */
	testfs_make("kst-none", LEN, 10);
	u = tc_open(e.c, "kst-none");
	since = 0;
	CHECK_EQ(dedup_scan_now(e.d, true), 0);
	CHECK(!dedup_file_stopped_sharing(e.d, u, &since));
	cfile_put(u);
	cfile_put(f[0]);
	free_env(&e);
}

int main(void)
{
	testfs_init();
	RUN(test_reads_take_no_frame);
	RUN(test_writes_kept_until_written_back);
	RUN(test_entering_writes_back_drops_private_keeps_shared);
	RUN(test_reads_find_other_holders);
	RUN(test_ghost_table_keeps_the_newest_reads);
	RUN(test_stopped_sharing_needs_scans_and_no_sharer);
	return CHECK_DONE();
}
