/*
 * rw: the read and write paths of the cache; see cache.h.
 *
 * Read: look pages up under the file's pidx_lock (read side) and pin them;
 * fill the misses (neighbours batched into one backing request), merge the
 * fresh frames through dedup, then reply with iovecs over the frames.
 * Write: copy into private frames (breaking sharing first), mark them dirty.
 */
#include "cache_i.h"
#include "bio.h"
#include "pause.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define READ_CHUNK 128u
/* Pages per backing read request: a run of misses is split so that
 * several requests are in flight at once. */
#define READ_REQ_PAGES 32u
#define WRITE_CHUNK 16u
#define PG CACHE_PAGE_SIZE

void cache_read_ctx_init(struct cache_read_ctx *rc)
{
	memset(rc, 0, sizeof(*rc));
}

void cache_read_ctx_fini(struct cache_read_ctx *rc)
{
	free(rc->bounce);
	rc->bounce = NULL;
}

/*
 * A fill found the backing file ending at eof, before the size the cache
 * holds for it: it was truncated behind the mount. Unless the mount has
 * data of its own there (dirty pages, an extension not yet on disk), the
 * file now ends there, so reads come back short instead of inventing
 * zeros. pidx_lock (write) held.
 */
void cache_shrunk_behind_locked(struct cfile *f, uint64_t eof,
				uint64_t bsize)
{
	/* While a fill runs (inval_lock shared) the mount only ever grows
	 * the file on disk: shorter than bsize was not our doing. */
	if (eof >= bsize || f->backing_size != bsize ||
	    f->size != f->backing_size || f->pidx.nr_tagged)
		return;
	f->size = f->backing_size = eof;
}

/*
 * Fill missing pages of f from idx[0] on; out[i] receives a pinned frame.
 * inval_lock must be held shared. Fills as many pages as frames can be had
 * (at least one with FILL_BLOCK) and returns how many, or -errno. Without
 * FILL_BLOCK, returns -EAGAIN when no frame is free (the caller holds pins
 * and must let them go first). FILL_AHEAD: readahead, the frames are not
 * marked referenced (unread, they are the first to go) and the pages count
 * as readahead_pages, not misses.
 */
