/*
 * direct: the data path of files in kernel mode (cache.h,
 * cfile_set_kernel_mode): the kernel keeps their pages, so a read takes
 * no frame and a write keeps its pages only until they are written back
 * (writeback.c drops them then).
 *
 * A read looks its pages up as any read does (pidx_lock shared) and pins
 * those the cache holds; the others are read from the backing file into
 * the read context's buffer. A page missing from the index is on disk:
 * dirty pages stay in the index until written back, and inval_lock, held
 * shared over the read, keeps a truncate or punch from coming between
 * the look-up and the disk.
 *
 * Pages past MAP_INDEX_MAX (4 PiB), which no frame can map, take the same
 * path in any mode: reads as above, writes straight to the backing file
 * (cache_write_unmapped), so that a file may reach the backing file
 * system's own limit.
 */
#include "cache_i.h"
#include "bio.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define PG CACHE_PAGE_SIZE
/* Pages per backing request, as for fills: several in flight at once. */
#define DIRECT_REQ_PAGES 32u
#define DIRECT_MAX_PAGES (CACHE_MAX_IO_PAGES + 1)

/* Copy the pinned pages into the buffer and let them go. */
static int copy_pinned(struct cache *c, uint32_t *fids, unsigned n, char *buf)
{
	int ret = 0;

	for (unsigned i = 0; i < n; i++) {
		struct frame *fr;

		if (!fids[i])
			continue;
		fr = cache_frame(c, fids[i]);
		frame_wait_io(fr);
		if (frame_flags(fr) & F_ERROR)
			ret = -EIO;
		else
			memcpy(buf + (size_t)i * PG,
			       cache_frame_data(c, fids[i]), PG);
		cache_frame_unpin(c, fids[i]);
		fids[i] = 0;
	}
	return ret;
}

/* The last page an off_t reaches: a read of all of it would end past
 * INT64_MAX (EINVAL), so it is read a byte short, buffered (O_DIRECT takes
 * whole pages); that byte is past the end of any file. Bytes read or
 * -errno; the rest of the page is zeroed. */
