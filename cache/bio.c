/* bio: backing I/O through a per-thread io_uring; see bio.h. */
#include "bio.h"

#include "config.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RING_ENTRIES 64

struct bio_ring {
	struct io_uring ring;
	bool ok;       /* false: io_uring unavailable, use syscalls */
	bool tried;
};

static pthread_key_t ring_key;
static _Atomic uint64_t ring_fallbacks; /* threads without a ring */
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;

static void ring_free(void *p)
{
	struct bio_ring *r = p;

	if (r->ok)
		io_uring_queue_exit(&r->ring);
	free(r);
}

uint64_t bio_ring_fallbacks(void)
{
	return atomic_load(&ring_fallbacks);
}

static void ring_key_init(void)
{
	pthread_key_create(&ring_key, ring_free);
}

static struct bio_ring *thread_ring(void)
{
	struct bio_ring *r;

	pthread_once(&ring_once, ring_key_init);
	r = pthread_getspecific(ring_key);
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return NULL;
		pthread_setspecific(ring_key, r);
	}
	if (!r->tried) {
		int ret = io_uring_queue_init(RING_ENTRIES, &r->ring, 0);

		r->tried = true;
		r->ok = ret == 0;
		if (!r->ok && !atomic_fetch_add(&ring_fallbacks, 1))
			fprintf(stderr, "samepagefs: no io_uring for backing "
				"I/O (%s): threads fall back to preadv/pwritev\n",
				strerror(-ret));
	}
	return r;
}

#if SAMEPAGE_FAILPOINTS
static _Atomic int fail_read_err, fail_write_err;
static _Atomic bool fail_read_once, fail_write_once;

static int failpoint(bool write)
{
	_Atomic int *err = write ? &fail_write_err : &fail_read_err;
	_Atomic bool *once = write ? &fail_write_once : &fail_read_once;
	int e = atomic_load(err);

	if (e && atomic_load(once))
		e = atomic_exchange(err, 0);
	return e;
}

int bio_failpoint_set(const char *key, const char *value)
{
	char *end;
	long e = strtol(value, &end, 10);
	bool once = false;

	if (end == value || e < 0 || e > 4095)
		return -EINVAL;
	if (*end == ':' && !strcmp(end + 1, "once"))
		once = true;
	else if (*end)
		return -EINVAL;
	if (!strcmp(key, "fail_read")) {
		atomic_store(&fail_read_once, once);
		atomic_store(&fail_read_err, (int)e);
	} else if (!strcmp(key, "fail_write")) {
		atomic_store(&fail_write_once, once);
		atomic_store(&fail_write_err, (int)e);
	} else {
		return -EINVAL;
	}
	return 0;
}
#else
static int failpoint(bool write)
{
	(void)write;
	return 0;
}

int bio_failpoint_set(const char *key, const char *value)
{
	(void)key;
	(void)value;
	return -ENOTSUP;
}
#endif

static size_t iov_len(const struct iovec *iov, unsigned n)
{
	size_t len = 0;

	for (unsigned i = 0; i < n; i++)
		len += iov[i].iov_len;
	return len;
}

/* Synchronous path, also used to finish short writes. */
static ssize_t run_sync(int fd, bool write, const struct iovec *iov,
			unsigned niov, uint64_t off)
{
	ssize_t r;

	do {
		r = write ? pwritev(fd, iov, (int)niov, (off_t)off)
			  : preadv(fd, iov, (int)niov, (off_t)off);
	} while (r < 0 && (errno == EINTR || errno == EAGAIN));
	return r < 0 ? -errno : r;
}

/* Complete a write that stopped early: write the rest synchronously. */
static ssize_t finish_write(struct bio_req *q, size_t done)
{
	size_t total = iov_len(q->iov, q->niov);

	while (done < total) {
		size_t skip = done;
		unsigned i = 0;
		struct iovec rest[q->niov];
		unsigned n = 0;
		ssize_t r;

		while (i < q->niov && skip >= q->iov[i].iov_len)
			skip -= q->iov[i++].iov_len;
		for (; i < q->niov; i++) {
			rest[n].iov_base = (char *)q->iov[i].iov_base + skip;
			rest[n].iov_len = q->iov[i].iov_len - skip;
			skip = 0;
			n++;
		}
		r = run_sync(q->fd, true, rest, n, q->off + done);
		if (r < 0)
			return r;
		if (r == 0)
			return -EIO;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

static void prep(struct io_uring_sqe *sqe, struct bio_req *q)
{
	if (q->write)
		io_uring_prep_writev(sqe, q->fd, q->iov, q->niov, q->off);
	else
		io_uring_prep_readv(sqe, q->fd, q->iov, q->niov, q->off);
	io_uring_sqe_set_data(sqe, q);
}

/* Submit up to RING_ENTRIES requests and reap them all. */
static int run_batch(struct bio_ring *r, struct bio_req *reqs, unsigned n)
{
	unsigned pending = 0;

	for (unsigned i = 0; i < n; i++) {
		int e = failpoint(reqs[i].write);

		if (e) {
			reqs[i].res = -e;
			continue;
		}
		prep(io_uring_get_sqe(&r->ring), &reqs[i]);
		pending++;
	}
	while (pending) {
		struct io_uring_cqe *cqe;
		struct bio_req *q;
		int ret = io_uring_submit_and_wait(&r->ring, 1);

		if (ret < 0 && ret != -EINTR)
			return ret;
		while (io_uring_peek_cqe(&r->ring, &cqe) == 0) {
			q = io_uring_cqe_get_data(cqe);
			q->res = cqe->res;
			io_uring_cqe_seen(&r->ring, cqe);
			pending--;
			if (q->res == -EAGAIN || q->res == -EINTR) {
				prep(io_uring_get_sqe(&r->ring), q);
				pending++;
			}
		}
	}
	return 0;
}

int bio_run(struct bio_req *reqs, unsigned n)
{
	struct bio_ring *r = thread_ring();

	for (unsigned i = 0; i < n;) {
		unsigned batch = n - i < RING_ENTRIES ? n - i : RING_ENTRIES;

		if (r && r->ok) {
			int ret = run_batch(r, reqs + i, batch);

			if (ret)
				return ret;
		} else {
			for (unsigned j = i; j < i + batch; j++) {
				int e = failpoint(reqs[j].write);

				reqs[j].res = e ? -e
						: run_sync(reqs[j].fd,
							   reqs[j].write,
							   reqs[j].iov,
							   reqs[j].niov,
							   reqs[j].off);
			}
		}
		for (unsigned j = i; j < i + batch; j++) {
			struct bio_req *q = &reqs[j];

			if (q->write && q->res >= 0 &&
			    (size_t)q->res < iov_len(q->iov, q->niov))
				q->res = finish_write(q, (size_t)q->res);
		}
		i += batch;
	}
	return 0;
}