int fill_pages(struct cfile *f, const uint64_t *idx, uint32_t *out,
	       unsigned n, unsigned how)
{
	bool may_block = how & FILL_BLOCK;
	struct cache *c = f->cache;
	uint32_t fresh[READ_CHUNK];
	bool io[READ_CHUNK] = { false };
	struct iovec iov[READ_CHUNK];
	struct bio_req req[READ_CHUNK];
	ssize_t got[READ_CHUNK];
	unsigned nreq = 0, nio = 0;
	uint64_t bsize, eof = UINT64_MAX;
	int err = 0, ret;

	/* Only the first frame may be waited for: waiting while holding
	 * frames taken for this fill could wait for ourselves. */
	for (unsigned i = 0; i < n; i++) {
		fresh[i] = cache_frame_alloc(c, may_block && i == 0);
		if (!fresh[i]) {
			if (!i)
				return may_block ? cache_alloc_errno(c)
						 : -EAGAIN;
			n = i;
			break;
		}
	}

	pthread_rwlock_wrlock(&f->pidx_lock);
	f->fill_seq++;
	bsize = f->backing_size;
	for (unsigned i = 0; i < n; i++) {
		uint32_t fid = pidx_lookup(&f->pidx, idx[i]);

		if (!fid && idx[i] << CACHE_PAGE_SHIFT >= bsize) {
			fid = FID_ZERO; /* past the backing EOF: no I/O */
		} else if (!fid && c->share.lookup_fill) {
			fid = c->share.lookup_fill(c->share.ctx, f, idx[i]);
		}
		if (fid) {
			frame_pin(cache_frame(c, fid));
			out[i] = fid;
			continue;
		}
		ret = pidx_store(&f->pidx, idx[i], fresh[i]);
		if (!ret) {
			pthread_mutex_lock(&c->map_lock);
			ret = frame_add_mapper(&c->ft, fresh[i], f, idx[i]);
			if (ret)
				pidx_erase(&f->pidx, idx[i]);
			pthread_mutex_unlock(&c->map_lock);
		}
		if (ret) {
			err = ret;
			out[i] = 0;
			continue;
		}
		frame_set(cache_frame(c, fresh[i]),
			  F_IO | (how & FILL_AHEAD ? F_AHEAD : F_REF));
		frame_pin(cache_frame(c, fresh[i]));
		if (c->share.note_fill)
			c->share.note_fill(c->share.ctx, f, idx[i], fresh[i]);
		out[i] = fresh[i];
		io[i] = true;
		nio++;
	}
	pthread_rwlock_unlock(&f->pidx_lock);
	for (unsigned i = 0; i < n; i++)
		if (!io[i])
			cache_frame_release(c, fresh[i]);

	/* One request per run of neighbouring pages. */
	for (unsigned i = 0, prev = UINT32_MAX; i < n; i++) {
		if (!io[i])
			continue;
		iov[i].iov_base = cache_frame_data(c, out[i]);
		iov[i].iov_len = PG;
		if (prev != UINT32_MAX && prev == i - 1 &&
		    idx[i] == idx[prev] + 1 &&
		    req[nreq - 1].niov < READ_REQ_PAGES) {
			req[nreq - 1].niov++;
		} else {
			req[nreq++] = (struct bio_req){
				.fd = f->fd,
				.off = idx[i] << CACHE_PAGE_SHIFT,
				.iov = &iov[i], .niov = 1 };
		}
		prev = i;
	}
	ret = nreq ? bio_run(req, nreq) : 0;
	for (unsigned r = 0; r < nreq; r++) {
		ssize_t res = ret ? ret : req[r].res;
		unsigned first = (unsigned)(req[r].iov - iov);

		if (res > 0)
			atomic_fetch_add(&c->st.backing_read_bytes, (uint64_t)res);
		if (res >= 0 && (size_t)res < req[r].niov * PG &&
		    req[r].off + (uint64_t)res < eof)
			eof = req[r].off + (uint64_t)res;
		for (unsigned k = 0; k < req[r].niov; k++) {
			ssize_t left = res < 0 ? res
				     : res - (ssize_t)k * (ssize_t)PG;
			unsigned i = first + k;

			if (res >= 0 && left < 0)
				left = 0; /* past the end of the backing file */
			got[i] = left;
			if (left >= 0 && left < (ssize_t)PG)
				memset((char *)iov[i].iov_base +
					       (left > 0 ? left : 0),
				       0, PG - (size_t)(left > 0 ? left : 0));
		}
	}
	atomic_fetch_add(&c->st.backing_reads, nreq);
	atomic_fetch_add(how & FILL_AHEAD ? &c->st.readahead_pages
					  : &c->st.misses, nio);

	/* Hash outside the locks; the frames are ours while under IO. */
	if (c->share.hash_fill)
		for (unsigned i = 0; i < n; i++)
			if (io[i] && got[i] >= 0)
				c->share.hash_fill(c->share.ctx,
						   cache_frame(c, out[i]),
						   cache_frame_data(c, out[i]));

	pthread_rwlock_wrlock(&f->pidx_lock);
	cache_shrunk_behind_locked(f, eof, bsize);
	pthread_mutex_lock(&c->map_lock);
	for (unsigned i = 0; i < n; i++) {
		if (!io[i])
			continue;
		if (pidx_lookup(&f->pidx, idx[i]) != out[i])
			continue; /* dropped meanwhile */
		if (got[i] < 0) {
			pidx_erase(&f->pidx, idx[i]);
			cache_unmap_page_locked(c, f, idx[i], out[i]);
		} else if (c->share.merge_fill) {
			c->share.merge_fill(c->share.ctx, f, idx[i], out[i]);
		}
	}
	pthread_mutex_unlock(&c->map_lock);
	pthread_rwlock_unlock(&f->pidx_lock);
	for (unsigned i = 0; i < n; i++) {
		if (!io[i])
			continue;
		frame_end_io(cache_frame(c, out[i]), got[i] >= 0);
		if (got[i] < 0 && !err)
			err = (int)got[i];
	}
	if (err) {
		for (unsigned i = 0; i < n; i++)
			if (out[i])
				cache_frame_unpin(c, out[i]);
		return err;
	}
	return (int)n;
}

static void unpin_all(struct cache *c, uint32_t *fids, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (fids[i])
			cache_frame_unpin(c, fids[i]);
}

