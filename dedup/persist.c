/*
 * persist: the LMDB store (store.h) seen from the cache.
 *
 * A file's records are used only while its identity is the one the store
 * holds (store_file_match). A page's record is the SHA-256 of its content
 * when it was recorded: stored once per content in a run, which the
 * file's recipe points into (store.h); in a run's whole groups only an
 * 8-byte tag per page is kept, and the group's digest over its members'
 * digests.
 *
 * Warm restart: a miss whose record names a resident stable frame is
 * mapped to it without backing I/O and without hashing, but only on the
 * SHA-256 of the page. Resident stable frames with a digest are indexed
 * by its first 8 bytes (dtab). A record whose SHA-256 is stored whole is
 * looked up there directly. A tag in a group is first made a digest: the
 * frames the group's tags name must hash, digests in order, to the
 * group's digest (a Merkle node); then each member's digest is that
 * frame's, and the page is mapped as on its own SHA-256. A tag alone,
 * which someone may craft a collision for, is never trusted. The zero
 * page is mapped on a zero record, or on the digest of zeros. A page that
 * must be read is hashed like any other fill: a record is never copied
 * into a frame, so a frame's digest always says what the frame holds.
 *
 * Digests (d->digest[fid], valid with F_DIGEST) are taken only where one
 * may be needed, and never on the request path beyond a fill that read:
 *   - a fill whose page has a record digests what it read (it did I/O
 *     anyway; once per content, as the next pages with it are mapped
 *     unread) and checks the record against it: F_PERSISTED only if the
 *     store holds this (the whole digest, or the tag of a group member);
 *     merged into a stable frame without a digest, it hands its digest on;
 *   - a stable frame that becomes shared without one waits in a ring
 *     (want) for the scanner thread, which digests it (persist_digest_work)
 *     and then queues the records of all its mappers; at unmount the ring
 *     is drained while the files still map their pages (dedup_flush, and
 *     dedup_destroy before the store closes), so a quick unmount after
 *     reading still persists.
 *
 * What is recorded: pages that were shared by content. The first mapper
 * of a frame is recorded with the digest, every other one as a page of
 * the same content as that one, which the store turns into a recipe into
 * the same run: copies cost a record each, not a digest per page. Pages
 * shared by their physical block (reflink) are not recorded: FIEMAP
 * names their block again after a restart. A page that matched no other
 * can save no I/O after a restart (there is nothing resident to map it to
 * before it is read), and storing it would cost disk for every page ever
 * read, like a dedup table of unique blocks. Records are queued for the
 * store's writer thread, never written on the read path. Writes through
 * the mount tell the store the file's new identity and which pages
 * changed.
 *
 * Why a digest can be trusted: F_DIGEST on a STABLE frame is the digest
 * of its content. It is set by the fill while the frame is under IO and
 * owned by the filler, or by the digest pass on a STABLE frame whose
 * content it compared, under map_lock, with the copy it hashed, or handed
 * on by a fill whose content memcmp() found equal. Stable content is
 * immutable, and a frame leaving the stable tree loses F_DIGEST (cache:
 * make_private, share_forget) and leaves dtab first (forget). A frame
 * outside the trees may keep a stale one (written in place after its
 * fill could not enter the stable tree); it is cleared before the scanner
 * can promote such a frame (persist_unstable), and only STABLE frames'
 * digests are used: dtab holds exactly the STABLE frames with F_DIGEST.
 *
 * Locking: struct persist_file hangs off the cfile, under its pidx_lock
 * (write); dtab, the digests of frames and the want ring are under
 * map_lock, but for the digest slot of a frame under IO, which its filler
 * owns. digest_lock (taken before map_lock) makes one digest pass at a
 * time: the scanner's, or dedup_flush()'s at unmount; it owns digest_buf.
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
/* Groups a window may name: its pages' groups in a run or two. */
#define PERSIST_GROUPS (PERSIST_WIN / STORE_GROUP * 2)
/* Frames the digest pass copies per hold of map_lock (and hashes
 * outside it): 128 KiB of copying keeps each hold short. */
#define DIGEST_CHUNK 32u

/* The records of PERSIST_WIN pages of a file, from win_first on. */
struct persist_win {
	struct store_rec rec[PERSIST_WIN];
	struct store_group grp[PERSIST_GROUPS];
};

struct persist_file {
	struct cfile_ident ident;   /* identity the record was matched at */
	bool checked;
	bool has_win;               /* win[0] is allocated */
	uint64_t store_id;          /* 0: no usable record */
	uint64_t win_first;         /* window of stored records */
	unsigned win_n;
	unsigned ngroups;
	/* With a record only (most files have none). One block, since the
	 * cache frees it with free(). */
	struct persist_win win[];
};

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

