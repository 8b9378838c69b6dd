/*
 * Unit tests of the cache under memory pressure, without FUSE: a pressure
 * shrink gives a quarter of the frames back and holds the budget there;
 * eviction keeps frames that several files map longer than unshared ones.
 */
#include "testcache.h"
#include "cache_i.h"
#include "dedup.h"
#include "pressure.h"

#define PG 4096u

static void test_shrink_gives_a_quarter_back(void)
{
	struct cache *c = tc_new_cache(4 << 20);
	struct cache_stats st;
	struct cfile *f;
	uint64_t freed;

	testfs_make("ps", 512 * PG, 3);
	f = tc_open(c, "ps");
	CHECK(tc_matches(f, 0, 512 * PG, 3, NULL));
	cache_get_stats(c, &st);
	CHECK_EQ(st.cache_bytes, 512 * PG);
	freed = cache_pressure_shrink(c);
	CHECK_EQ(freed, 128 * PG);
	cache_get_stats(c, &st);
	CHECK_EQ(st.cache_bytes, 384 * PG);
	CHECK_EQ(st.pressure_shrinks, 1);
	CHECK_EQ(st.pressure_bytes, 128 * PG);
	/* the budget stays down: reading more evicts instead of growing */
	CHECK(tc_matches(f, 0, 512 * PG, 3, NULL));
	cache_get_stats(c, &st);
	CHECK(st.cache_bytes <= 384 * PG);
	/* a configured budget set again is the budget */
	CHECK_EQ(cache_set_limit(c, 4 << 20), 0);
	CHECK(tc_matches(f, 0, 512 * PG, 3, NULL));
	cache_get_stats(c, &st);
	CHECK_EQ(st.cache_bytes, 512 * PG);
	cfile_put(f);
	cache_destroy(c);
}

static void test_eviction_keeps_shared_frames_longer(void)
{
	struct cache *c = tc_new_cache(64 * PG);
	struct dedup_config dc;
	struct dedup *d;
	struct cfile *a, *b, *u, *v;
	uint32_t kept = 0;

	dedup_config_defaults(&dc);
	dc.run = false;
	REQUIRE(dedup_create(c, &dc, &d) == 0);
	testfs_make("sa", 16 * PG, 5);
	testfs_make("sb", 16 * PG, 5);
	testfs_make("su", 32 * PG, 6);
	testfs_make("sv", 48 * PG, 7);
	a = tc_open(c, "sa");
	b = tc_open(c, "sb");
	u = tc_open(c, "su");
	v = tc_open(c, "sv");
	CHECK(tc_matches(a, 0, 16 * PG, 5, NULL));
	CHECK(tc_matches(b, 0, 16 * PG, 5, NULL)); /* merged into a's */
	CHECK(tc_matches(u, 0, 32 * PG, 6, NULL));
	/* 48 more pages into 64 frames: 32 must go, the unshared ones */
	CHECK(tc_matches(v, 0, 48 * PG, 7, NULL));
	pthread_rwlock_rdlock(&a->pidx_lock);
	for (uint64_t i = 0; i < 16; i++)
		kept += pidx_lookup(&a->pidx, i) != 0;
	pthread_rwlock_unlock(&a->pidx_lock);
	CHECK_EQ(kept, 16);
	cfile_put(a);
	cfile_put(b);
	cfile_put(u);
	cfile_put(v);
	dedup_destroy(d);
	cache_destroy(c);
}

int main(void)
{
	testfs_init();
	RUN(test_shrink_gives_a_quarter_back);
	RUN(test_eviction_keeps_shared_frames_longer);
	return CHECK_DONE();
}
