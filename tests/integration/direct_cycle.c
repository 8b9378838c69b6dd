/*
 * direct_cycle FILE SIZE SECONDS READERS: rewrite FILE with O_DIRECT
 * writes through io_uring (asynchronous in the kernel), two patterns in
 * turn, and after each one read it back through the page cache, while
 * READERS other processes read it through the page cache too, 4 KiB at a
 * time, opening it again and again. Exit 1 with the first page that still
 * holds the previous pattern, 0 after SECONDS, 2 on any other failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void reader(const char *path, size_t size)
{
	char buf[4096];

	for (;;) {
		int fd = open(path, O_RDONLY);

		if (fd < 0)
			_exit(2);
		for (size_t off = 0; off < size; off += sizeof(buf))
			if (pread(fd, buf, sizeof(buf), (off_t)off) < 0)
				_exit(2);
		close(fd);
	}
}

static int cycle(const char *path, size_t size, double seconds);

int main(int argc, char **argv)
{
	pid_t kids[16];
	int nkids, ret;
	size_t size;

	if (argc != 5) {
		fprintf(stderr, "usage: direct_cycle FILE SIZE SECONDS "
				"READERS\n");
		return 2;
	}
	size = strtoul(argv[2], NULL, 0);
	nkids = atoi(argv[4]);
	if (nkids < 0 || nkids > 16)
		return 2;
	for (int i = 0; i < nkids; i++) {
		kids[i] = fork();
		if (kids[i] == 0)
			reader(argv[1], size);
		if (kids[i] < 0)
			return 2;
	}
	ret = cycle(argv[1], size, atof(argv[3]));
	for (int i = 0; i < nkids; i++) {
		kill(kids[i], SIGKILL);
		waitpid(kids[i], NULL, 0);
	}
	return ret;
}

/* One write and read back; 0, 1 if the read predates the write, 2. */
static int one_round(struct io_uring *ring, const char *path,
		     const char *want, char *got, size_t size, long round)
{
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	int fd = open(path, O_RDWR | O_DIRECT), res;

	if (fd < 0 || !(sqe = io_uring_get_sqe(ring))) {
		perror("open");
		return 2;
	}
	io_uring_prep_write(sqe, fd, want, size, 0);
	io_uring_submit(ring);
	res = io_uring_wait_cqe(ring, &cqe);
	if (!res) {
		res = cqe->res;
		io_uring_cqe_seen(ring, cqe);
	}
	close(fd);
	if (res != (int)size) {
		fprintf(stderr, "write: %d\n", res);
		return 2;
	}
	fd = open(path, O_RDONLY);
	res = fd < 0 || pread(fd, got, size, 0) != (ssize_t)size;
	if (fd >= 0)
		close(fd);
	if (res) {
		perror("read");
		return 2;
	}
	for (size_t off = 0; off < size; off += 4096)
		if (memcmp(got + off, want + off, 4096)) {
			printf("round %ld: page at %zu predates the write\n",
			       round, off);
			return 1;
		}
	return 0;
}

static int cycle(const char *path, size_t size, double seconds)
{
	struct io_uring ring;
	double end = now() + seconds;
	char *pat[2] = { NULL, NULL }, *got = malloc(size);
	long rounds = 0;
	int ret = 2;

	if (io_uring_queue_init(2, &ring, 0) < 0) {
		free(got);
		return 2;
	}
	for (int i = 0; i < 2; i++) {
		if (posix_memalign((void **)&pat[i], 4096, size))
			goto out;
		memset(pat[i], i ? 0xaa : 0x55, size);
	}
	if (!got)
		goto out;
	ret = 0;
	while (!ret && now() < end) {
		ret = one_round(&ring, path, pat[rounds & 1], got, size, rounds);
		rounds++;
	}
	if (!ret)
		printf("%ld rounds\n", rounds);
out:
	io_uring_queue_exit(&ring);
	free(pat[0]);
	free(pat[1]);
	free(got);
	return ret;
}
