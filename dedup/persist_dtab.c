/*
 * persist_dtab: the SHA-256 digests of frames and what finds them: dtab
 * (the resident STABLE frames with a digest, by its first 8 bytes), the
 * want ring of shared stable frames that wait for a digest, and the
 * digest pass that gives them one (on the scanner thread, and at unmount
 * in dedup_flush). See persist_i.h for when a digest is trusted, and the
 * locking.
 */
#include "persist_i.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG CACHE_PAGE_SIZE
/* Frames the digest pass copies per hold of map_lock (and hashes
 * outside it): 128 KiB of copying keeps each hold short. */
#define DIGEST_CHUNK 32u

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static void unmap_anon(void *p, size_t len)
{
	if (p)
		munmap(p, len);
}

static size_t digest_map_len(uint32_t n)
{
	return (size_t)n * FP_DIGEST_LEN;
}

static size_t want_map_len(uint32_t n)
{
	return (size_t)n * sizeof(uint32_t);
}

static size_t bits_map_len(uint32_t n)
{
	return ((size_t)n + 7) / 8;
}

/* dtab's key: the first 8 bytes of the frame's digest. */
static uint64_t digest_key(void *arg, uint32_t fid)
{
	struct dedup *d = arg;

	return persist_tag_key(d->digest[fid]);
}

void persist_dtab_fini(struct dedup *d)
{
	unmap_anon(d->digest, digest_map_len(d->ncap));
	unmap_anon(d->want, want_map_len(d->ncap));
	unmap_anon(d->want_bits, bits_map_len(d->ncap));
	free(d->digest_buf);
	stree_fini(&d->dtab);
	d->digest = NULL;
	d->want = NULL;
	d->want_bits = NULL;
	d->digest_buf = NULL;
}

int persist_dtab_init(struct dedup *d)
{
	stree_init(&d->dtab, digest_key, d);
	/* One entry per frame the cache may ever have; only what is used
	 * is touched (MAP_NORESERVE). */
	d->ncap = d->c->ft.capacity;
	d->digest = map_anon(digest_map_len(d->ncap));
	d->want = map_anon(want_map_len(d->ncap));
	d->want_bits = map_anon(bits_map_len(d->ncap));
	d->digest_buf = aligned_alloc(PG, DIGEST_CHUNK * PG);
	if (!d->digest || !d->want || !d->want_bits || !d->digest_buf)
		return -ENOMEM;
	return 0;
}

/* ---- the want ring (map_lock held) ---- */

static bool want_has(const struct dedup *d, uint32_t fid)
{
	return d->want_bits[fid / 8] & (1u << (fid % 8));
}

/* Ask the scanner for a digest of stable frame fid. Each frame is in the
 * ring at most once, so ncap entries always suffice. */
void persist_want_digest(struct dedup *d, uint32_t fid)
{
	if (!d->want || fid < FID_FIRST || fid >= d->ncap || want_has(d, fid))
		return;
	d->want_bits[fid / 8] |= (uint8_t)(1u << (fid % 8));
	d->want[(d->want_head + d->want_len) % d->ncap] = fid;
	d->want_len++;
}

/* Put fid back where it was taken from: first in the ring, so that
 * frames are recorded in the order they became shared (a run of the
 * store grows at its end only). */
static void want_front(struct dedup *d, uint32_t fid)
{
	if (want_has(d, fid))
		return;
	d->want_bits[fid / 8] |= (uint8_t)(1u << (fid % 8));
	d->want_head = (d->want_head + d->ncap - 1) % d->ncap;
	d->want[d->want_head] = fid;
	d->want_len++;
}

static uint32_t want_pop(struct dedup *d)
{
	uint32_t fid = d->want[d->want_head];

	d->want_head = (d->want_head + 1) % d->ncap;
	d->want_len--;
	d->want_bits[fid / 8] &= (uint8_t)~(1u << (fid % 8));
	return fid;
}

/* ---- dtab: resident stable frames by digest (map_lock held) ---- */

