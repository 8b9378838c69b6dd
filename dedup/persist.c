/*
 * persist: the LMDB store (store.h) seen from the cache.
 *
 * A file's stored fingerprints are used only while its identity is the
 * one the store holds (store_file_match). A page record is the XXH3-128
 * and the SHA-256 of the page's content when it was recorded.
 *
 * Warm restart: a miss whose record's XXH3 names a resident stable frame
 * is mapped to it without backing I/O and without hashing, but only if
 * that frame's own SHA-256 equals the record's. XXH3 finds the candidate;
 * it does not resist a crafted collision, and trusted alone it would let
 * one user's page stand for another user's after a restart. The zero
 * page is mapped on the digest of zeros the same way. A page that must be
 * read is hashed like any other fill: a record is never copied into a
 * frame, so a frame's fingerprint always says what the frame holds.
 *
 * Digests (d->digest[fid], valid with F_DIGEST) are taken only where one
 * may be needed, and never on the request path beyond a fill that read:
 *   - a fill whose page has a record digests what it read (it did I/O
 *     anyway; once per content, as the next pages with it are mapped
 *     unread) and checks the record against it: F_PERSISTED only if the
 *     store holds exactly this;
 *   - a stable frame that becomes shared without one, or that a look-up
 *     would have used, waits in a ring (want) for the scanner thread,
 *     which digests it (persist_digest_work) and then queues the records
 *     of all its mappers; at unmount the ring is drained while the files
 *     still map their pages (dedup_flush, and dedup_destroy before the
 *     store closes), so a quick unmount after reading still persists.
 *
 * Why a digest can be trusted: F_DIGEST on a STABLE frame is the digest
 * of its content. It is set by the fill while the frame is under IO and
 * owned by the filler, or by the digest pass on a STABLE frame whose
 * content it compared, under map_lock, with the copy it hashed. Stable
 * content is immutable, and a frame leaving the stable tree loses
 * F_DIGEST (cache: make_private, share_forget). A frame outside the trees
 * may keep a stale one (written in place after its fill could not enter
 * the stable tree); it is cleared before the scanner can promote such a
 * frame (persist_unstable), and only STABLE frames' digests are used.
 *
 * Only pages that were shared are remembered: a page that matched no other
 * can save no I/O after a restart (there is nothing resident to map it to
 * before it is read), and storing it would cost memory and disk for every
 * page ever read, like a dedup table of unique blocks. Fingerprints are
 * queued for the store's writer thread, never written on the read path.
 * Writes through the mount tell the store the file's new identity and
 * which pages changed.
 *
 * Locking: struct persist_file hangs off the cfile, under its pidx_lock
 * (write); stable-tree look-ups, the digests of frames and the want ring
 * are under map_lock, but for the digest slot of a frame under IO, which
 * its filler owns. digest_lock (taken before map_lock) makes one digest
 * pass at a time: the scanner's, or dedup_flush()'s at unmount; it owns
 * digest_buf.
 */
#include "dedup_i.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG CACHE_PAGE_SIZE
#define PERSIST_WIN 256u
/* Frames the digest pass copies per hold of map_lock (and hashes
 * outside it): 128 KiB of copying keeps each hold short. */
#define DIGEST_CHUNK 32u

struct persist_file {
	struct cfile_ident ident;   /* identity the record was matched at */
	bool checked;
	bool has_win;               /* win[] and present are allocated */
	uint64_t store_id;          /* 0: no usable record */
	uint64_t win_first;         /* window of stored fingerprints */
	unsigned win_n;
	/* With a record only (most files have none): PERSIST_WIN
	 * fingerprints, then PERSIST_WIN bools (win_present). One block,
	 * since the cache frees it with free(). */
	struct store_fp win[];
};

static bool *win_present(struct persist_file *pf)
{
	return (bool *)(pf->win + PERSIST_WIN);
}

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

static void persist_unmap(struct dedup *d)
{
	unmap_anon(d->digest, digest_map_len(d->ncap));
	unmap_anon(d->want, want_map_len(d->ncap));
	unmap_anon(d->want_bits, bits_map_len(d->ncap));
	free(d->digest_buf);
	d->digest = NULL;
	d->want = NULL;
	d->want_bits = NULL;
	d->digest_buf = NULL;
}

