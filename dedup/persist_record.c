/*
 * persist_record: queueing the records of pages shared by content for the
 * store's writer thread. The first mapper of a frame (the lowest device,
 * inode and page) is recorded with the digest, every other one as a page
 * of the same content as that one. See persist_i.h for what is recorded
 * and why, and the locking.
 */
#include "persist_i.h"

#include <stdlib.h>

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
		persist_store_ident(&g->ident, id);
		return true;
	}
	if (pthread_rwlock_tryrdlock(&g->inval_lock))
		return false;
	if (pthread_rwlock_tryrdlock(&g->pidx_lock)) {
		pthread_rwlock_unlock(&g->inval_lock);
		return false;
	}
	persist_store_ident(&g->ident, id);
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
bool persist_record_mappers(struct dedup *d, uint32_t fid)
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

void persist_shared(struct dedup *d, struct cfile *f, uint64_t index,
		    uint32_t target)
{
	struct frame *fr = cache_frame(d->c, target);
	struct store_ident id, ref;
	uint32_t fl;

	if (!d->store)
		return;
	persist_store_ident(&f->ident, &id);
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
	persist_want_digest(d, target);
}
