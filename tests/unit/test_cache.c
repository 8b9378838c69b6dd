/*
 * Unit tests of the cache without FUSE: the frame life cycle, reads and
 * writes against real backing files, eviction under the budget, writeback,
 * truncate, punch hole and close-to-open revalidation.
 */
#include "testcache.h"
#include "cache_i.h"

#include <linux/falloc.h>
#include <pthread.h>

#define PG 4096u

static void test_frame_alloc_free_budget(void)
{
	struct frame_table t;
	uint32_t got[40];
	unsigned n = 0;

	CHECK_EQ(frame_table_init(&t, 34, 64), 0);
	while (n < 40 && (got[n] = frame_alloc_locked(&t)))
		n++;
	/* limit 34 counts the zero frame: 33 frames */
	CHECK_EQ(n, 33);
	CHECK_EQ(t.used, 34);
	for (unsigned i = 0; i < n; i++) {
		CHECK(got[i] >= FID_FIRST);
		frame_free_locked(&t, got[i]);
	}
	CHECK_EQ(t.used, 1);
	/* freed frames are reused before untouched ones */
	CHECK_EQ(frame_alloc_locked(&t), got[n - 1]);
	frame_table_fini(&t);
}

static void test_frame_mappers_inline_then_list(void)
{
	struct frame_table t;
	struct cfile fa = { 0 }, fb = { 0 }, *a = &fa, *b = &fb;
	struct mapper m[4];
	uint32_t fid;

	CHECK_EQ(frame_table_init(&t, 16, 16), 0);
	a->map_number = frame_file_number(&t, a);
	b->map_number = frame_file_number(&t, b);
	CHECK(a->map_number && b->map_number != a->map_number);
	CHECK_EQ(sizeof(struct frame), 48);
	CHECK_EQ(sizeof(struct mapping), 8);
	fid = frame_alloc_locked(&t);
	CHECK_EQ(frame_add_mapper(&t, fid, a, 1), 0);
	CHECK_EQ(t.rmap_bytes, 0); /* one mapper: inline, no list */
	CHECK_EQ(frame_add_mapper(&t, fid, b, 2), 0);
	CHECK_EQ(frame_add_mapper(&t, fid, b, 3), 0);
	CHECK(t.rmap_bytes > 0);
	CHECK_EQ(t.nr_shared, 1);
	CHECK_EQ(t.nr_sharing, 2);
	CHECK_EQ(frame_mappers(&t, fid, m, 4), 3);
	CHECK(!frame_del_mapper(&t, fid, b, 2));
	CHECK(!frame_del_mapper(&t, fid, a, 1));
	CHECK_EQ(t.rmap_bytes, 0); /* back to inline */
	CHECK_EQ(t.nr_shared, 0);
	CHECK_EQ(frame_mappers(&t, fid, m, 4), 1);
	CHECK(m[0].file == b && m[0].index == 3);
	CHECK(frame_del_mapper(&t, fid, b, 3)); /* last one: orphan */
	CHECK(frame_flags(&t.frames[fid]) & F_ORPHAN);
	/* a page index past what a mapping holds is refused */
	CHECK_EQ(frame_add_mapper(&t, fid, a, MAP_INDEX_MAX + 1), -EFBIG);
	/* numbers are given back and reused */
	frame_file_release(&t, a->map_number);
	CHECK_EQ(frame_file_number(&t, b), a->map_number);
	frame_table_fini(&t);
}

static void test_read_miss_then_hit(void)
{
	struct cache *c = tc_new_cache(16 << 20);
	struct cache_stats st;
	struct cfile *f;

	testfs_make("r1", 1 << 20, 1);
	f = tc_open(c, "r1");
	CHECK(tc_matches(f, 0, 1 << 20, 1, NULL));
	cache_get_stats(c, &st);
	CHECK_EQ(st.misses, 256);
	CHECK_EQ(st.backing_read_bytes, 1 << 20);
	/* neighbouring misses are batched into few requests */
	CHECK(st.backing_reads <= 8);
	CHECK(tc_matches(f, 5000, 70000, 1, NULL));
	cache_get_stats(c, &st);
	CHECK_EQ(st.misses, 256);
	CHECK(st.hits >= 18);
	CHECK_EQ(st.cache_bytes, 256 * PG);
	/* reads stop at EOF */
	char b[16];
	CHECK_EQ(cache_pread(f, b, 16, (1 << 20) - 4), 4);
	CHECK_EQ(cache_pread(f, b, 16, 1 << 20), 0);
	cfile_put(f);
	cache_destroy(c);
}