/* Pin pages first..first+n-1 into fids (misses filled). Returns how many
 * were misses, or -errno. */
static int pin_pages(struct cfile *f, uint64_t first, unsigned n,
		     uint32_t *fids, bool may_block)
{
	struct cache *c = f->cache;
	uint64_t miss_idx[READ_CHUNK];
	unsigned miss_pos[READ_CHUNK], nmiss, hits;
	uint32_t got[READ_CHUNK];
	bool ahead_only = true, retried = false;
	int ret = 0;

again:
	nmiss = hits = 0;
	pthread_rwlock_rdlock(&f->pidx_lock);
	for (unsigned i = 0; i < n; i++) {
		uint32_t fid = pidx_lookup(&f->pidx, first + i);

		fids[i] = fid;
		if (fid) {
			struct frame *fr = cache_frame(c, fid);

			frame_pin(fr);
			if (!(frame_flags(fr) & F_REF))
				frame_set(fr, F_REF);
			hits++;
		} else {
			miss_pos[nmiss] = i;
			miss_idx[nmiss++] = first + i;
		}
	}
	pthread_rwlock_unlock(&f->pidx_lock);
	atomic_fetch_add(&c->st.hits, hits);
	for (unsigned done = 0; done < nmiss;) {
		/* Wait for frames only while holding no pin: pinned frames
		 * cannot be evicted, so waiting on them could deadlock. */
		bool block = may_block && !hits && !done;

		pthread_rwlock_rdlock(&f->inval_lock);
		ret = fill_pages(f, miss_idx + done, got + done, nmiss - done,
				 block ? FILL_BLOCK : 0);
		pthread_rwlock_unlock(&f->inval_lock);
		if (ret < 0) {
			for (unsigned k = 0; k < done; k++)
				fids[miss_pos[k]] = got[k];
			unpin_all(c, fids, n);
			memset(fids, 0, n * sizeof(*fids));
			return ret;
		}
		done += (unsigned)ret;
	}
	for (unsigned k = 0; k < nmiss; k++)
		fids[miss_pos[k]] = got[k];
	ret = 0;
	for (unsigned i = 0; i < n; i++) {
		struct frame *fr = cache_frame(c, fids[i]);

		frame_wait_io(fr);
		if (frame_flags(fr) & F_ERROR) {
			ret = -EIO;
			ahead_only &= !!(frame_flags(fr) & F_AHEAD);
		}
	}
	if (ret) {
		unpin_all(c, fids, n);
		memset(fids, 0, n * sizeof(*fids));
		/* A failed readahead is not this read's failure: the pages
		 * it could not fill are gone, read them ourselves. */
		if (ahead_only && !retried) {
			retried = true;
			goto again;
		}
		return ret;
	}
	return (int)nmiss;
}

/* Copy bytes [off, off+len) of pinned pages (starting at page first). */
static void copy_out(struct cache *c, const uint32_t *fids, uint64_t first,
		     uint64_t off, size_t len, char *dst)
{
	while (len) {
		uint64_t p = off >> CACHE_PAGE_SHIFT;
		size_t in = off & (PG - 1);
		size_t take = PG - in < len ? PG - in : len;

		memcpy(dst, (char *)cache_frame_data(c, fids[p - first]) + in,
		       take);
		dst += take;
		off += take;
		len -= take;
	}
}

void cache_read_release(struct cfile *f, struct cache_read_ctx *rc)
{
	unpin_all(f->cache, rc->fids, CACHE_MAX_IO_PAGES + 2);
	memset(rc->fids, 0, sizeof(rc->fids));
	rc->niov = 0;
	rc->bytes = 0;
}

int cache_read_bounce(struct cache_read_ctx *rc)
{
	/* Page aligned: the backing fd may be O_DIRECT (direct.c). */
	if (!rc->bounce &&
	    posix_memalign(&rc->bounce, PG, (size_t)(CACHE_MAX_IO_PAGES + 1) * PG))
		rc->bounce = NULL;
	return rc->bounce ? 0 : -ENOMEM;
}

int cache_read(struct cfile *f, uint64_t off, size_t len,
	       struct cache_read_ctx *rc)
{
	struct cache *c = f->cache;
	uint64_t size, first, last, p;
	unsigned npages;
	bool bounced = false, filled = false;
	size_t copied = 0;
	int ret = 0;

