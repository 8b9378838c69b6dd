/* fp: page fingerprints; see fp.h. */
#include "fp.h"

#include "cache.h"

#include <pthread.h>
#include <string.h>
#include <xxhash.h>

void fp_page(const void *page, struct fp *out)
{
	XXH128_hash_t h = XXH3_128bits(page, CACHE_PAGE_SIZE);

	out->lo = h.low64;
	out->hi = h.high64;
}

bool fp_equal(const struct fp *a, const struct fp *b)
{
	return a->lo == b->lo && a->hi == b->hi;
}

static struct fp zero_fp;
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

static void zero_init(void)
{
	static const unsigned char zeros[CACHE_PAGE_SIZE];

	fp_page(zeros, &zero_fp);
}

const struct fp *fp_zero(void)
{
	pthread_once(&zero_once, zero_init);
	return &zero_fp;
}

bool fp_page_is_zero(const void *page)
{
	const uint64_t *w = page;

	for (unsigned i = 0; i < CACHE_PAGE_SIZE / 8; i++)
		if (w[i])
			return false;
	return true;
}