static void test_write_unaligned_and_writeback(void)
{
	struct cache *c = tc_new_cache(16 << 20);
	unsigned char model[5 * PG + 100], got[sizeof(model)];
	struct cfile *f;
	uint64_t where;

	testfs_make("w1", 3 * PG + 10, 2);
	testfs_fill(model, 0, 3 * PG + 10, 2);
	f = tc_open(c, "w1");
	/* across a page boundary, partial pages not yet read */
	memset(model + PG - 3, 0xAB, 10);
	CHECK_EQ(cache_write(f, model + PG - 3, 10, PG - 3, false, &where), 10);
	/* extending write past EOF leaves a zero gap */
	memset(model + 3 * PG + 10, 0, sizeof(model) - (3 * PG + 10));
	memset(model + 4 * PG + 50, 0xCD, PG + 50);
	CHECK_EQ(cache_write(f, model + 4 * PG + 50, PG + 50, 4 * PG + 50,
			     false, NULL), PG + 50);
	CHECK_EQ(cfile_size(f), sizeof(model));
	CHECK(tc_matches(f, 0, sizeof(model), 0, model));
	CHECK(cfile_has_dirty(f));
	/* nothing reached the disk yet; fsync writes it all */
	CHECK_EQ(cache_fsync(f, false), 0);
	CHECK(!cfile_has_dirty(f));
	CHECK_EQ(testfs_read_backing("w1", got, sizeof(got) + 1, 0),
		 sizeof(model));
	CHECK(!memcmp(got, model, sizeof(model)));
	/* append goes to the end whatever the offset says */
	CHECK_EQ(cache_write(f, "xyz", 3, 0, true, &where), 3);
	CHECK_EQ(where, sizeof(model));
	CHECK_EQ(cfile_size(f), sizeof(model) + 3);
	CHECK_EQ(cache_flush_file(f), 0); /* what close does */
	CHECK_EQ(testfs_read_backing("w1", got, 3, sizeof(model)), 3);
	cfile_put(f);
	CHECK(!memcmp(got, "xyz", 3));
	cache_destroy(c);
}

static void test_eviction_under_budget(void)
{
	/* 64 frames for a 4 MiB file */
	struct cache *c = tc_new_cache(64 * PG);
	struct cache_stats st;
	struct cfile *f;

	testfs_make("big", 4 << 20, 3);
	f = tc_open(c, "big");
	CHECK(tc_matches(f, 0, 4 << 20, 3, NULL));
	CHECK(tc_matches(f, 1 << 20, 1 << 20, 3, NULL));
	cache_get_stats(c, &st);
	CHECK(st.cache_bytes <= st.cache_limit_bytes);
	CHECK(st.evictions > 900);
	cfile_put(f);
	cache_destroy(c);
}

static void test_dirty_beyond_budget_makes_progress(void)
{
	struct cache *c = tc_new_cache(64 * PG);
	unsigned char *buf = malloc(8 << 20);
	struct cfile *f;

	REQUIRE(buf);
	testfs_make("dirty", 0, 0);
	testfs_fill(buf, 0, 8 << 20, 4);
	f = tc_open(c, "dirty");
	/* 8 MiB of writes through 256 KiB of frames: writeback must clean
	 * frames for the writer to go on */
	for (size_t off = 0; off < (8u << 20); off += 100000) {
		size_t n = (8u << 20) - off < 100000 ? (8u << 20) - off : 100000;

		CHECK_EQ(cache_write(f, buf + off, n, off, false, NULL),
			 (ssize_t)n);
	}
	CHECK_EQ(cache_fsync(f, false), 0);
	CHECK(tc_matches(f, 0, 8 << 20, 4, NULL));
	unsigned char *disk = malloc(8 << 20);
	CHECK_EQ(testfs_read_backing("dirty", disk, 8 << 20, 0), 8 << 20);
	CHECK(!memcmp(disk, buf, 8 << 20));
	free(disk);
	free(buf);
	cfile_put(f);
	cache_destroy(c);
}