int persist_open(struct dedup *d, const struct dedup_config *cfg)
{
	int ret;

	if (!cfg->state_dir)
		return 0;
	ret = store_open(cfg->state_dir, cfg->store_quota, cfg->rebuild_state,
			 &d->store);
	if (ret)
		return ret;
	/* One entry per frame the cache may ever have; only what is used
	 * is touched (MAP_NORESERVE). */
	d->ncap = d->c->ft.capacity;
	d->digest = map_anon(digest_map_len(d->ncap));
	d->want = map_anon(want_map_len(d->ncap));
	d->want_bits = map_anon(bits_map_len(d->ncap));
	d->digest_buf = aligned_alloc(PG, DIGEST_CHUNK * PG);
	if (!d->digest || !d->want || !d->want_bits || !d->digest_buf) {
		ret = -ENOMEM;
		goto out_close;
	}
	/* OpenSSL's one-time set-up (some MiB of library and tables) at
	 * mount rather than on the first read that needs a digest. Without
	 * SHA-256 no page could be trusted unread: no store then. */
	if (!fp_zero_digest()) {
		fprintf(stderr, "samepagefs: state store %s: OpenSSL cannot "
			"compute SHA-256: running without persistence\n",
			cfg->state_dir);
		ret = 0;
		goto out_close;
	}
	return 0;

out_close:
	persist_unmap(d);
	store_close(d->store);
	d->store = NULL;
	return ret;
}

void persist_close(struct dedup *d)
{
	if (d->store)
		store_close(d->store);
	d->store = NULL;
	persist_unmap(d);
}

static void to_store_ident(const struct cfile_ident *c, struct store_ident *s)
{
	s->dev = c->dev;
	s->ino = c->ino;
	s->size = c->size;
	s->mtime_ns = c->mtime_ns;
	s->ctime_ns = c->ctime_ns;
}

static bool same_ident(const struct cfile_ident *a, const struct cfile_ident *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns;
}

/* The file's record, matched against its current identity. */
static struct persist_file *pfile(struct dedup *d, struct cfile *f)
{
	struct persist_file *pf = f->persist, *big;
	struct store_ident id;
	uint64_t sid;

	if (!d->store || d->scope == DEDUP_SCOPE_NONE)
		return NULL;
	if (!pf) {
		pf = calloc(1, sizeof(*pf));
		if (!pf)
			return NULL;
		f->persist = pf;
	}
	if (pf->checked && same_ident(&pf->ident, &f->ident))
		return pf;
	pf->ident = f->ident;
	pf->checked = true;
	pf->win_n = 0;
	to_store_ident(&f->ident, &id);
	pf->store_id = store_file_match(d->store, &id, &sid) ? 0 : sid;
	if (pf->store_id && !pf->has_win) {
		big = realloc(pf, sizeof(*pf) + PERSIST_WIN *
			      (sizeof(struct store_fp) + sizeof(bool)));
		if (!big) {
			pf->store_id = 0;
			return pf;
		}
		pf = big;
		pf->has_win = true;
		f->persist = pf;
	}
	return pf;
}

/* The stored fingerprint of page index, if any. */
static bool stored_fp(struct dedup *d, struct persist_file *pf,
		      uint64_t index, struct store_fp *out)
{
	if (!pf || !pf->store_id)
		return false;
	if (index < pf->win_first || index >= pf->win_first + pf->win_n) {
		pf->win_first = index;
		pf->win_n = 0;
		if (store_get_fps(d->store, pf->store_id, index, PERSIST_WIN,
				  pf->win, win_present(pf)))
			return false;
		pf->win_n = PERSIST_WIN;
	}
	if (!win_present(pf)[index - pf->win_first])
		return false;
	*out = pf->win[index - pf->win_first];
	return true;
}

/* ---- the want ring (map_lock held) ---- */

static bool want_has(const struct dedup *d, uint32_t fid)
{
	return d->want_bits[fid / 8] & (1u << (fid % 8));
}

/* Ask the scanner for a digest of stable frame fid. Each frame is in the
 * ring at most once, so ncap entries always suffice. */
