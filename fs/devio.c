/* devio: the daemon's reads and writes of /dev/fuse; see devio.h. */
#include <errno.h>
#include <linux/fuse.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "devio.h"
#include "log.h"

/* Protocol 7.39 (Linux 6.6); the headers of bookworm are older. */
#ifndef FUSE_DIRECT_IO_ALLOW_MMAP
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ull << 36)
#endif
/* Linux 6.6 to 6.8 offer the flag but map such files with the generic
 * page-cache operations: nothing writes a shared mapping back through
 * the daemon (msync fails, stores are lost). 6.9 (protocol 7.40) maps
 * them as cached files are mapped; ask only from there on. */
#define DIRECT_MMAP_MIN_MINOR 40

/* Set by the read of the INIT request, before its reply is written (the
 * same worker thread handles both). */
static _Atomic bool init_seen;
static _Atomic uint64_t init_unique;
static _Atomic bool kernel_offers;

static ssize_t devio_read(int fd, void *buf, size_t len, void *userdata)
{
	const struct fuse_in_header *h = buf;
	ssize_t n = read(fd, buf, len);

	(void)userdata;
	if (n >= (ssize_t)(sizeof(*h) + offsetof(struct fuse_init_in, flags2)) &&
	    !atomic_load_explicit(&init_seen, memory_order_relaxed) &&
	    h->opcode == FUSE_INIT) {
		const struct fuse_init_in *in = (const void *)(h + 1);
		bool ext = in->flags & FUSE_INIT_EXT;
		uint32_t flags2 = 0;

		if (ext && in->minor >= DIRECT_MMAP_MIN_MINOR &&
		    (size_t)n >= sizeof(*h) + offsetof(struct fuse_init_in,
						      flags2) + 4)
			flags2 = in->flags2;
		atomic_store(&kernel_offers,
			     flags2 & (uint32_t)(FUSE_DIRECT_IO_ALLOW_MMAP >> 32));
		atomic_store(&init_unique, h->unique);
		atomic_store(&init_seen, true);
	}
	return n;
}

/* The INIT reply: ask for shared mmap of direct-I/O files if offered. */
static void devio_patch_init(struct iovec *iov, int count)
{
	const struct fuse_out_header *h = iov[0].iov_base;
	struct fuse_init_out *out;

	if (count < 2 || iov[0].iov_len < sizeof(*h) || h->error ||
	    h->unique != atomic_load(&init_unique) ||
	    iov[1].iov_len < offsetof(struct fuse_init_out, flags2) + 4)
		return;
	out = iov[1].iov_base;
	if (!atomic_exchange(&kernel_offers, false) ||
	    !(out->flags & FUSE_INIT_EXT))
		return;
	out->flags2 |= (uint32_t)(FUSE_DIRECT_IO_ALLOW_MMAP >> 32);
	log_debug("init: shared mmap of direct-I/O files asked for");
}

static ssize_t devio_writev(int fd, struct iovec *iov, int count,
			    void *userdata)
{
	(void)userdata;
	if (atomic_load_explicit(&kernel_offers, memory_order_relaxed))
		devio_patch_init(iov, count);
	return writev(fd, iov, count);
}

int devio_attach(struct fuse_session *se)
{
	static const struct fuse_custom_io io = {
		.read = devio_read,
		.writev = devio_writev,
	};

	return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}
