/* fp: page fingerprints (XXH3-128) and digests (SHA-256); see fp.h. */
#include "fp.h"

#include "cache.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <string.h>
#include <xxhash.h>

_Static_assert(FP_DIGEST_LEN == SHA256_DIGEST_LENGTH, "SHA-256 digests");

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

/*
 * OpenSSL 3's one-shot SHA256() looks the algorithm up and allocates a
 * context on every call (EVP_Q_digest); fetching it once and keeping one
 * context per thread saves that on the fill path (about 20% of a page's
 * digest here) and keeps threads off OpenSSL's global lookup lock.
 */
static EVP_MD *sha256_md;           /* immutable after sha_once */
static pthread_key_t sha_ctx_key;
static bool sha_key_ok;             /* immutable after sha_once */
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void sha_ctx_free(void *ctx)
{
	EVP_MD_CTX_free(ctx);
}

static void sha_init(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
	sha_key_ok = !pthread_key_create(&sha_ctx_key, sha_ctx_free);
}

static EVP_MD_CTX *sha_ctx(void)
{
	EVP_MD_CTX *ctx;

	pthread_once(&sha_once, sha_init);
	if (!sha256_md || !sha_key_ok)
		return NULL;
	ctx = pthread_getspecific(sha_ctx_key);
	if (ctx)
		return ctx;
	ctx = EVP_MD_CTX_new();
	if (ctx && pthread_setspecific(sha_ctx_key, ctx)) {
		EVP_MD_CTX_free(ctx);
		ctx = NULL;
	}
	return ctx;
}

int fp_digest(const void *page, uint8_t out[FP_DIGEST_LEN])
{
	EVP_MD_CTX *ctx = sha_ctx();

	if (!ctx)
		return -ENOMEM;
	if (!EVP_DigestInit_ex2(ctx, sha256_md, NULL) ||
	    !EVP_DigestUpdate(ctx, page, CACHE_PAGE_SIZE) ||
	    !EVP_DigestFinal_ex(ctx, out, NULL))
		return -EIO;
	return 0;
}

bool fp_digest_equal(const uint8_t a[FP_DIGEST_LEN],
		     const uint8_t b[FP_DIGEST_LEN])
{
	return !memcmp(a, b, FP_DIGEST_LEN);
}

static struct fp zero_fp;
static uint8_t zero_digest[FP_DIGEST_LEN];
static bool zero_digest_ok;
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

static void zero_init(void)
{
	static const unsigned char zeros[CACHE_PAGE_SIZE];

	fp_page(zeros, &zero_fp);
	zero_digest_ok = !fp_digest(zeros, zero_digest);
}

const struct fp *fp_zero(void)
{
	pthread_once(&zero_once, zero_init);
	return &zero_fp;
}

const uint8_t *fp_zero_digest(void)
{
	pthread_once(&zero_once, zero_init);
	return zero_digest_ok ? zero_digest : NULL;
}

bool fp_page_is_zero(const void *page)
{
	const uint64_t *w = page;

	for (unsigned i = 0; i < CACHE_PAGE_SIZE / 8; i++)
		if (w[i])
			return false;
	return true;
}
