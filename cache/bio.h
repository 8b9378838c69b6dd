/*
 * bio: backing-file I/O.
 *
 * Each thread that does backing I/O has its own io_uring (made on first
 * use, freed at thread exit), so submission needs no lock: requests are
 * prepared, submitted together and reaped in one call, which batches the
 * neighbouring misses of a read and the dirty runs of a writeback. Where
 * io_uring is not available, the same requests run as preadv/pwritev.
 *
 * Short transfers: a read that stops early has reached end of file (the
 * caller zero-fills the rest); a write that stops early is resubmitted for
 * the remainder. -EINTR/-EAGAIN are retried.
 *
 * Failpoints (builds with -Dfailpoints=true): bio_failpoint_set() makes
 * reads or writes fail with a chosen errno, once or persistently, for
 * fault-injection tests.
 *
 * Errors: each request's res is bytes transferred or -errno.
 */
#ifndef SAMEPAGE_BIO_H
#define SAMEPAGE_BIO_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct bio_req {
	int fd;
	bool write;
	uint64_t off;
	struct iovec *iov;
	unsigned niov;
	ssize_t res;            /* out */
};

/* Run n requests; returns 0 (look at each res) or -errno if the ring
 * itself failed. */
int bio_run(struct bio_req *reqs, unsigned n);

/* key: "fail_read" or "fail_write"; value: "ERRNO" (persistent),
 * "ERRNO:once", or "0" (off). -ENOTSUP in builds without failpoints. */
int bio_failpoint_set(const char *key, const char *value);
/* Threads that could not set up an io_uring and use preadv/pwritev (the
 * first one logs why). */
uint64_t bio_ring_fallbacks(void);

#endif