/* A STABLE frame with a digest: in dtab. */
void persist_dtab_add(struct dedup *d, uint32_t fid)
{
	CACHE_BUG_ON((frame_flags(cache_frame(d->c, fid)) &
		      (F_STABLE | F_DIGEST)) != (F_STABLE | F_DIGEST));
	if (fid != FID_ZERO)
		stree_insert(&d->dtab, fid); /* no memory: not found, fine */
}

/* A resident stable frame whose digest starts with tag (any scope). */
uint32_t persist_dtab_tagged(struct dedup *d, const uint8_t *tag)
{
	uint32_t cand, pos = 0;

	while ((cand = stree_next(&d->dtab, persist_tag_key(tag), &pos))) {
		uint32_t fl = frame_flags(cache_frame(d->c, cand));

		if ((fl & (F_STABLE | F_DIGEST)) == (F_STABLE | F_DIGEST) &&
		    !(fl & (F_IO | F_ERROR)) &&
		    !memcmp(d->digest[cand], tag, STORE_TAG_LEN))
			return cand;
	}
	return 0;
}

/* ---- frames entering and leaving the stable tree ---- */

void persist_stable(struct dedup *d, uint32_t fid)
{
	if (d->digest && (frame_flags(cache_frame(d->c, fid)) & F_DIGEST))
		persist_dtab_add(d, fid);
}

void persist_forget(struct dedup *d, uint32_t fid)
{
	uint32_t fl = frame_flags(cache_frame(d->c, fid));

	if (d->digest && (fl & (F_STABLE | F_DIGEST)) == (F_STABLE | F_DIGEST))
		stree_remove(&d->dtab, fid);
}

void persist_merged(struct dedup *d, uint32_t fid, uint32_t target)
{
	struct frame *to = cache_frame(d->c, target);

	if (!d->digest || target == FID_ZERO ||
	    !(frame_flags(cache_frame(d->c, fid)) & F_DIGEST) ||
	    (frame_flags(to) & (F_STABLE | F_DIGEST)) != F_STABLE)
		return;
	/* memcmp() found the contents equal: fid's digest is target's. */
	memcpy(d->digest[target], d->digest[fid], FP_DIGEST_LEN);
	frame_set(to, F_DIGEST);
	persist_dtab_add(d, target);
}

void persist_unstable(struct dedup *d, uint32_t fid)
{
	struct frame *fr = cache_frame(d->c, fid);

	if (frame_flags(fr) & (F_DIGEST | F_PERSISTED))
		frame_clear(fr, F_DIGEST | F_PERSISTED);
}

/* ---- the digest pass ---- */

/* After the digest pass hashed a frame: record it if it still is what
 * was hashed; false if a mapper was busy. map_lock held. */
static bool digest_done(struct dedup *d, uint32_t fid, const void *copy,
			const uint8_t *dg)
{
	struct cache *c = d->c;
	struct frame *fr = cache_frame(c, fid);
	uint32_t fl = frame_flags(fr);

	if (!(fl & F_STABLE))
		return true;            /* left the tree: nothing to record */
	if (!(fl & F_DIGEST)) {
		/* Freed and reused meanwhile, the frame may hold other
		 * bytes; compared here, under map_lock, with the stable
		 * (so immutable) content, the digest is the frame's. */
		if (memcmp(copy, cache_frame_data(c, fid), PG))
			return true;
		memcpy(d->digest[fid], dg, FP_DIGEST_LEN);
		frame_set(fr, F_DIGEST);
		persist_dtab_add(d, fid);
	}
	return persist_record_mappers(d, fid);
}