	rc->niov = 0;
	rc->bytes = 0;
	memset(rc->fids, 0, sizeof(rc->fids));
	if (len > (size_t)CACHE_MAX_IO_PAGES * PG)
		len = (size_t)CACHE_MAX_IO_PAGES * PG;
	if (atomic_load(&f->kernel_mode) || off + len > CACHE_MAPPED_END)
		return cache_read_direct(f, off, len, rc);
	size = cfile_size(f);
	if (off >= size || !len)
		return 0;
	if (len > size - off)
		len = size - off;
	first = off >> CACHE_PAGE_SHIFT;
	last = (off + len - 1) >> CACHE_PAGE_SHIFT;
	npages = (unsigned)(last - first + 1);

	for (p = first; p <= last;) {
		unsigned n = (unsigned)(last - p + 1);
		uint32_t *slot = &rc->fids[p - first];
		bool holding = !bounced && p > first;

		if (n > READ_CHUNK)
			n = READ_CHUNK;
		if (bounced)
			n = 1; /* under pressure: one pin at a time */
		ret = pin_pages(f, p, n, slot, !holding);
		if (ret == -EAGAIN) {
			/* Out of frames while holding pins: copy what we
			 * have, let the pins go, then wait for frames. */
			ret = cache_read_bounce(rc);
			if (ret)
				goto out_release;
			copied = p > first ? (size_t)((p << CACHE_PAGE_SHIFT) - off)
					   : 0;
			copy_out(c, rc->fids, first, off, copied, rc->bounce);
			unpin_all(c, rc->fids, npages);
			memset(rc->fids, 0, sizeof(rc->fids));
			bounced = true;
			continue;
		}
		if (ret < 0)
			goto out_release;
		filled |= ret > 0;
		if (bounced) {
			uint64_t from = p << CACHE_PAGE_SHIFT;
			uint64_t to = (p + n) << CACHE_PAGE_SHIFT;

			if (from < off)
				from = off;
			if (to > off + len)
				to = off + len;
			copy_out(c, slot - (p - first), first, from,
				 (size_t)(to - from),
				 (char *)rc->bounce + (from - off));
			unpin_all(c, slot, n);
			memset(slot, 0, n * sizeof(*slot));
		}
		p += n;
	}

	cache_readahead(f, first, last);
	/* A fill may have found the file shorter than we knew it (a read
	 * that hit every page has nothing to learn). */
	size = filled ? cfile_size(f) : off + len;
	if (off >= size) {
		cache_read_release(f, rc);
		return 0;
	}
	if (len > size - off) {
		len = size - off;
		npages = (unsigned)(((off + len - 1) >> CACHE_PAGE_SHIFT) -
				    first + 1);
	}

	if (bounced) {
		rc->iov[0].iov_base = rc->bounce;
		rc->iov[0].iov_len = len;
		rc->niov = 1;
	} else {
		size_t left = len;
		uint64_t o = off;

		for (unsigned i = 0; i < npages; i++) {
			size_t in = o & (PG - 1);
			size_t take = PG - in < left ? PG - in : left;

			rc->iov[i].iov_base =
				(char *)cache_frame_data(c, rc->fids[i]) + in;
			rc->iov[i].iov_len = take;
			o += take;
			left -= take;
		}
		rc->niov = npages;
	}
	rc->bytes = len;
	return 0;

out_release:
	cache_read_release(f, rc);
	return ret;
}

ssize_t cache_pread(struct cfile *f, void *buf, size_t len, uint64_t off)
{
	struct cache_read_ctx *rc = malloc(sizeof(*rc));
	size_t done = 0;
	int ret = 0;

	if (!rc)
		return -ENOMEM;
	cache_read_ctx_init(rc);
	while (done < len) {
		size_t want = len - done;

		ret = cache_read(f, off + done, want, rc);
		if (ret || !rc->bytes)
			break;
		for (unsigned i = 0, at = 0; i < rc->niov; i++) {
			memcpy((char *)buf + done + at, rc->iov[i].iov_base,
			       rc->iov[i].iov_len);
			at += rc->iov[i].iov_len;
		}
		done += rc->bytes;
		cache_read_release(f, rc);
	}
	cache_read_release(f, rc);
	cache_read_ctx_fini(rc);
	free(rc);
	return ret ? ret : (ssize_t)done;
}