static void test_pinned_frame_not_evicted(void)
{
	struct cache *c = tc_new_cache(32 * PG);
	struct cache_read_ctx *rc = malloc(sizeof(*rc));
	struct cfile *f;
	unsigned char first[PG];

	testfs_make("pin", 1 << 20, 5);
	f = tc_open(c, "pin");
	cache_read_ctx_init(rc);
	CHECK_EQ(cache_read(f, 0, PG, rc), 0);
	CHECK_EQ(rc->niov, 1);
	memcpy(first, rc->iov[0].iov_base, PG);
	/* churn the rest of the cache while page 0 is pinned */
	CHECK(tc_matches(f, PG, (1 << 20) - PG, 5, NULL));
	CHECK(!memcmp(first, rc->iov[0].iov_base, PG));
	testfs_fill(first, 0, PG, 5);
	CHECK(!memcmp(first, rc->iov[0].iov_base, PG));
	cache_read_release(f, rc);
	cache_read_ctx_fini(rc);
	free(rc);
	cfile_put(f);
	cache_destroy(c);
}

static void test_large_read_in_tiny_cache_bounces(void)
{
	/* 20 frames cannot hold a 1 MiB reply: the read still succeeds */
	struct cache *c = tc_new_cache(20 * PG);
	struct cache_read_ctx *rc = malloc(sizeof(*rc));
	unsigned char *want = malloc(1 << 20);
	struct cfile *f;

	testfs_make("tiny", 2 << 20, 6);
	f = tc_open(c, "tiny");
	cache_read_ctx_init(rc);
	CHECK_EQ(cache_read(f, 12345, 1 << 20, rc), 0);
	CHECK_EQ(rc->bytes, 1 << 20);
	testfs_fill(want, 12345, 1 << 20, 6);
	size_t at = 0;
	for (unsigned i = 0; i < rc->niov; i++) {
		CHECK(!memcmp((char *)rc->iov[i].iov_base, want + at,
			      rc->iov[i].iov_len));
		at += rc->iov[i].iov_len;
	}
	CHECK_EQ(at, 1 << 20);
	cache_read_release(f, rc);
	cache_read_ctx_fini(rc);
	free(rc);
	free(want);
	cfile_put(f);
	cache_destroy(c);
}

static void test_truncate_zeroes_tail(void)
{
	struct cache *c = tc_new_cache(1 << 20);
	unsigned char model[3 * PG];
	struct cfile *f;

	testfs_make("t", 3 * PG, 7);
	f = tc_open(c, "t");
	CHECK(tc_matches(f, 0, 3 * PG, 7, NULL));
	CHECK_EQ(cache_truncate(f, PG + 100), 0);
	CHECK_EQ(cfile_size(f), PG + 100);
	CHECK_EQ(cache_truncate(f, 3 * PG), 0);
	testfs_fill(model, 0, PG + 100, 7);
	memset(model + PG + 100, 0, sizeof(model) - PG - 100);
	CHECK(tc_matches(f, 0, 3 * PG, 0, model));
	/* dirty tail page: zeroed in place */
	CHECK_EQ(cache_write(f, "abcdefgh", 8, 2 * PG + 10, false, NULL), 8);
	CHECK_EQ(cache_truncate(f, 2 * PG + 12), 0);
	CHECK_EQ(cache_truncate(f, 3 * PG), 0);
	memcpy(model + 2 * PG + 10, "ab", 2);
	CHECK(tc_matches(f, 0, 3 * PG, 0, model));
	CHECK_EQ(cache_fsync(f, false), 0);
	unsigned char disk[3 * PG];
	CHECK_EQ(testfs_read_backing("t", disk, sizeof(disk), 0), 3 * PG);
	CHECK(!memcmp(disk, model, sizeof(disk)));
	cfile_put(f);
	cache_destroy(c);
}