static ssize_t read_last_page(struct cfile *f, uint64_t at, char *dst)
{
	int fd = cfile_reopen(f, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return fd;
	n = pread(fd, dst, PG - 1, (off_t)at);
	if (n < 0)
		n = -errno;
	close(fd);
	if (n >= 0)
		memset(dst + n, 0, PG - (size_t)n);
	return n;
}

/* Read the pages not pinned from the backing file; past bsize they are
 * zero without I/O. Returns 0 or -errno; *eof is where the disk ended
 * short of bsize (UINT64_MAX if it did not), *disk how many pages it
 * read (a short last one too). */
static int read_missing(struct cfile *f, uint64_t first, unsigned n,
			const uint32_t *fids, uint64_t bsize, char *buf,
			uint64_t *eof, unsigned *disk)
{
	struct cache *c = f->cache;
	struct bio_req req[DIRECT_MAX_PAGES];
	struct iovec iov[DIRECT_MAX_PAGES];
	unsigned nreq = 0;
	int ret;

	*eof = UINT64_MAX;
	*disk = 0;
	for (unsigned i = 0; i < n; i++) {
		uint64_t at = (first + i) << CACHE_PAGE_SHIFT;

		if (fids[i])
			continue;
		if (at >= bsize) {
			memset(buf + (size_t)i * PG, 0, PG);
			continue;
		}
		if (at > (uint64_t)INT64_MAX - PG) {
			ssize_t got = read_last_page(f, at, buf + (size_t)i * PG);

			if (got < 0)
				return (int)got;
			(*disk)++;
			if (at + (uint64_t)got < bsize)
				*eof = at + (uint64_t)got;
			continue;
		}
		iov[i] = (struct iovec){ buf + (size_t)i * PG, PG };
		if (nreq && req[nreq - 1].off + req[nreq - 1].niov * PG == at &&
		    req[nreq - 1].niov < DIRECT_REQ_PAGES)
			req[nreq - 1].niov++;
		else
			req[nreq++] = (struct bio_req){ .fd = f->fd, .off = at,
							.iov = &iov[i],
							.niov = 1 };
	}
	if (!nreq)
		return 0;
	ret = bio_run(req, nreq);
	atomic_fetch_add(&c->st.backing_reads, nreq);
	for (unsigned r = 0; r < nreq && !ret; r++) {
		size_t want = req[r].niov * PG;
		ssize_t res = req[r].res;

		if (res < 0) {
			ret = (int)res;
			break;
		}
		atomic_fetch_add(&c->st.backing_read_bytes, (uint64_t)res);
		*disk += (unsigned)(((size_t)res + PG - 1) / PG);
		if ((size_t)res < want) {
			memset((char *)req[r].iov[0].iov_base + res, 0,
			       want - (size_t)res);
			if (req[r].off + (uint64_t)res < *eof)
				*eof = req[r].off + (uint64_t)res;
		}
	}
	return ret;
}

/* Ask dedup whether other files hold what was read from disk, until the
 * file is known to share. */
static void probe_sharing(struct cfile *f, uint64_t first, unsigned n,
			  const uint32_t *fids, uint64_t bsize,
			  const char *buf)
{
	struct cache *c = f->cache;

	if (!c->share.probe || atomic_load(&f->sharing_found) ||
	    !atomic_load(&f->kernel_mode))
		return;
	for (unsigned i = 0; i < n; i++) {
		if (fids[i] || ((first + i + 1) << CACHE_PAGE_SHIFT) > bsize)
			continue;
		if (c->share.probe(c->share.ctx, f, buf + (size_t)i * PG)) {
			atomic_fetch_add(&f->sharing_found, 1);
			return;
		}
	}
}

int cache_read_direct(struct cfile *f, uint64_t off, size_t len,
		      struct cache_read_ctx *rc)
{
	struct cache *c = f->cache;
	uint32_t fids[DIRECT_MAX_PAGES] = { 0 };
	uint64_t size, bsize, first, eof;
	unsigned n, hits = 0, disk;
	int ret, err;

	ret = cache_read_bounce(rc);
	if (ret)
		return ret;
	pthread_rwlock_rdlock(&f->inval_lock);
	pthread_rwlock_rdlock(&f->pidx_lock);
	size = f->size;
	bsize = f->backing_size;
	if (off >= size || !len) {
		pthread_rwlock_unlock(&f->pidx_lock);
		pthread_rwlock_unlock(&f->inval_lock);
		return 0;
	}
	if (len > size - off)
		len = size - off;
	first = off >> CACHE_PAGE_SHIFT;
	n = (unsigned)(((off + len - 1) >> CACHE_PAGE_SHIFT) - first + 1);
	for (unsigned i = 0; i < n; i++) {
		fids[i] = pidx_lookup(&f->pidx, first + i);
		if (fids[i]) {
			frame_pin(cache_frame(c, fids[i]));
			hits++;
		}
	}
	pthread_rwlock_unlock(&f->pidx_lock);

	ret = read_missing(f, first, n, fids, bsize, rc->bounce, &eof, &disk);
	if (!ret)
		probe_sharing(f, first, n, fids, bsize, rc->bounce);
	err = copy_pinned(c, fids, n, rc->bounce);
	if (!ret)
		ret = err;
	if (!ret && eof != UINT64_MAX) {
		/* The disk ended early: truncated behind the mount. */
		pthread_rwlock_wrlock(&f->pidx_lock);
		cache_shrunk_behind_locked(f, eof, bsize);
		size = f->size;
		pthread_rwlock_unlock(&f->pidx_lock);
	}
	pthread_rwlock_unlock(&f->inval_lock);
	if (ret)
		return ret;
	atomic_fetch_add(&c->st.hits, hits);
	atomic_fetch_add(&c->st.direct_read_pages, disk);
	if (off >= size)
		return 0;
	if (len > size - off)
		len = size - off;
	rc->iov[0].iov_base = (char *)rc->bounce + (off & (PG - 1));
	rc->iov[0].iov_len = len;
	rc->niov = 1;
	rc->bytes = len;
	return 0;
}

void cache_drop_private(struct cfile *f, uint64_t first, uint64_t end)
{
	struct cache *c = f->cache;
	uint64_t idx[64];
	uint32_t fid[64];
	unsigned n;

	pthread_rwlock_wrlock(&f->pidx_lock);
	while (first < end &&
	       (n = pidx_gang(&f->pidx, first, end, false, idx, fid, 64))) {
		pthread_mutex_lock(&c->map_lock);
		for (unsigned i = 0; i < n; i++)
			cache_drop_page_locked(c, f, idx[i], fid[i]);
		pthread_mutex_unlock(&c->map_lock);
		first = idx[n - 1] + 1;
		if (!first)
			break;
	}
	pthread_rwlock_unlock(&f->pidx_lock);
}

ssize_t cache_write_unmapped(struct cfile *f, const void *buf, size_t len,
			     uint64_t off)
{
	struct cache *c = f->cache;
	size_t done = 0;
	int fd, ret = 0;

	/* Buffered: O_DIRECT takes whole aligned pages only. */
	fd = cfile_reopen(f, O_WRONLY);
	if (fd < 0)
		return fd;
	while (done < len) {
		ssize_t n = pwrite(fd, (const char *)buf + done, len - done,
				   (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = n < 0 ? -errno : -EIO;
			break;
		}
		done += (size_t)n;
	}
	close(fd);
	if (done) {
		uint64_t end = off + done;

		pthread_rwlock_wrlock(&f->pidx_lock);
		if (end > f->size)
			f->size = end;
		if (end > f->backing_size)
			f->backing_size = end;
		cfile_stat_ident(f, &f->ident);
		if (c->share.file_changed)
			c->share.file_changed(c->share.ctx, f,
					      off >> CACHE_PAGE_SHIFT,
					      ((end - 1) >> CACHE_PAGE_SHIFT) -
						      (off >> CACHE_PAGE_SHIFT) + 1);
		pthread_rwlock_unlock(&f->pidx_lock);
	}
	return done ? (ssize_t)done : ret;
}