/*
 * Make page index writable in place for the holder of f's pidx_lock:
 * returns the fid to write into, using *spare for a COW copy (then *spare
 * is consumed and set to 0), or 0 if a copy is needed and there is no
 * spare (the frame gained a mapper since the caller looked). map_lock is
 * taken here.
 */
static uint32_t make_private(struct cfile *f, uint64_t index, uint32_t fid,
			     uint32_t *spare, bool whole_page)
{
	struct cache *c = f->cache;
	struct frame *fr = cache_frame(c, fid);
	uint32_t fl = frame_flags(fr);
	/* Pins of a frame only we map are taken under our index lock,
	 * held here: pinned now (a reply, a writeback in flight) is pinned
	 * until copied, and unpinned stays so. */
	bool pinned = atomic_load(&fr->pins) != 0;
	bool shared;
	uint32_t nf = fid;

	if (!(fl & (F_STABLE | F_UNSTABLE | F_PHYS | F_ZERO)) &&
	    !(fl & F_ORPHAN) && !pinned &&
	    __atomic_load_n(&fr->nmappers, __ATOMIC_RELAXED) == 1)
		return fid; /* only STABLE/UNSTABLE/PHYS frames gain mappers
			     * without their owner's index lock, held here */
	pthread_mutex_lock(&c->map_lock);
	shared = fid == FID_ZERO || fr->nmappers > 1;
	if ((shared || pinned) && !*spare) {
		nf = 0;
	} else if (shared || pinned) {
		/* A page being read out (or written back) keeps the bytes
		 * it had: the write goes to a copy, as XFS orders a read
		 * and a write of one page. */
		nf = *spare;
		*spare = 0;
		if (!whole_page)
			memcpy(cache_frame_data(c, nf), cache_frame_data(c, fid),
			       PG);
		atomic_store(&cache_frame(c, nf)->flags, F_UPTODATE);
		if (frame_flags(fr) & F_DIRTY) {
			/* the copy carries it: write_page dirties nf */
			frame_clear(fr, F_DIRTY);
			atomic_fetch_sub(&c->nr_dirty, 1);
		}
		pidx_store(&f->pidx, index, nf); /* slot exists: no alloc */
		frame_add_mapper(&c->ft, nf, f, index); /* inline: no alloc */
		cache_unmap_page_locked(c, f, index, fid);
		if (shared)
			atomic_fetch_add(&c->st.cow_breaks, 1);
	} else if (c->share.forget &&
		   (frame_flags(fr) & (F_STABLE | F_UNSTABLE | F_PHYS))) {
		c->share.forget(c->share.ctx, fid);
		frame_tree_flags(&c->ft, fr, F_STABLE | F_UNSTABLE | F_PHYS |
					     F_HASHED | F_PERSISTED | F_DIGEST,
				 0);
	}
	pthread_mutex_unlock(&c->map_lock);
	return nf;
}

/* Bring a page that a write covers only partly into the cache. */
static int prefill_partial(struct cfile *f, uint64_t index)
{
	uint32_t fid;
	int ret;

	ret = pin_pages(f, index, 1, &fid, true);
	if (ret < 0)
		return ret;
	cache_frame_unpin(f->cache, fid);
	return 0;
}

/* Does writing page fid in place need a fresh frame (miss or shared)? */
static bool needs_frame(struct cache *c, uint32_t fid)
{
	struct frame *fr;

	if (!fid || fid == FID_ZERO)
		return true;
	fr = cache_frame(c, fid);
	/* Mappers join a STABLE frame by content and a PHYS one by its
	 * block, both without our index lock: a copy may be needed. A
	 * pinned frame is copied too (make_private). */
	return (frame_flags(fr) & (F_STABLE | F_PHYS)) ||
	       __atomic_load_n(&fr->nmappers, __ATOMIC_RELAXED) != 1 ||
	       atomic_load(&fr->pins) != 0;
}