unsigned persist_digest_work(struct dedup *d, unsigned budget)
{
	struct cache *c = d->c;
	uint8_t dg[DIGEST_CHUNK][FP_DIGEST_LEN];
	uint32_t ids[DIGEST_CHUNK], fid, fl;
	bool ok[DIGEST_CHUNK], busy = false;
	unsigned n, done = 0;

	if (!d->want)
		return 0;
	pthread_mutex_lock(&d->digest_lock);    /* digest_buf */
	pthread_mutex_lock(&c->map_lock);
	/* What waits now, at most. A frame whose mapper is busy goes back
	 * first in the ring and ends the pass: the next one starts there,
	 * so frames are recorded in order. */
	if (budget > d->want_len)
		budget = d->want_len;
	pthread_mutex_unlock(&c->map_lock);
	while (done < budget) {
		n = 0;
		pthread_mutex_lock(&c->map_lock);
		while (n < DIGEST_CHUNK && done < budget && d->want_len) {
			fid = want_pop(d);
			done++;
			fl = frame_flags(cache_frame(c, fid));
			if (!(fl & F_STABLE) || (fl & F_ZERO))
				continue;
			if (fl & F_DIGEST) {
				if (!persist_record_mappers(d, fid)) {
					want_front(d, fid);
					busy = true;
					break;
				}
				continue;
			}
			/* Copied, not hashed in place: a stable frame
			 * may be taken out and written once map_lock is
			 * dropped. */
			memcpy(d->digest_buf + (size_t)n * PG,
			       cache_frame_data(c, fid), PG);
			ids[n++] = fid;
		}
		if (!d->want_len || busy)
			budget = done;  /* taken by someone else, or busy */
		pthread_mutex_unlock(&c->map_lock);
		for (unsigned i = 0; i < n; i++) {
			ok[i] = !fp_digest(d->digest_buf + (size_t)i * PG,
					   dg[i]);
			if (ok[i])
				atomic_fetch_add(&d->digests_computed, 1);
		}
		if (!n)
			continue;
		pthread_mutex_lock(&c->map_lock);
		for (unsigned i = 0; i < n; i++) {
			if (!ok[i] || digest_done(d, ids[i],
						  d->digest_buf +
						  (size_t)i * PG, dg[i]))
				continue;
			/* Busy: it and the rest go back, in order (they
			 * have their digests now). */
			for (unsigned k = n; k-- > i;)
				if (ok[k])
					want_front(d, ids[k]);
			busy = true;
			budget = done;
			break;
		}
		pthread_mutex_unlock(&c->map_lock);
	}
	pthread_mutex_unlock(&d->digest_lock);
	return done;
}

void dedup_flush(struct dedup *d)
{
	/* A few rounds for frames put back because a mapper was busy (the
	 * writeback thread may still hold a file for a moment); the last
	 * ones record the mappers that are not. */
	for (int round = 0; d && round < 40; round++) {
		atomic_store(&d->record_partial, round >= 20);
		if (!persist_digest_work(d, UINT_MAX))
			break;
		usleep(1000);
	}
	if (d)
		atomic_store(&d->record_partial, false);
}

/* ---- memory ---- */

/* Bytes of [p, p + len) in memory (MAP_NORESERVE: only what was used). */
static uint64_t resident_bytes(void *p, size_t len)
{
	size_t psz = (size_t)sysconf(_SC_PAGESIZE), pages, n = 0;
	unsigned char *vec;

	if (!p || !len)
		return 0;
	pages = (len + psz - 1) / psz;
	vec = malloc(pages);
	if (!vec)
		return len;             /* cannot tell: the whole map */
	if (mincore(p, len, vec)) {
		free(vec);
		return len;
	}
	for (size_t i = 0; i < pages; i++)
		n += vec[i] & 1;
	free(vec);
	return (uint64_t)n * psz;
}

uint64_t persist_meta_bytes(struct dedup *d)
{
	uint64_t dtab;

	if (!d->digest)
		return 0;
	pthread_mutex_lock(&d->c->map_lock);
	dtab = stree_bytes(&d->dtab);
	pthread_mutex_unlock(&d->c->map_lock);
	return dtab + resident_bytes(d->digest, digest_map_len(d->ncap)) +
	       resident_bytes(d->want, want_map_len(d->ncap)) +
	       resident_bytes(d->want_bits, bits_map_len(d->ncap)) +
	       DIGEST_CHUNK * PG;
}