static void test_punch_hole_drops_cached_pages(void)
{
	struct cache *c = tc_new_cache(1 << 20);
	unsigned char model[8 * PG];
	struct cfile *f;

	testfs_make("p", 8 * PG, 8);
	testfs_fill(model, 0, sizeof(model), 8);
	f = tc_open(c, "p");
	CHECK(tc_matches(f, 0, 8 * PG, 8, NULL));
	/* a dirty page inside the hole must not come back */
	CHECK_EQ(cache_write(f, "zz", 2, 3 * PG, false, NULL), 2);
	CHECK_EQ(cache_fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				 PG + 100, 4 * PG), 0);
	memset(model + PG + 100, 0, 4 * PG);
	CHECK(tc_matches(f, 0, 8 * PG, 0, model));
	CHECK_EQ(cfile_size(f), 8 * PG);
	cfile_put(f);
	cache_destroy(c);
}

static void test_revalidate_sees_change_behind(void)
{
	struct cache *c = tc_new_cache(1 << 20);
	struct cfile *f;

	testfs_make("cto", 2 * PG, 9);
	f = tc_open(c, "cto");
	CHECK(tc_matches(f, 0, 2 * PG, 9, NULL));
	usleep(20000); /* a distinct mtime */
	testfs_make("cto", 3 * PG, 10);
	/* without revalidation the cache keeps serving what it has... */
	CHECK_EQ(cfile_revalidate(f), 0);
	/* ...and with it, the new content and size */
	CHECK_EQ(cfile_size(f), 3 * PG);
	CHECK(tc_matches(f, 0, 3 * PG, 10, NULL));
	cfile_put(f);
	cache_destroy(c);
}

struct rw_arg {
	struct cfile *f;
	unsigned seed;
	uint64_t base;
};

static void *rw_thread(void *p)
{
	struct rw_arg *a = p;
	unsigned char buf[3 * PG];

	for (int round = 0; round < 50; round++) {
		uint64_t off = a->base + (uint64_t)(round % 10) * 3 * PG + 7;

		testfs_fill(buf, off, sizeof(buf), a->seed);
		if (cache_write(a->f, buf, sizeof(buf), off, false, NULL) !=
		    sizeof(buf))
			return (void *)1;
		if (!tc_matches(a->f, off, sizeof(buf), a->seed, NULL))
			return (void *)1;
	}
	return NULL;
}

static void test_concurrent_writers_tiny_cache(void)
{
	struct cache *c = tc_new_cache(24 * PG);
	pthread_t th[4];
	struct rw_arg a[4];
	struct cfile *f;

	testfs_make("conc", 1 << 20, 11);
	f = tc_open(c, "conc");
	for (int i = 0; i < 4; i++) {
		a[i] = (struct rw_arg){ f, 20 + i, (uint64_t)i * 200 * PG };
		REQUIRE(pthread_create(&th[i], NULL, rw_thread, &a[i]) == 0);
	}
	for (int i = 0; i < 4; i++) {
		void *r;

		pthread_join(th[i], &r);
		CHECK(r == NULL);
	}
	CHECK_EQ(cache_fsync(f, false), 0);
	cfile_put(f);
	cache_destroy(c);
}

/* Two writers of one range, each with its own byte, start together round
 * after round; two appenders add tagged records meanwhile. A write is
 * applied whole, never mixed with another. */
#define OVL_PAGES 40u
#define OVL_OFF 100u /* partial first and last pages */
#define OVL_ROUNDS 100
#define REC 100u

struct ovl_arg {
	struct cfile *f;
	pthread_barrier_t *bar;  /* the two range writers */
	unsigned char byte;
	int bad;                 /* writes that failed, rounds found mixed */
};

static bool ovl_uniform(struct cfile *f)
{
	static unsigned char got[OVL_PAGES * PG];

	if (cache_pread(f, got, sizeof(got), OVL_OFF) != sizeof(got))
		return false;
	for (size_t i = 1; i < sizeof(got); i++)
		if (got[i] != got[0])
			return false;
	return true;
}

