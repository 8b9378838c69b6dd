/*
 * reflink: pages of reflinked files shared by their physical identity.
 *
 * Each backing file's extent map (FIEMAP) is loaded on the first fill that
 * needs it and reloaded whenever the file's identity (size, mtime, ctime)
 * moved, which every write, truncate, punch or clone does, through the
 * mount or behind it. A page inside an extent flagged SHARED has a
 * physical identity (device, block); a fresh frame filled from it is noted
 * in the physical table, so that a clone reading the same block maps that
 * frame without backing I/O and without hashing. Extent maps are read with
 * FIEMAP_FLAG_SYNC: data the backing file system still buffers (written
 * behind the mount) is placed first, so a rewritten block never looks
 * shared.
 *
 * Trust: a frame's physical identity stays true while some mapper still
 * holds that block. The frame's first mapper is checked (fstat) on every
 * hit: if its identity moved since its extent map was loaded, the block
 * may have been freed and reused, and the entry is dropped instead.
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
	bool unsupported;           /* no FIEMAP here: content path only */
	uint32_t n;
	struct extent e[];
};

static bool ident_same(const struct cfile_ident *a, const struct cfile_ident *b)
{
	return a->size == b->size && a->mtime_ns == b->mtime_ns &&
	       a->ctime_ns == b->ctime_ns && a->ino == b->ino &&
	       a->dev == b->dev;
}

static struct extmap *extmap_read(int fd, const struct cfile_ident *id)
{
	/* struct fiemap ends in a flexible array: room for it, aligned. */
	union {
		struct fiemap fm;
		char room[sizeof(struct fiemap) +
			  FIEMAP_BATCH * sizeof(struct fiemap_extent)];
	} q;
	struct extmap *m = calloc(1, sizeof(*m));
	uint64_t start = 0;
	uint32_t cap = 0;

	if (!m)
		return NULL;
	m->ident = *id;
	for (;;) {
		memset(&q.fm, 0, sizeof(q.fm));
		q.fm.fm_start = start;
		q.fm.fm_length = FIEMAP_MAX_OFFSET - start;
		q.fm.fm_extent_count = FIEMAP_BATCH;
		/* Flush what the backing file system still holds in its own
		 * page cache (writes behind the mount): before that, a
		 * rewritten block still looks shared, or unwritten. */
		q.fm.fm_flags = FIEMAP_FLAG_SYNC;
		if (ioctl(fd, FS_IOC_FIEMAP, &q.fm) < 0) {
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

/* The file's current extent map; pidx_lock (write) held. */
static struct extmap *extmap_get(struct cfile *f)
{
	struct extmap *m = f->extents;

	struct extmap *fresh;

	if (m && ident_same(&m->ident, &f->ident))
		return m;
	fresh = extmap_read(f->fd, &f->ident);
	/* Others read a mapper's map under map_lock (phys_still_true). */
	pthread_mutex_lock(&f->cache->map_lock);
	f->extents = fresh;
	pthread_mutex_unlock(&f->cache->map_lock);
	free(m);
	return fresh;
}

enum page_kind { PAGE_PLAIN, PAGE_SHARED };

/* What backs page index of f, and its physical byte address if shared. */
static enum page_kind page_phys(struct extmap *m, uint64_t index,
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
		struct extent *e = &m->e[mid];

		if (off < e->logical) {
			hi = mid;
		} else if (off >= e->logical + e->length) {
			lo = mid + 1;
		} else {
			if (e->flags & unusable)
				return PAGE_PLAIN;
			if (off + PG > e->logical + e->length ||
			    (e->physical | e->logical) & (PG - 1))
				return PAGE_PLAIN;
			/* Unwritten extents read as zeros through the normal
			 * path (and merge into the zero frame there). */
			if (!(e->flags & FIEMAP_EXTENT_SHARED) ||
			    (e->flags & FIEMAP_EXTENT_UNWRITTEN))
				return PAGE_PLAIN;
			*phys = e->physical + (off - e->logical);
			return PAGE_SHARED;
		}
	}
	return PAGE_PLAIN;
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

/* Is frame fid's physical identity still held by its first mapper? */
static bool phys_still_true(struct dedup *d, uint32_t fid)
{
	struct frame *fr = cache_frame(d->c, fid);
	struct cfile *g = fr->nmappers == 1 ? fr->m.owner.file
					    : fr->m.rmap->m[0].file;
	struct extmap *m = g->extents;
	struct cfile_ident now;

	if (!m || cfile_stat_ident(g, &now))
		return false;
	return ident_same(&now, &m->ident);
}

uint32_t reflink_lookup(struct dedup *d, struct cfile *f, uint64_t index)
{
	struct cache *c = d->c;
	struct extmap *m;
	enum page_kind kind;
	uint64_t phys = 0, key;
	uint32_t cand, pos = 0, hit = 0;
	int devid;

	if (d->scope == DEDUP_SCOPE_NONE)
		return 0;
	m = extmap_get(f);
	if (!m || m->unsupported)
		return 0;
	kind = page_phys(m, index, &phys);
	if (kind == PAGE_PLAIN)
		return 0;
	pthread_mutex_lock(&c->map_lock);
	devid = dev_id(d, f->ident.dev);
	if (devid < 0)
		goto out_unlock;
	key = phys_word(devid, phys);
	while ((cand = stree_next(&d->phys, key, &pos))) {
		struct frame *cf = cache_frame(c, cand);

		if (!cf->nmappers || !scope_match(cf->scope, dedup_scope_of(d, f)) ||
		    cf->nmappers >= atomic_load(&d->max_page_sharing) ||
		    (frame_flags(cf) & (F_IO | F_ERROR | F_DIRTY)))
			continue; /* a fill that may still fail: not yet */
		if (!phys_still_true(d, cand)) {
			stree_remove(&d->phys, cand);
			frame_clear(cf, F_PHYS);
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
		persist_shared(d, f, index, cand);
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

	if (!m || m->unsupported || !ident_same(&m->ident, &f->ident) ||
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
 * physical identity on the frame that stays. map_lock held. */
void dedup_move_phys(struct dedup *d, uint32_t fid, uint32_t target)
{
	struct cache *c = d->c;
	struct frame *fr = cache_frame(c, fid);
	struct frame *to = cache_frame(c, target);

	if (!(frame_flags(fr) & F_PHYS) || target == FID_ZERO ||
	    (frame_flags(to) & F_PHYS))
		return;
	stree_remove(&d->phys, fid);
	frame_clear(fr, F_PHYS);
	to->phys = fr->phys;
	if (!stree_insert(&d->phys, target))
		frame_set(to, F_PHYS);
}