/* Frames for the pages of a chunk that need one; all or none. */
static int get_spares(struct cache *c, uint32_t *spare, const bool *need,
		      unsigned n)
{
	unsigned got = 0;

	for (unsigned i = 0; i < n; i++) {
		spare[i] = 0;
		if (!need[i])
			continue;
		/* Block only for the first: a writer that waits while
		 * holding spares could starve another that does too. */
		spare[i] = cache_frame_alloc(c, got == 0);
		if (!spare[i])
			goto out_release;
		got++;
	}
	return 0;

out_release:
	for (unsigned i = 0; i < n; i++) {
		cache_frame_release(c, spare[i]);
		spare[i] = 0;
	}
	/* Only a failed wait is final; holding spares, we only tried. */
	return got ? -EAGAIN : cache_alloc_errno(c);
}

static void put_spares(struct cache *c, uint32_t *spare, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		if (spare[i])
			cache_frame_release(c, spare[i]);
		spare[i] = 0;
	}
}

/* Write into page index under f's pidx_lock (write side); *spare is used
 * if a frame is needed. Returns 0, -EAGAIN to retry unlocked, -errno. */
static int write_page(struct cfile *f, uint64_t index, const char *src,
		      size_t in, size_t end, uint32_t *spare)
{
	struct cache *c = f->cache;
	uint64_t pstart = index << CACHE_PAGE_SHIFT;
	bool whole = in == 0 && end == PG;
	uint32_t fid = pidx_lookup(&f->pidx, index);
	struct frame *fr;

	if (fid) {
		fr = cache_frame(c, fid);
		if (frame_flags(fr) & F_IO)
			return -EAGAIN;
		if (needs_frame(c, fid) && !*spare)
			return -EAGAIN;
		pause_point(PAUSE_WRITE_COW);
		fid = make_private(f, index, fid, spare, whole);
		if (!fid)
			return -EAGAIN;
	} else {
		if (!whole && pstart < f->backing_size)
			return -EAGAIN; /* evicted since the prefill */
		if (!*spare)
			return -EAGAIN;
		fid = *spare;
		if (pidx_store(&f->pidx, index, fid))
			return -ENOMEM;
		*spare = 0;
		memset(cache_frame_data(c, fid), 0, PG);
		pthread_mutex_lock(&c->map_lock);
		frame_add_mapper(&c->ft, fid, f, index); /* inline: no alloc */
		pthread_mutex_unlock(&c->map_lock);
		atomic_store(&cache_frame(c, fid)->flags, F_UPTODATE);
	}
	fr = cache_frame(c, fid);
	memcpy((char *)cache_frame_data(c, fid) + in, src, end - in);
	if (!(frame_flags(fr) & F_DIRTY)) {
		frame_set(fr, F_DIRTY | F_REF);
		frame_set_volatile(&c->ft, fr);
		pidx_tag_set(&f->pidx, index);
		atomic_fetch_add(&c->nr_dirty, 1);
	} else {
		frame_set_volatile(&c->ft, fr);
	}
	return 0;
}

/* Wait for the fill of page index, if one is under way. */
static void wait_page_io(struct cfile *f, uint64_t index)
{
	struct cache *c = f->cache;
	uint32_t fid;

	pthread_rwlock_rdlock(&f->pidx_lock);
	fid = pidx_lookup(&f->pidx, index);
	if (fid)
		frame_pin(cache_frame(c, fid));
	pthread_rwlock_unlock(&f->pidx_lock);
	if (fid) {
		frame_wait_io(cache_frame(c, fid));
		cache_frame_unpin(c, fid);
	}
}

/*
 * Write one chunk of at most WRITE_CHUNK pages; inval_lock held shared.
 * When the state of a page changed between preparing and writing (-EAGAIN
 * from write_page), the whole chunk is written again: rewriting the same
 * bytes is harmless, and pages already made private need no new frame.
 */