static void *ovl_thread(void *p)
{
	struct ovl_arg *a = p;
	static unsigned char bufs[4][OVL_PAGES * PG];
	unsigned char *buf = bufs[a->byte & 3];
	bool append = !a->bar;

	memset(buf, a->byte, sizeof(bufs[0]));
	for (int round = 0; round < OVL_ROUNDS; round++) {
		ssize_t want = append ? REC : (ssize_t)sizeof(bufs[0]);
		uint64_t at;

		if (append)
			memcpy(buf, &round, sizeof(round));
		else
			pthread_barrier_wait(a->bar);
		if (cache_write(a->f, buf, (size_t)want, OVL_OFF, append,
				&at) != want)
			a->bad++;
		if (!append && pthread_barrier_wait(a->bar) &&
		    !ovl_uniform(a->f))
			a->bad++; /* one of the two checks, the other waits */
		if (!append)
			pthread_barrier_wait(a->bar);
	}
	return NULL;
}

static void test_overlapping_writes_do_not_interleave(void)
{
	struct cache *c = tc_new_cache(64 * PG);
	uint64_t end = OVL_OFF + OVL_PAGES * PG;
	struct ovl_arg a[4];
	pthread_barrier_t bar;
	pthread_t th[4];
	struct cfile *f;
	int next[2] = { 0, 0 };

	testfs_make("ovl", end, 41);
	f = tc_open(c, "ovl");
	pthread_barrier_init(&bar, NULL, 2);
	for (int i = 0; i < 4; i++) {
		a[i] = (struct ovl_arg){ f, i < 2 ? &bar : NULL,
					 (unsigned char)(0xa0 + i), 0 };
		REQUIRE(pthread_create(&th[i], NULL, ovl_thread, &a[i]) == 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		CHECK_EQ(a[i].bad, 0);
	}
	pthread_barrier_destroy(&bar);
	CHECK_EQ(cfile_size(f), end + 2 * OVL_ROUNDS * REC);
	/* every record whole, each appender's in order */
	for (int k = 0; k < 2 * OVL_ROUNDS; k++) {
		unsigned char r[REC];
		int who, round;

		REQUIRE(cache_pread(f, r, REC, end + (uint64_t)k * REC) ==
			REC);
		who = r[REC - 1] - 0xa2;
		memcpy(&round, r, sizeof(round));
		REQUIRE(who == 0 || who == 1);
		CHECK_EQ(round, next[who]);
		next[who] = round + 1;
		for (size_t i = sizeof(round); i < REC; i++)
			if (r[i] != r[REC - 1]) {
				CHECK_EQ(i, -1);
				break;
			}
	}
	CHECK_EQ(cache_fsync(f, false), 0);
	cfile_put(f);
	cache_destroy(c);
}

static struct cache *new_cache_fds(uint64_t bytes, unsigned fds_max)
{
	struct cache_config cfg = { .size_bytes = bytes, .writeback_ms = 100,
				    .detached_fds_max = fds_max };
	struct cache *c;

	REQUIRE(cache_create(&cfg, &c) == 0);
	return c;
}

static uint64_t backing_reads(struct cache *c)
{
	struct cache_stats st;

	cache_get_stats(c, &st);
	return st.backing_read_bytes;
}

/* The last reference goes (the front end forgot the inode); the next open
 * of the same backing file finds its pages without reading them. */
static void test_kept_pages_found_after_last_put(void)
{
	struct cache *c = tc_new_cache(16 << 20);
	struct cfile *f;
	uint64_t reads;

	testfs_make("kept", 64 * PG, 31);
	f = tc_open(c, "kept");
	CHECK(tc_matches(f, 0, 64 * PG, 31, NULL));
	cfile_put(f);
	reads = backing_reads(c);
	CHECK_EQ(c->nr_detached, 1);
	f = tc_open(c, "kept");
	CHECK_EQ(c->nr_detached, 0);
	CHECK(tc_matches(f, 0, 64 * PG, 31, NULL));
	CHECK_EQ(backing_reads(c), reads);
	/* written, then forgotten: the written data is what comes back */
	CHECK_EQ(cache_write(f, "new", 3, 5 * PG + 1, false, NULL), 3);
	cfile_put(f);
	f = tc_open(c, "kept");
	{
		unsigned char want[PG];

		testfs_fill(want, 5 * PG, PG, 31);
		memcpy(want + 1, "new", 3);
		CHECK(tc_matches(f, 5 * PG, PG, 0, want));
	}
	cfile_put(f);
	cache_destroy(c);
}

/* Changed behind the mount while forgotten: the new bytes, never the kept
 * ones. */
static void test_kept_pages_dropped_when_changed_behind(void)
{
	struct cache *c = tc_new_cache(16 << 20);
	struct cfile *f;

	testfs_make("kch", 16 * PG, 32);
	f = tc_open(c, "kch");
	CHECK(tc_matches(f, 0, 16 * PG, 32, NULL));
	cfile_put(f);
	usleep(20000); /* a distinct mtime */
	testfs_make("kch", 8 * PG, 33);
	f = tc_open(c, "kch");
	CHECK_EQ(cfile_size(f), 8 * PG);
	CHECK(tc_matches(f, 0, 8 * PG, 33, NULL));
	cfile_put(f);
	cache_destroy(c);
}

/* Kept files hold descriptors up to the cap, the oldest give theirs back;
 * their pages stay, and come back through a fresh open. */
static void test_kept_descriptors_capped(void)
{
	struct cache *c = new_cache_fds(16 << 20, 2);
	char name[16];
	struct cfile *f;
	uint64_t reads;

	for (int i = 0; i < 5; i++) {
		snprintf(name, sizeof(name), "kd%d", i);
		testfs_make(name, 8 * PG, 40 + i);
		f = tc_open(c, name);
		CHECK(tc_matches(f, 0, 8 * PG, 40 + i, NULL));
		cfile_put(f);
	}
	CHECK_EQ(c->nr_detached, 5);
	CHECK_EQ(c->nr_detached_fds, 2);
	reads = backing_reads(c);
	f = tc_open(c, "kd0"); /* the oldest: no descriptor kept */
	CHECK(tc_matches(f, 0, 8 * PG, 40, NULL));
	CHECK_EQ(backing_reads(c), reads);
	cfile_put(f);
	cache_destroy(c);
}

/* A kept file whose pages were all evicted is freed. */
static void test_kept_file_freed_once_evicted(void)
{
	struct cache *c = tc_new_cache(1 << 20);
	struct cfile *f;

	testfs_make("kev", 32 * PG, 50);
	testfs_make("kbig", 1024 * PG, 51);
	f = tc_open(c, "kev");
	CHECK(tc_matches(f, 0, 32 * PG, 50, NULL));
	cfile_put(f);
	CHECK_EQ(c->nr_detached, 1);
	f = tc_open(c, "kbig");
	CHECK(tc_matches(f, 0, 1024 * PG, 51, NULL));
	cache_reap_kept(c, false);
	CHECK_EQ(c->nr_detached, 0);
	cfile_put(f);
	cache_destroy(c);
}

int main(void)
{
	testfs_init();
	RUN(test_frame_alloc_free_budget);
	RUN(test_frame_mappers_inline_then_list);
	RUN(test_read_miss_then_hit);
	RUN(test_write_unaligned_and_writeback);
	RUN(test_eviction_under_budget);
	RUN(test_dirty_beyond_budget_makes_progress);
	RUN(test_pinned_frame_not_evicted);
	RUN(test_large_read_in_tiny_cache_bounces);
	RUN(test_truncate_zeroes_tail);
	RUN(test_punch_hole_drops_cached_pages);
	RUN(test_revalidate_sees_change_behind);
	RUN(test_concurrent_writers_tiny_cache);
	RUN(test_overlapping_writes_do_not_interleave);
	RUN(test_kept_pages_found_after_last_put);
	RUN(test_kept_pages_dropped_when_changed_behind);
	RUN(test_kept_descriptors_capped);
	RUN(test_kept_file_freed_once_evicted);
	return CHECK_DONE();
}