static void want_digest(struct dedup *d, uint32_t fid)
{
	if (!d->want || fid < FID_FIRST || fid >= d->ncap || want_has(d, fid))
		return;
	d->want_bits[fid / 8] |= (uint8_t)(1u << (fid % 8));
	d->want[(d->want_head + d->want_len) % d->ncap] = fid;
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

/* ---- records ---- */

static void queue_page(struct dedup *d, const struct store_ident *id,
		       uint64_t index, uint64_t lo, uint64_t hi,
		       const uint8_t *sha)
{
	struct store_fp fp = { .lo = lo, .hi = hi };

	memcpy(fp.sha256, sha, sizeof(fp.sha256));
	store_put_page(d->store, id, index, &fp); /* full queue: skipped */
}

/* The record of (f, index) on frame fid; f's identity is the caller's to
 * read (it holds f's pidx_lock). map_lock held. */
static void queue_own_page(struct dedup *d, uint32_t fid, struct cfile *f,
			   uint64_t index)
{
	struct frame *fr = cache_frame(d->c, fid);
	struct store_ident id;

	/* A record carries only a digest taken from stable content. */
	CACHE_BUG_ON((frame_flags(fr) & (F_STABLE | F_DIGEST)) !=
		     (F_STABLE | F_DIGEST));
	to_store_ident(&f->ident, &id);
	queue_page(d, &id, index, fr->fp[0], fr->fp[1], d->digest[fid]);
}

/*
 * Another file's identity, under its own locks: it changes under g's
 * pidx_lock (write) or inval_lock (write). Both come before map_lock,
 * which the caller holds, so they are only tried: false if g is busy.
 */
static bool mapper_ident(struct cfile *g, struct store_ident *id)
{
	if (pthread_rwlock_tryrdlock(&g->inval_lock))
		return false;
	if (pthread_rwlock_tryrdlock(&g->pidx_lock)) {
		pthread_rwlock_unlock(&g->inval_lock);
		return false;
	}
	to_store_ident(&g->ident, id);
	pthread_rwlock_unlock(&g->pidx_lock);
	pthread_rwlock_unlock(&g->inval_lock);
	return true;
}

/*
 * A shared stable frame with a digest: the records of every mapper, then
 * F_PERSISTED. False if a mapper was busy: the frame is to be tried again
 * (records already queued are simply put again). map_lock held.
 */
static bool queue_mappers(struct dedup *d, uint32_t fid)
{
	struct frame *fr = cache_frame(d->c, fid);
	struct store_ident id;
	bool all = true;

	if (fr->nmappers < 2 || (frame_flags(fr) & F_PERSISTED))
		return true;
	CACHE_BUG_ON((frame_flags(fr) & (F_STABLE | F_DIGEST)) !=
		     (F_STABLE | F_DIGEST));
	for (uint32_t i = 0; i < fr->m.rmap->n; i++) {
		struct mapper m = frame_mapper(&d->c->ft, fr->m.rmap->m[i]);

		if (!mapper_ident(m.file, &id)) {
			all = false;
			continue;
		}
		queue_page(d, &id, m.index, fr->fp[0], fr->fp[1],
			   d->digest[fid]);
	}
	if (all)
		frame_set(fr, F_PERSISTED);
	return all;
}

/* Record a stable frame's mappers, or leave it in the ring for later. */
static void record_mappers(struct dedup *d, uint32_t fid)
{
	if (!queue_mappers(d, fid))
		want_digest(d, fid);
}

/* ---- the cache's side ---- */

uint32_t persist_lookup(struct dedup *d, struct cfile *f, uint64_t index)
{
	struct cache *c = d->c;
	const uint8_t *zd;
	struct store_fp fp;
	uint32_t cand, pos = 0, hit = 0, fl;
	uint16_t scope;

	if (!stored_fp(d, pfile(d, f), index, &fp))
		return 0;
	scope = dedup_scope_of(d, f);
	pthread_mutex_lock(&c->map_lock);
	if (fp.lo == fp_zero()->lo && fp.hi == fp_zero()->hi) {
		zd = fp_zero_digest();
		if (zd && fp_digest_equal(fp.sha256, zd) &&
		    atomic_load(&d->use_zero_pages) &&
		    !pidx_store(&f->pidx, index, FID_ZERO)) {
			frame_add_mapper(&c->ft, FID_ZERO, f, index);
			atomic_fetch_add(&d->store_hits, 1);
			hit = FID_ZERO;
		}
		goto out_unlock;
	}
	while ((cand = stree_next(&d->stable, fp.lo, &pos))) {
		struct frame *cf = cache_frame(c, cand);

		fl = frame_flags(cf);
		if (cf->fp[1] != fp.hi || !scope_match(cf->scope, scope) ||
		    cf->nmappers >= atomic_load(&d->max_page_sharing) ||
		    (fl & (F_IO | F_ERROR | F_ZERO)) || !(fl & F_STABLE))
			continue;
		if (!(fl & F_DIGEST)) {
			/* Not trusted without one; with one, the next
			 * pages of this content are mapped unread. */
			want_digest(d, cand);
			continue;
		}
		/* The same XXH3 and another SHA-256 is another content,
		 * whether someone crafted the collision or not. */
		if (!fp_digest_equal(d->digest[cand], fp.sha256))
			continue;
		if (pidx_store(&f->pidx, index, cand))
			break;
		if (frame_add_mapper(&c->ft, cand, f, index)) {
			pidx_erase(&f->pidx, index);
			break;
		}
		frame_set(cf, F_REF);
		atomic_fetch_add(&d->store_hits, 1);
		atomic_fetch_add(&d->content_merges, 1);
		hit = cand;
		break;
	}
out_unlock:
	pthread_mutex_unlock(&c->map_lock);
	return hit;
}

void persist_note(struct dedup *d, struct cfile *f, uint64_t index,
		  uint32_t fid)
{
	struct frame *fr = cache_frame(d->c, fid);
	struct store_fp fp;

	if (!d->digest || !stored_fp(d, pfile(d, f), index, &fp))
		return;
	/* Only a claim: the fill checks it against what it reads
	 * (persist_fill_digest). The frame is under IO and ours. */
	fr->fp[0] = fp.lo;
	fr->fp[1] = fp.hi;
	memcpy(d->digest[fid], fp.sha256, FP_DIGEST_LEN);
	frame_set(fr, F_PERSISTED);
}

void persist_fill_digest(struct dedup *d, struct frame *fr, const void *data,
			 const struct fp *h)
{
	uint32_t fid = (uint32_t)(fr - d->c->ft.frames);
	uint8_t dg[FP_DIGEST_LEN];
	bool right;

	if (!d->digest || !(frame_flags(fr) & F_PERSISTED))
		return;
	frame_clear(fr, F_PERSISTED);
	if (fp_digest(data, dg))
		return;
	atomic_fetch_add(&d->digests_computed, 1);
	/* A record that is not what was read (a store that lies, or a
	 * change the file's identity did not show) is not this frame's:
	 * the page is recorded anew if it is ever shared. */
	right = fr->fp[0] == h->lo && fr->fp[1] == h->hi &&
		fp_digest_equal(d->digest[fid], dg);
	memcpy(d->digest[fid], dg, FP_DIGEST_LEN);
	frame_set(fr, right ? F_DIGEST | F_PERSISTED : F_DIGEST);
}

void persist_shared(struct dedup *d, struct cfile *f, uint64_t index,
		    uint32_t target)
{
	struct frame *fr = cache_frame(d->c, target);
	struct store_ident id;
	const uint8_t *zd;
	uint32_t fl;

	if (!d->store)
		return;
	if (target == FID_ZERO) {
		zd = fp_zero_digest();
		if (zd) {
			to_store_ident(&f->ident, &id);
			queue_page(d, &id, index, fp_zero()->lo,
				   fp_zero()->hi, zd);
		}
		return;
	}
	fl = frame_flags(fr);
	if ((fl & (F_STABLE | F_DIGEST | F_PERSISTED)) ==
	    (F_STABLE | F_DIGEST | F_PERSISTED)) {
		/* The others are recorded: this page joins them. */
		queue_own_page(d, target, f, index);
		return;
	}
	/* First time shared, or no digest yet: nothing of that is done on
	 * the request path. The scanner digests the frame if need be, then
	 * records every mapper, this one too. */
	want_digest(d, target);
}

void persist_unstable(struct dedup *d, uint32_t fid)
{
	struct frame *fr = cache_frame(d->c, fid);

	if (frame_flags(fr) & (F_DIGEST | F_PERSISTED))
		frame_clear(fr, F_DIGEST | F_PERSISTED);
}

/* After the digest pass hashed a frame: record it if it still is what
 * was hashed. map_lock held. */
static void digest_done(struct dedup *d, uint32_t fid, const void *copy,
			const uint8_t *dg)
{
	struct cache *c = d->c;
	struct frame *fr = cache_frame(c, fid);
	uint32_t fl = frame_flags(fr);

	if (!(fl & F_STABLE))
		return;                 /* left the tree: nothing to record */
	if (!(fl & F_DIGEST)) {
		/* Freed and reused meanwhile, the frame may hold other
		 * bytes; compared here, under map_lock, with the stable
		 * (so immutable) content, the digest is the frame's. */
		if (memcmp(copy, cache_frame_data(c, fid), PG))
			return;
		memcpy(d->digest[fid], dg, FP_DIGEST_LEN);
		frame_set(fr, F_DIGEST);
	}
	record_mappers(d, fid);
}

unsigned persist_digest_work(struct dedup *d, unsigned budget)
{
	struct cache *c = d->c;
	uint8_t dg[DIGEST_CHUNK][FP_DIGEST_LEN];
	uint32_t ids[DIGEST_CHUNK], fid, fl;
	bool ok[DIGEST_CHUNK];
	unsigned n, done = 0;

	if (!d->want)
		return 0;
	pthread_mutex_lock(&d->digest_lock);    /* digest_buf */
	pthread_mutex_lock(&c->map_lock);
	/* What waits now, at most: a frame put back (a mapper was busy)
	 * waits for the next pass, not for this one to spin on it. */
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
				record_mappers(d, fid);
				continue;
			}
			/* Copied, not hashed in place: a stable frame
			 * may be taken out and written once map_lock is
			 * dropped. */
			memcpy(d->digest_buf + (size_t)n * PG,
			       cache_frame_data(c, fid), PG);
			ids[n++] = fid;
		}
		if (!d->want_len)
			budget = done;  /* taken by someone else: done */
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
		for (unsigned i = 0; i < n; i++)
			if (ok[i])
				digest_done(d, ids[i],
					    d->digest_buf + (size_t)i * PG,
					    dg[i]);
		pthread_mutex_unlock(&c->map_lock);
	}
	pthread_mutex_unlock(&d->digest_lock);
	return done;
}

