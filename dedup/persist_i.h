/*
 * persist_i: the LMDB store (store.h) seen from the cache, shared by
 * persist.c (open and close, a file's stored records, mapping a page
 * unread on them, telling the store of writes and unlinks),
 * persist_dtab.c (the digests of frames, dtab, the want ring and the
 * digest pass) and persist_record.c (queueing the records of shared
 * pages).
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
#ifndef SAMEPAGE_PERSIST_I_H
#define SAMEPAGE_PERSIST_I_H

#include "dedup_i.h"

#include <string.h>

/* dtab's key for a digest or a tag: its first 8 bytes. */
static inline uint64_t persist_tag_key(const uint8_t *tag)
{
	uint64_t k;

	memcpy(&k, tag, sizeof(k));
	return k;
}

static inline void persist_store_ident(const struct cfile_ident *c,
				       struct store_ident *s)
{
	s->dev = c->dev;
	s->ino = c->ino;
	s->size = c->size;
	s->mtime_ns = c->mtime_ns;
	s->ctime_ns = c->ctime_ns;
}

/* ---- persist_dtab.c ---- */

/* Map the digests, the want ring and its bits (one entry per frame the
 * cache may have, touched only where used) and the digest pass's buffer;
 * 0 or -ENOMEM. persist_dtab_fini() undoes it, a partial one too. */
int persist_dtab_init(struct dedup *d);
void persist_dtab_fini(struct dedup *d);
/* A STABLE frame with a digest: into dtab. map_lock held. */
void persist_dtab_add(struct dedup *d, uint32_t fid);
/* A resident stable frame whose digest starts with tag (any scope), or
 * 0. map_lock held. */
uint32_t persist_dtab_tagged(struct dedup *d, const uint8_t *tag);
/* Ask the scanner for a digest of stable frame fid; its mappers are
 * recorded then. map_lock held. */
void persist_want_digest(struct dedup *d, uint32_t fid);

/* ---- persist_record.c ---- */

/* Queue the records of every mapper of a shared stable frame with a
 * digest, then F_PERSISTED; false if a mapper was busy (to be tried
 * again, nothing queued). map_lock held. */
bool persist_record_mappers(struct dedup *d, uint32_t fid);

#endif