/* dtab's key: the first 8 bytes of the frame's digest. */
static uint64_t digest_key(void *arg, uint32_t fid)
{
	struct dedup *d = arg;
	uint64_t k;

	memcpy(&k, d->digest[fid], sizeof(k));
	return k;
}

static uint64_t tag_key(const uint8_t *tag)
{
	uint64_t k;

	memcpy(&k, tag, sizeof(k));
	return k;
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
	stree_fini(&d->dtab);
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
	stree_init(&d->dtab, digest_key, d);
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
		big = realloc(pf, sizeof(*pf) + sizeof(struct persist_win));
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

/* The stored record of page index, if any. */
static struct store_rec *stored_rec(struct dedup *d, struct persist_file *pf,
				    uint64_t index)
{
	struct store_rec *rec;

	if (!pf || !pf->store_id)
		return NULL;
	if (index < pf->win_first || index >= pf->win_first + pf->win_n) {
		pf->win_first = index;
		pf->win_n = 0;
		pf->ngroups = PERSIST_GROUPS;
		if (store_get_recs(d->store, pf->store_id, index, PERSIST_WIN,
				   pf->win->rec, pf->win->grp, &pf->ngroups))
			return NULL;
		pf->win_n = PERSIST_WIN;
	}
	rec = &pf->win->rec[index - pf->win_first];
	return rec->kind == STORE_REC_NONE ? NULL : rec;
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
static void dtab_add(struct dedup *d, uint32_t fid)
{
	CACHE_BUG_ON((frame_flags(cache_frame(d->c, fid)) &
		      (F_STABLE | F_DIGEST)) != (F_STABLE | F_DIGEST));
	if (fid != FID_ZERO)
		stree_insert(&d->dtab, fid); /* no memory: not found, fine */
}

/* A resident stable frame whose digest starts with tag (any scope). */
static uint32_t dtab_tagged(struct dedup *d, const uint8_t *tag)
{
	uint32_t cand, pos = 0;

	while ((cand = stree_next(&d->dtab, tag_key(tag), &pos))) {
		uint32_t fl = frame_flags(cache_frame(d->c, cand));

		if ((fl & (F_STABLE | F_DIGEST)) == (F_STABLE | F_DIGEST) &&
		    !(fl & (F_IO | F_ERROR)) &&
		    !memcmp(d->digest[cand], tag, STORE_TAG_LEN))
			return cand;
	}
	return 0;
}

/*
 * Learn the digests of group g of pf's window from the frames its tags
 * name: trusted only if they hash to the group's digest. Then every page
 * of the window in that group carries its whole digest.
 */
static bool verify_group(struct dedup *d, struct persist_file *pf,
			 unsigned g)
{
	const struct store_group *grp = &pf->win->grp[g];
	uint8_t leaf[STORE_GROUP][STORE_SHA256_LEN], dg[STORE_SHA256_LEN];
	const uint8_t *zd = fp_zero_digest();
	uint32_t cand;

	for (unsigned m = 0; m < STORE_GROUP; m++) {
		if (zd && !memcmp(grp->tag[m], zd, STORE_TAG_LEN)) {
			memcpy(leaf[m], zd, STORE_SHA256_LEN);
			continue;
		}
		cand = dtab_tagged(d, grp->tag[m]);
		if (!cand)
			return false;   /* not all resident: read, for now */
		memcpy(leaf[m], d->digest[cand], STORE_SHA256_LEN);
	}
	if (store_group_digest((const uint8_t (*)[STORE_SHA256_LEN])leaf, dg) ||
	    !fp_digest_equal(dg, grp->digest))
		return false;
	for (unsigned i = 0; i < pf->win_n; i++) {
		struct store_rec *r = &pf->win->rec[i];

		if (r->kind == STORE_REC_GROUP && r->group == g) {
			r->kind = STORE_REC_DIGEST;
			memcpy(r->sha256, leaf[r->member], STORE_SHA256_LEN);
		}
	}
	return true;
}

/* ---- records ---- */

static void queue_page(struct dedup *d, const struct store_ident *id,
		       uint64_t index, const uint8_t *sha,
		       const struct store_ident *ref, uint64_t ref_index)
{
	/* A full queue: skipped. */
	store_put_page(d->store, id, index, sha, ref, ref_index);
}

/*
 * Another file's identity, under its own locks: it changes under g's
 * pidx_lock (write) or inval_lock (write). Both come before map_lock,
 * which the caller holds, so they are only tried: false if g is busy.
 * self is the file whose pidx_lock the caller holds, if any.
 */
static bool mapper_ident(struct cfile *g, struct cfile *self,
			 struct store_ident *id)
{
	if (g == self) {
		to_store_ident(&g->ident, id);
		return true;
	}
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

/* Does mapper (a, ai) come before (b, bi)? The first is the reference. */
static bool mapper_before(const struct store_ident *a, uint64_t ai,
			  const struct store_ident *b, uint64_t bi)
{
	if (a->dev != b->dev)
		return a->dev < b->dev;
	if (a->ino != b->ino)
		return a->ino < b->ino;
	return ai < bi;
}

/*
 * A shared stable frame with a digest: the records of every mapper, then
 * F_PERSISTED. One of them, the same file for every frame of a set of
 * copies (the lowest device and inode), is recorded with the digest, the
 * others as pages of the same content: so its digests make one run and
 * the copies point into it. False if a mapper was busy: the frame is to
 * be tried again, nothing is queued meanwhile. map_lock held.
 */
static bool queue_mappers(struct dedup *d, uint32_t fid)
{
	struct frame *fr = cache_frame(d->c, fid);
	struct store_ident *ids;
	uint64_t *idx;
	uint32_t n, ref = UINT32_MAX;
	bool *got;

	if (fr->nmappers < 2 || (frame_flags(fr) & F_PERSISTED))
		return true;
	CACHE_BUG_ON((frame_flags(fr) & (F_STABLE | F_DIGEST)) !=
		     (F_STABLE | F_DIGEST));
	n = fr->m.rmap->n;
	/* Off the request path: the idents are read once, each mapper's
	 * under its own locks, and used for every record. */
	ids = malloc(n * (sizeof(*ids) + sizeof(*idx) + sizeof(*got)));
	if (!ids)
		return false;
	idx = (uint64_t *)(ids + n);
	got = (bool *)(idx + n);
	for (uint32_t i = 0; i < n; i++) {
		struct mapper m = frame_mapper(&d->c->ft, fr->m.rmap->m[i]);

		idx[i] = m.index;
		got[i] = mapper_ident(m.file, NULL, &ids[i]);
		if (!got[i] && !atomic_load(&d->record_partial)) {
			free(ids);
			return false;   /* all or none: one reference */
		}
		if (got[i] && (ref == UINT32_MAX ||
			       mapper_before(&ids[i], idx[i], &ids[ref],
					     idx[ref])))
			ref = i;
	}
	if (ref == UINT32_MAX) {
		free(ids);
		return false;
	}
	queue_page(d, &ids[ref], idx[ref], d->digest[fid], NULL, 0);
	for (uint32_t i = 0; i < n; i++)
		if (got[i] && i != ref)
			queue_page(d, &ids[i], idx[i], d->digest[fid],
				   &ids[ref], idx[ref]);
	free(ids);
	frame_set(fr, F_PERSISTED);
	return true;
}

/* Record a stable frame's mappers; false if it is to be tried again. */
static bool record_mappers(struct dedup *d, uint32_t fid)
{
	return queue_mappers(d, fid);
}

/* ---- the cache's side ---- */

/* Map (f, index) to cand, counted; map_lock and f's pidx_lock held. */
static uint32_t map_unread(struct dedup *d, struct cfile *f, uint64_t index,
			   uint32_t cand)
{
	struct cache *c = d->c;

	if (pidx_store(&f->pidx, index, cand))
		return 0;
	if (frame_add_mapper(&c->ft, cand, f, index)) {
		pidx_erase(&f->pidx, index);
		return 0;
	}
	atomic_fetch_add(&d->store_hits, 1);
	if (cand != FID_ZERO) {
		frame_set(cache_frame(c, cand), F_REF);
		atomic_fetch_add(&d->content_merges, 1);
	}
	return cand;
}

uint32_t persist_lookup(struct dedup *d, struct cfile *f, uint64_t index)
{
	struct persist_file *pf = pfile(d, f);
	struct cache *c = d->c;
	const uint8_t *zd = fp_zero_digest();
	struct store_rec *rec = stored_rec(d, pf, index);
	uint32_t cand, pos = 0, hit = 0, fl;
	uint16_t scope;

	if (!rec)
		return 0;
	scope = dedup_scope_of(d, f);
	pthread_mutex_lock(&c->map_lock);
	if (rec->kind == STORE_REC_GROUP && !verify_group(d, pf, rec->group))
		goto out_unlock;
	if (rec->kind == STORE_REC_ZERO ||
	    (zd && fp_digest_equal(rec->sha256, zd))) {
		if (atomic_load(&d->use_zero_pages))
			hit = map_unread(d, f, index, FID_ZERO);
		goto out_unlock;
	}
	while ((cand = stree_next(&d->dtab, tag_key(rec->sha256), &pos))) {
		struct frame *cf = cache_frame(c, cand);

		fl = frame_flags(cf);
		if (!scope_match(cf->scope, scope) ||
		    cf->nmappers >= atomic_load(&d->max_page_sharing) ||
		    (fl & (F_IO | F_ERROR | F_ZERO)) ||
		    (fl & (F_STABLE | F_DIGEST)) != (F_STABLE | F_DIGEST))
			continue;
		/* The same tag and another SHA-256 is another content,
		 * whether someone crafted the collision or not. */
		if (!fp_digest_equal(d->digest[cand], rec->sha256))
			continue;
		hit = map_unread(d, f, index, cand);
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
	const uint8_t *zd = fp_zero_digest();
	struct store_rec *rec;

	if (!d->digest)
		return;
	rec = stored_rec(d, pfile(d, f), index);
	if (!rec || (rec->kind == STORE_REC_ZERO && !zd))
		return;
	/* Only a claim: the fill checks it against what it reads
	 * (persist_fill_digest). The frame is under IO and ours; fp[1]
	 * says whether the claim is a whole digest or a tag (the fill
	 * sets fp afterwards). */
	memcpy(d->digest[fid], rec->kind == STORE_REC_ZERO ? zd : rec->sha256,
	       FP_DIGEST_LEN);
	fr->fp[1] = rec->kind != STORE_REC_GROUP;
	frame_set(fr, F_PERSISTED);
}

void persist_fill_digest(struct dedup *d, struct frame *fr, const void *data,
			 const struct fp *h)
{
	uint32_t fid = (uint32_t)(fr - d->c->ft.frames);
	uint8_t dg[FP_DIGEST_LEN];
	bool right;

	(void)h;
	if (!d->digest || !(frame_flags(fr) & F_PERSISTED))
		return;
	frame_clear(fr, F_PERSISTED);
	if (fp_digest(data, dg))
		return;
	atomic_fetch_add(&d->digests_computed, 1);
	/* A record that is not what was read (a store that lies, or a
	 * change the file's identity did not show) is not this frame's:
	 * the page is recorded anew if it is ever shared. */
	right = fr->fp[1] ? fp_digest_equal(d->digest[fid], dg)
			  : !memcmp(d->digest[fid], dg, STORE_TAG_LEN);
	memcpy(d->digest[fid], dg, FP_DIGEST_LEN);
	frame_set(fr, right ? F_DIGEST | F_PERSISTED : F_DIGEST);
}

void persist_stable(struct dedup *d, uint32_t fid)
{
	if (d->digest && (frame_flags(cache_frame(d->c, fid)) & F_DIGEST))
		dtab_add(d, fid);
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
	dtab_add(d, target);
}

void persist_shared(struct dedup *d, struct cfile *f, uint64_t index,
		    uint32_t target)
{
	struct frame *fr = cache_frame(d->c, target);
	struct store_ident id, ref;
	uint32_t fl;

	if (!d->store)
		return;
	to_store_ident(&f->ident, &id);
	if (target == FID_ZERO) {
		queue_page(d, &id, index, NULL, NULL, 0);
		return;
	}
	fl = frame_flags(fr);
	if ((fl & (F_STABLE | F_DIGEST | F_PERSISTED)) ==
	    (F_STABLE | F_DIGEST | F_PERSISTED)) {
		/* The others are recorded: this page joins them, as a page
		 * of the same content as one of them. */
		for (uint32_t i = 0; fr->nmappers > 1 && i < fr->m.rmap->n;
		     i++) {
			struct mapper m = frame_mapper(&d->c->ft,
						       fr->m.rmap->m[i]);

			if ((m.file == f && m.index == index) ||
			    !mapper_ident(m.file, f, &ref))
				continue;
			queue_page(d, &id, index, d->digest[target], &ref,
				   m.index);
			return;
		}
		/* The others busy: all of them again, later (the pages
		 * already recorded are put again, which changes nothing). */
		frame_clear(fr, F_PERSISTED);
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
		dtab_add(d, fid);
	}
	return record_mappers(d, fid);
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
				if (!record_mappers(d, fid)) {
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