static int write_chunk(struct cfile *f, const char *buf, size_t len,
		       uint64_t off)
{
	struct cache *c = f->cache;
	uint64_t first = off >> CACHE_PAGE_SHIFT;
	uint64_t last = (off + len - 1) >> CACHE_PAGE_SHIFT;
	unsigned n = (unsigned)(last - first + 1);
	uint32_t spare[WRITE_CHUNK] = { 0 };
	bool need[WRITE_CHUNK];
	unsigned i;
	int ret;

	for (;;) {
		if ((off & (PG - 1)) && (ret = prefill_partial(f, first)))
			return ret;
		if (((off + len) & (PG - 1)) && (last != first || !(off & (PG - 1))) &&
		    (ret = prefill_partial(f, last)))
			return ret;
		pthread_rwlock_rdlock(&f->pidx_lock);
		for (i = 0; i < n; i++)
			need[i] = needs_frame(c, pidx_lookup(&f->pidx,
							     first + i));
		pthread_rwlock_unlock(&f->pidx_lock);
		ret = get_spares(c, spare, need, n);
		if (ret)
			return ret;

		pthread_rwlock_wrlock(&f->pidx_lock);
		for (i = 0; i < n; i++) {
			uint64_t index = first + i;
			uint64_t pstart = index << CACHE_PAGE_SHIFT;
			size_t in = index == first ? (size_t)(off - pstart) : 0;
			size_t end = index == last
					     ? (size_t)(off + len - pstart)
					     : PG;

			ret = write_page(f, index, buf + (pstart + in - off),
					 in, end, &spare[i]);
			if (ret)
				break;
		}
		if (!ret && off + len > f->size)
			f->size = off + len;
		pthread_rwlock_unlock(&f->pidx_lock);
		put_spares(c, spare, n);
		if (ret != -EAGAIN)
			return ret;
		wait_page_io(f, first + i);
	}
}

ssize_t cache_write(struct cfile *f, const void *buf, size_t len,
		    uint64_t off, bool append, uint64_t *off_out)
{
	struct cache *c = f->cache;
	size_t done = 0, mapped;
	unsigned chunk = WRITE_CHUNK;
	struct range_held range;
	int ret = 0;

	if (!f->fd_writable)
		return -EBADF;
	/* An append's offset is the size once no other write is under way;
	 * any other write holds just its own pages. */
	if (append) {
		range_lock_all(&f->write_range);
		off = cfile_size(f);
	}
	if (off_out)
		*off_out = off;
	if (off + len < off || off + len > (uint64_t)INT64_MAX) {
		ret = -EFBIG;
		goto out_unlock;
	}
	/* A mapping holds page indexes up to MAP_INDEX_MAX (4 PiB): bytes
	 * past them go to the backing file, uncached. */
	mapped = off >= CACHE_MAPPED_END ? 0
		 : off + len > CACHE_MAPPED_END ? (size_t)(CACHE_MAPPED_END - off)
						: len;
	if (!append)
		range_lock(&f->write_range, &range, off >> CACHE_PAGE_SHIFT,
			   (off + len - (len != 0)) >> CACHE_PAGE_SHIFT);
	pthread_rwlock_rdlock(&f->inval_lock);
	while (done < mapped) {
		uint64_t at = off + done;
		uint64_t chunk_end = ((at >> CACHE_PAGE_SHIFT) + chunk)
				     << CACHE_PAGE_SHIFT;
		size_t n = chunk_end - at < mapped - done ? chunk_end - at
							  : mapped - done;

		ret = write_chunk(f, (const char *)buf + done, n, at);
		if (ret == -EAGAIN && chunk > 1) {
			chunk = 1; /* frames are scarce: a page at a time */
			continue;
		}
		if (ret)
			break;
		done += n;
		/* On the dirty list at once: a long write in a small cache
		 * needs writeback to free frames before it ends. */
		cache_wb_mark_dirty(c, f);
		if (atomic_load(&c->nr_dirty) * 2 >
		    __atomic_load_n(&c->ft.limit, __ATOMIC_RELAXED))
			cache_wb_kick(c);
	}
	if (!ret && done < len) {
		ssize_t n = cache_write_unmapped(f, (const char *)buf + done,
						 len - done, off + done);

		if (n < 0)
			ret = (int)n;
		else
			done += (size_t)n;
	}
	/* writeback_ms=0: write-through, on disk before the write returns.
	 * A kernel-mode file's written pages stay here, dirty, until written
	 * back (then they go: the kernel holds them). */
	if (done && !c->cfg.writeback_ms) {
		int err = cfile_writeback_locked(f);

		if (err) {
			atomic_store(&f->wb_err, 0); /* reported right here */
			done = 0;
			ret = err;
		}
	}
	pthread_rwlock_unlock(&f->inval_lock);
	if (done)
		atomic_store(&f->mtime_ns, cache_now_ns());
	if (!append)
		range_unlock(&f->write_range, &range);
out_unlock:
	if (append)
		range_unlock_all(&f->write_range);
	return done ? (ssize_t)done : ret;
}
