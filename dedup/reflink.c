/*
 * reflink: pages of reflinked files shared by their physical identity.
 *
 * Each backing file's extent map (FIEMAP) is loaded on the first fill that
 * needs it, stamped with the identity (size, mtime, ctime) the file had
 * just before the map was read. It is dropped whenever the mount changes
 * the file (writeback, truncate, punch, clone: reflink_changed) and
 * reloaded when the file's identity moved behind the mount. A page inside
 * an extent flagged SHARED has a physical identity (device, block); a
 * fresh frame filled from it is noted in the physical table, so that a
 * clone reading the same block maps that frame without backing I/O and
 * without hashing. A page of an unwritten extent maps the zero frame. Extent maps are read with FIEMAP_FLAG_SYNC: data the
 * backing file system still buffers (written behind the mount) is placed
 * first, so a rewritten block never looks shared.
 *
 * Trust: a frame's block P is a claim about the disk now. It is believed
 * only while one of the frame's mappers vouches for it: a clean page (the
 * frame is neither dirty nor being written back) of a file whose extent
 * map, loaded at the identity the file still has (fstat), places that
 * page at P. Every hit checks this under map_lock; a frame nobody vouches
 * for leaves the table. So a write, truncate, punch, unlink or unshare of
 * the vouching page ends the claim: the page leaves the frame (COW) or its
 * file's map is dropped or outdated. A clone's own map must also be as
 * fresh as its file, or it takes the normal path.
 *
 * Locking: the extent map of f is replaced under f's pidx_lock (write)
 * and map_lock, so either lock is enough to read it; the physical table
 * and frame->phys are under map_lock.
 */
#include "dedup_i.h"

#include <errno.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#define PG CACHE_PAGE_SIZE
#define FIEMAP_BATCH 256u
#define EXTENTS_MAX (1u << 20)

struct extent {
	uint64_t logical, physical, length;
	uint32_t flags;
};

struct extmap {
	struct cfile_ident ident;   /* of the file when loaded */
	uint64_t fill_seq;          /* the fill that last found the file
				     * unchanged (pidx_lock, write) */
	bool unsupported;           /* no FIEMAP here: content path only */
	uint32_t n;
	struct extent e[];
};

/* struct fiemap ends in a flexible array: room for a batch, aligned. */
union fiemap_buf {
	struct fiemap fm;
	char room[sizeof(struct fiemap) +
		  FIEMAP_BATCH * sizeof(struct fiemap_extent)];
};

/* Up to FIEMAP_BATCH extents of fd from start on, into q->fm. */
static int fiemap_batch(int fd, uint64_t start, uint32_t flags,
			union fiemap_buf *q)
{
	memset(&q->fm, 0, sizeof(q->fm));
	q->fm.fm_start = start;
	q->fm.fm_length = FIEMAP_MAX_OFFSET - start;
	q->fm.fm_extent_count = FIEMAP_BATCH;
	q->fm.fm_flags = flags;
	return ioctl(fd, FS_IOC_FIEMAP, &q->fm) < 0 ? -errno : 0;
}

/* Read f's extent map, stamped with the identity f had just before. */
static struct extmap *extmap_read(struct cfile *f)
{
	union fiemap_buf q;
	struct extmap *m = calloc(1, sizeof(*m));
	uint64_t start = 0;
	uint32_t cap = 0;

	int fd = f->fd;