void dedup_flush(struct dedup *d)
{
	/* A few rounds for frames put back because a mapper was busy (the
	 * writeback thread may still hold a file for a moment). */
	for (int round = 0; d && round < 20; round++) {
		if (!persist_digest_work(d, UINT_MAX))
			break;
		usleep(1000);
	}
}

void persist_changed(struct dedup *d, struct cfile *f, uint64_t first,
		     uint64_t n)
{
	struct persist_file *pf = f->persist;
	struct store_ident id;

	if (!d->store)
		return;
	to_store_ident(&f->ident, &id);
	store_file_changed(d->store, f->ident.dev, f->ident.ino, &id, first, n);
	if (pf) {
		/* Our own change: the record follows the file. */
		pf->ident = f->ident;
		pf->win_n = 0;
	}
}

void persist_gone(struct dedup *d, struct cfile *f)
{
	if (d->store)
		store_forget_file(d->store, f->ident.dev, f->ident.ino);
}

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
	if (!d->digest)
		return 0;
	return resident_bytes(d->digest, digest_map_len(d->ncap)) +
	       resident_bytes(d->want, want_map_len(d->ncap)) +
	       resident_bytes(d->want_bits, bits_map_len(d->ncap)) +
	       DIGEST_CHUNK * PG;
}

void persist_stats(struct dedup *d, struct dedup_stats *st)
{
	struct store_stats ss;

	st->store_hits = atomic_load(&d->store_hits);
	st->digests_computed = atomic_load(&d->digests_computed);
	if (!d->store)
		return;
	store_get_stats(d->store, &ss);
	st->store_files = ss.files;
	st->store_pages = ss.pages;
	st->store_distinct = ss.distinct;
	st->store_bytes = ss.bytes;
	st->store_paused = ss.paused;
}

void dedup_file_deleted(struct dedup *d, uint64_t dev, uint64_t ino)
{
	if (d && d->store)
		store_forget_file(d->store, dev, ino);
}

int dedup_prune_missing(struct dedup *d, dedup_exists_cb exists, void *arg)
{
	if (!d || !d->store)
		return 0;
	return store_prune_missing(d->store, exists, arg);
}
