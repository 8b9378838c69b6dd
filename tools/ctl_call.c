/*
 * ctl_call: daemon calls in a child process, with a timeout. See ctl_call.h.
 */
#include "ctl_call.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* How long we give a SIGKILLed child to go away before leaving it. */
#define CTL_REAP_MS 1000

static volatile sig_atomic_t *interrupt_flag;

void ctl_call_set_interrupt_flag(volatile sig_atomic_t *flag)
{
	interrupt_flag = flag;
}

static bool interrupted(void)
{
	return interrupt_flag && *interrupt_flag;
}

int ctl_buf_append(struct ctl_buf *b, const void *p, size_t n)
{
	/* One spare byte so the result can always be NUL-terminated. */
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		char *nd;

		while (cap < b->len + n + 1)
			cap *= 2;
		nd = realloc(b->data, cap);
		if (!nd)
			return ENOMEM;
		b->data = nd;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void null_stdio(void)
{
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (dup2(fd, i) < 0)
			break;
	close(fd);
}

/* The child: run fn, send its output, exit with its errno as status. */
static _Noreturn void child_main(int wfd, ctl_call_fn fn, void *arg)
{
	struct ctl_buf out = { 0 };
	int err;

	/* Ctrl-C must end the child too, not run the parent's handler. */
	signal(SIGINT, SIG_DFL);
	signal(SIGPIPE, SIG_DFL);
	/* A child the kernel holds past its kill (a request the daemon had
	 * taken) must not hold our caller's output open: it answers through
	 * wfd only. */
	null_stdio();
	err = fn(arg, &out);
	if (!err && out.len)
		err = write_all(wfd, out.data, out.len);
	if (err <= 0 || err > 255)
		err = err ? EIO : 0;
	_exit(err);
}

struct ctl_child {
	pid_t          pid;     /* 0 once reaped */
	int            fd;      /* read end of the result pipe */
	struct ctl_buf out;
};

static int child_spawn(ctl_call_fn fn, void *arg, struct ctl_child *c)
{
	int pfd[2];

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	c->pid = fork();
	if (c->pid < 0) {
		int ret = -errno;

		c->pid = 0;
		close(pfd[0]);
		close(pfd[1]);
		return ret;
	}
	if (c->pid == 0) {
		close(pfd[0]);
		child_main(pfd[1], fn, arg);
	}
	close(pfd[1]);
	c->fd = pfd[0];
	return 0;
}

/*
 * Collect the child's output until EOF and reap it. Returns 1 when it has
 * finished (*result holds its 0 or -errno), 0 if it still runs after
 * timeout_ms (< 0: no limit), -EINTR if the caller's flag was raised.
 */
static int child_poll(struct ctl_child *c, int timeout_ms, int *result)
{
	int64_t deadline = now_ms() + timeout_ms;
	char tmp[16384];
	int status;

	/* Read the child's output until EOF, then reap it. */
	for (;;) {
		struct pollfd p = { .fd = c->fd, .events = POLLIN };
		int wait_ms = -1;
		ssize_t n;
		int r;

		if (interrupted())
			return -EINTR;
		if (timeout_ms >= 0) {
			int64_t left = deadline - now_ms();

			if (left < 0)
				return 0;
			wait_ms = left > INT32_MAX ? INT32_MAX : (int)left;
		}
		r = poll(&p, 1, wait_ms);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0) {
			if (timeout_ms >= 0 && now_ms() >= deadline)
				return 0;
			continue;
		}
		n = read(c->fd, tmp, sizeof(tmp));
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		r = ctl_buf_append(&c->out, tmp, (size_t)n);
		if (r)
			return -r;
	}
	/* EOF: the child has exited or is about to. */
	while (waitpid(c->pid, &status, 0) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	c->pid = 0;
	if (WIFEXITED(status))
		*result = -WEXITSTATUS(status);
	else
		*result = -EIO;
	return 1;
}

/* Kill the child if it still runs; free what the call holds. */
static void child_stop(struct ctl_child *c)
{
	if (c->pid > 0) {
		/* Kill a child that did not answer; reap it if it goes
		 * quickly, or leave it to init if the kernel holds it. */
		int64_t deadline = now_ms() + CTL_REAP_MS;

		kill(c->pid, SIGKILL);
		while (waitpid(c->pid, NULL, WNOHANG) == 0 &&
		       now_ms() < deadline)
			usleep(10000);
		c->pid = 0;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	free(c->out.data);
	memset(&c->out, 0, sizeof(c->out));
}

int ctl_call(ctl_call_fn fn, void *arg, int timeout_ms, char **data,
	     size_t *len)
{
	struct ctl_child c;
	int result = 0;
	int ret;

	ret = child_spawn(fn, arg, &c);
	if (ret)
		return ret;
	ret = child_poll(&c, timeout_ms, &result);
	if (ret == 0)
		ret = -ETIMEDOUT;
	else if (ret == 1)
		ret = result;
	/* Ctrl-C on a terminal reaches the child too: whatever it died of,
	 * the caller wants to know it was interrupted. */
	if (ret && interrupted())
		ret = -EINTR;
	if (ret || !data)
		goto out_stop;
	if (!c.out.data) {
		ret = ctl_buf_append(&c.out, "", 0);
		if (ret) {
			ret = -ret;
			goto out_stop;
		}
	}
	/* Hand the buffer over instead of freeing it. */
	*data = c.out.data;
	if (len)
		*len = c.out.len;
	memset(&c.out, 0, sizeof(c.out));
out_stop:
	child_stop(&c);
	return ret;
}

struct xattr_req {
	const char *path;
	const char *name;
	const char *value;
};

int ctl_read_xattr(const char *path, const char *name, struct ctl_buf *out)
{
	int tries;

	/* The value may grow between the size probe and the read (counters
	 * gain digits, files gain sharers): retry with the new size. */
	for (tries = 0; tries < 16; tries++) {
		ssize_t n = getxattr(path, name, NULL, 0);
		size_t want;

		if (n < 0)
			return errno;
		want = (size_t)n + (size_t)n / 4 + 256;
		if (want > out->cap) {
			char *nd = realloc(out->data, want);

			if (!nd)
				return ENOMEM;
			out->data = nd;
			out->cap = want;
		}
		n = getxattr(path, name, out->data, out->cap - 1);
		if (n >= 0) {
			out->len = (size_t)n;
			out->data[n] = '\0';
			return 0;
		}
		if (errno != ERANGE)
			return errno;
	}
	return ERANGE;
}

static int getxattr_child(void *arg, struct ctl_buf *out)
{
	const struct xattr_req *rq = arg;

	return ctl_read_xattr(rq->path, rq->name, out);
}

static int setxattr_child(void *arg, struct ctl_buf *out)
{
	const struct xattr_req *rq = arg;

	if (setxattr(rq->path, rq->name, rq->value, strlen(rq->value), 0) < 0)
		return errno;
	return 0;
}

int ctl_getxattr(const char *path, const char *name, int timeout_ms,
		 char **value, size_t *len)
{
	struct xattr_req rq = { .path = path, .name = name };

	return ctl_call(getxattr_child, &rq, timeout_ms, value, len);
}

int ctl_setxattr(const char *path, const char *name, const char *value,
		 int timeout_ms)
{
	struct xattr_req rq = { .path = path, .name = name, .value = value };

	return ctl_call(setxattr_child, &rq, timeout_ms, NULL, NULL);
}