	if (!m)
		return NULL;
	if (cfile_stat_ident(f, &m->ident)) {
		m->unsupported = true;
		return m;
	}
	for (;;) {
		/* Flush what the backing file system still holds in its own
		 * page cache (writes behind the mount): before that, a
		 * rewritten block still looks shared, or unwritten. */
		if (fiemap_batch(fd, start, FIEMAP_FLAG_SYNC, &q)) {
			m->unsupported = true;
			m->n = 0;
			return m;
		}
		if (!q.fm.fm_mapped_extents)
			return m;
		if (m->n + q.fm.fm_mapped_extents > cap) {
			struct extmap *g;

			cap = cap ? cap * 2 : 64;
			while (cap < m->n + q.fm.fm_mapped_extents)
				cap *= 2;
			if (cap > EXTENTS_MAX) {
				m->unsupported = true; /* too fragmented to pay */
				m->n = 0;
				return m;
			}
			g = realloc(m, sizeof(*m) + cap * sizeof(m->e[0]));
			if (!g) {
				free(m);
				return NULL;
			}
			m = g;
		}
		for (uint32_t i = 0; i < q.fm.fm_mapped_extents; i++) {
			struct fiemap_extent *fe = &q.fm.fm_extents[i];

			m->e[m->n++] = (struct extent){ fe->fe_logical,
							fe->fe_physical,
							fe->fe_length,
							fe->fe_flags };
			start = fe->fe_logical + fe->fe_length;
			if (fe->fe_flags & FIEMAP_EXTENT_LAST)
				return m;
		}
	}
}

bool reflink_file_shared(struct cfile *f)
{
	union fiemap_buf q;
	int ret;

	/* The first extents tell a clone from a file that shares nothing;
	 * without FIEMAP_FLAG_SYNC this costs no I/O. */
	pthread_rwlock_rdlock(&f->inval_lock); /* f->fd */
	ret = fiemap_batch(f->fd, 0, 0, &q);
	pthread_rwlock_unlock(&f->inval_lock);
	if (ret)
		return false;
	for (uint32_t i = 0; i < q.fm.fm_mapped_extents; i++)
		if (q.fm.fm_extents[i].fe_flags & FIEMAP_EXTENT_SHARED)
			return true;
	return false;
}

/* f's extent map, if it describes f as it is now (identity `now`, equal
 * to the one the cache holds for f); pidx_lock (write) held. */
static struct extmap *extmap_get(struct cfile *f, const struct cfile_ident *now)
{
	struct extmap *m = f->extents;

	if (m && cfile_ident_equal(&m->ident, now))
		return m;
	m = extmap_read(f);
	/* Others read a mapper's map under map_lock (phys_vouched). */
	pthread_mutex_lock(&f->cache->map_lock);
	free(f->extents);
	f->extents = m;
	pthread_mutex_unlock(&f->cache->map_lock);
	/* Changed while it was read: not a map of any one moment. */
	return m && cfile_ident_equal(&m->ident, now) ? m : NULL;
}

enum page_kind {
	PAGE_NONE,      /* no single aligned block we can name */
	PAGE_UNWRITTEN, /* allocated, never written: reads as zeros */
	PAGE_OWN,       /* at a block this file alone holds */
	PAGE_SHARED,    /* at a block shared with other files */
};

/* What backs page index of f, and its physical byte address if known. */
static enum page_kind page_phys(const struct extmap *m, uint64_t index,
				uint64_t *phys)
{
	uint64_t off = index * PG;
	uint32_t lo = 0, hi = m->n;
	const uint32_t unusable = FIEMAP_EXTENT_UNKNOWN |
				  FIEMAP_EXTENT_DELALLOC |
				  FIEMAP_EXTENT_ENCODED |
				  FIEMAP_EXTENT_DATA_ENCRYPTED |
				  FIEMAP_EXTENT_NOT_ALIGNED |
				  FIEMAP_EXTENT_DATA_INLINE |
				  FIEMAP_EXTENT_DATA_TAIL;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct extent *e = &m->e[mid];

		if (off < e->logical) {
			hi = mid;
		} else if (off >= e->logical + e->length) {
			lo = mid + 1;
		} else {
			if (e->flags & unusable)
				return PAGE_NONE;
			if (off + PG > e->logical + e->length)
				return PAGE_NONE;
			if (e->flags & FIEMAP_EXTENT_UNWRITTEN)
				return PAGE_UNWRITTEN;
			if ((e->physical | e->logical) & (PG - 1))
				return PAGE_NONE;
			*phys = e->physical + (off - e->logical);
			return e->flags & FIEMAP_EXTENT_SHARED ? PAGE_SHARED
							      : PAGE_OWN;
		}
	}
	return PAGE_NONE;
}

