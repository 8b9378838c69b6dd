/*
 * testdedup: helpers the dedup unit tests share: a cache with content
 * merging on it (and its gauges checked when it goes), and copies of one
 * content opened through it.
 */
#ifndef SAMEPAGE_TESTDEDUP_H
#define SAMEPAGE_TESTDEDUP_H

#include "testcache.h"
#include "cache_i.h"
#include "dedup.h"

#define PG 4096u

struct env {
	struct cache *c;
	struct dedup *d;
};

static inline struct env new_env(uint64_t bytes,
				 void (*tune)(struct dedup_config *))
{
	struct cache_config cfg = { .size_bytes = bytes, .writeback_ms = 100 };
	struct dedup_config dc;
	struct env e;

	dedup_config_defaults(&dc);
	dc.sleep_millisecs = 1;
	if (tune)
		tune(&dc);
	REQUIRE(cache_create(&cfg, &e.c) == 0);
	REQUIRE(dedup_create(e.c, &dc, &e.d) == 0);
	return e;
}

/* The gauges kept as frames change (pages_unshared, pages_volatile) agree
 * with a walk over the frames; no writer runs when this is called. */
static inline void check_gauges(struct cache *c)
{
	uint64_t unshared = 0, vol = 0;

	pthread_mutex_lock(&c->map_lock);
	for (uint32_t fid = FID_FIRST; fid < c->ft.high; fid++) {
		struct frame *fr = cache_frame(c, fid);
		uint32_t fl = frame_flags(fr);

		if (fl & F_FREE)
			continue;
		vol += !!(fl & F_VOLATILE);
		unshared += fr->nmappers == 1 && (fl & (F_STABLE | F_UNSTABLE));
	}
	CHECK_EQ(c->ft.nr_unshared, unshared);
	CHECK_EQ(atomic_load(&c->ft.nr_volatile), vol);
	pthread_mutex_unlock(&c->map_lock);
}

static inline void free_env(struct env *e)
{
	check_gauges(e->c);
	dedup_destroy(e->d);
	/* leaving, dedup takes every frame out of its trees */
	CHECK_EQ(e->c->ft.nr_unshared, 0);
	cache_destroy(e->c);
}

static inline void copies(const char *prefix, int n, uint64_t len,
			  unsigned seed, struct cache *c, struct cfile **out)
{
	for (int i = 0; i < n; i++) {
		char name[64];

		snprintf(name, sizeof(name), "%s%d", prefix, i);
		testfs_make(name, len, seed);
		out[i] = tc_open(c, name);
	}
}

#endif