/* A small id per backing device, so that (device, block) fits 64 bits. */
static int dev_id(struct dedup *d, dev_t dev)
{
	for (unsigned i = 0; i < d->ndevs; i++)
		if (d->devs[i] == dev)
			return (int)i + 1;
	if (d->ndevs == DEDUP_MAX_DEVS)
		return -ENOSPC;
	d->devs[d->ndevs++] = dev;
	return (int)d->ndevs;
}

static uint64_t phys_word(int devid, uint64_t phys)
{
	return ((uint64_t)devid << 48) | ((phys >> 12) + 1);
}

/* Does mapper (g, index) of a clean frame place it at block word `key`
 * now? g's map must be of g's current identity. A map is only loaded
 * while the file is as the cache holds its pages (reflink_lookup) and is
 * dropped by every change the mount makes, so that suffices. map_lock
 * held (which keeps g's map and descriptor). */
static bool mapper_vouches(struct dedup *d, struct cfile *g, uint64_t index,
			   uint64_t key)
{
	const struct extmap *m = g->extents;
	struct cfile_ident now;
	uint64_t phys;
	int devid;

	if (!m || m->unsupported)
		return false;
	switch (page_phys(m, index, &phys)) {
	case PAGE_OWN:
	case PAGE_SHARED:
		break;
	default:
		return false;
	}
	devid = dev_id(d, m->ident.dev);
	if (devid < 0 || phys_word(devid, phys) != key)
		return false;
	return !cfile_stat_ident(g, &now) && cfile_ident_equal(&now, &m->ident);
}

/* Is frame fid's block claim true now (see Trust above)? map_lock held. */
static bool phys_vouched(struct dedup *d, uint32_t fid)
{
	struct frame_table *t = &d->c->ft;
	struct frame *fr = cache_frame(d->c, fid);
	struct mapper o;

	if (frame_flags(fr) & (F_DIRTY | F_WB | F_IO | F_ERROR))
		return false;
	if (fr->nmappers == 1) {
		o = frame_owner(t, fr);
		return mapper_vouches(d, o.file, o.index, fr->phys);
	}
	for (uint32_t i = 0; fr->nmappers > 1 && i < fr->m.rmap->n; i++) {
		o = frame_mapper(t, fr->m.rmap->m[i]);
		if (mapper_vouches(d, o.file, o.index, fr->phys))
			return true;
	}
	return false;
}

static void phys_drop(struct dedup *d, uint32_t fid)
{
	stree_remove(&d->phys, fid);
	frame_clear(cache_frame(d->c, fid), F_PHYS);
}

/* An unwritten extent reads as zeros: the zero frame, without I/O. */
static uint32_t map_unwritten(struct dedup *d, struct cfile *f, uint64_t index)
{
	struct cache *c = d->c;
	uint32_t hit = 0;

	if (!atomic_load(&d->use_zero_pages))
		return 0;
	pthread_mutex_lock(&c->map_lock);
	if (!pidx_store(&f->pidx, index, FID_ZERO)) {
		frame_add_mapper(&c->ft, FID_ZERO, f, index);
		hit = FID_ZERO;
	}
	pthread_mutex_unlock(&c->map_lock);
	return hit;
}

uint32_t reflink_lookup(struct dedup *d, struct cfile *f, uint64_t index)
{
	struct cache *c = d->c;
	struct cfile_ident now;
	struct extmap *m;
	uint64_t phys = 0, key;
	uint32_t cand, pos = 0, hit = 0;
	int devid;

	if (d->scope == DEDUP_SCOPE_NONE)
		return 0;
	/* Changed behind the mount since its pages were cached: the block
	 * map may no longer be the one those pages came from. Asked once per
	 * fill (its pages are looked up in a row under the index lock), not
	 * per page: a change between two pages of a fill is as much a race
	 * as one right after the question, and a syscall per page was a
	 * tenth of a cold read's time. */
	m = f->extents;
	if (!m || m->fill_seq != f->fill_seq ||
	    !cfile_ident_equal(&m->ident, &f->ident)) {
		if (cfile_stat_ident(f, &now) ||
		    !cfile_ident_equal(&now, &f->ident))
			return 0;
		m = extmap_get(f, &now);
		if (!m)
			return 0;
		m->fill_seq = f->fill_seq;
	}
	if (m->unsupported)
		return 0;
	switch (page_phys(m, index, &phys)) {
	case PAGE_SHARED:
		break;
	case PAGE_UNWRITTEN:
		return map_unwritten(d, f, index);
	default:
		return 0;
	}
	pthread_mutex_lock(&c->map_lock);
	devid = dev_id(d, f->ident.dev);
	if (devid < 0)
		goto out_unlock;
	key = phys_word(devid, phys);
	while ((cand = stree_next(&d->phys, key, &pos))) {
		struct frame *cf = cache_frame(c, cand);

		if (!cf->nmappers || !scope_match(cf->scope, dedup_scope_of(d, f)) ||
		    cf->nmappers >= atomic_load(&d->max_page_sharing) ||
		    (frame_flags(cf) & (F_IO | F_ERROR | F_DIRTY | F_WB)))
			continue; /* a fill that may still fail: not yet */
		if (!phys_vouched(d, cand)) {
			phys_drop(d, cand);
			pos = 0;
			continue;
		}
		if (pidx_store(&f->pidx, index, cand) ||
		    frame_add_mapper(&c->ft, cand, f, index)) {
			pidx_erase(&f->pidx, index);
			break;
		}
		frame_set(cf, F_REF);
		atomic_fetch_add(&d->reflink_merges, 1);
		/* Not recorded in the store: FIEMAP names the block
		 * again after a restart. */
		hit = cand;
		break;
	}
out_unlock:
	pthread_mutex_unlock(&c->map_lock);
	return hit;
}

void reflink_note(struct dedup *d, struct cfile *f, uint64_t index,
		  uint32_t fid)
{
	struct cache *c = d->c;
	struct frame *fr = cache_frame(c, fid);
	struct extmap *m = f->extents;
	uint64_t phys;
	int devid;

	/* Only right after reflink_lookup found f's map current. */
	if (!m || m->unsupported || !cfile_ident_equal(&m->ident, &f->ident) ||
	    page_phys(m, index, &phys) != PAGE_SHARED)
		return;
	pthread_mutex_lock(&c->map_lock);
	devid = dev_id(d, f->ident.dev);
	if (devid > 0 && !(frame_flags(fr) & F_PHYS)) {
		fr->phys = phys_word(devid, phys);
		fr->scope = dedup_scope_of(d, f);
		if (!stree_insert(&d->phys, fid))
			frame_set(fr, F_PHYS);
	}
	pthread_mutex_unlock(&c->map_lock);
}

/* fid (noted by its fill) merged into target by content: keep the
 * physical identity on the frame that stays. The page that brought it
 * becomes one of target's mappers and vouches for it as long as it would
 * have for fid; target's other mappers never held the block, and a hit
 * checks which mapper vouches. map_lock held. */
void dedup_move_phys(struct dedup *d, uint32_t fid, uint32_t target)
{
	struct cache *c = d->c;
	struct frame *fr = cache_frame(c, fid);
	struct frame *to = cache_frame(c, target);

	if (!(frame_flags(fr) & F_PHYS) || target == FID_ZERO ||
	    (frame_flags(to) & F_PHYS))
		return;
	phys_drop(d, fid);
	to->phys = fr->phys;
	if (!stree_insert(&d->phys, target))
		frame_set(to, F_PHYS);
}

void reflink_changed(struct dedup *d, struct cfile *f)
{
	struct extmap *m;

	pthread_mutex_lock(&d->c->map_lock);
	m = f->extents;
	f->extents = NULL;
	pthread_mutex_unlock(&d->c->map_lock);
	free(m);
}
