/*
 * ctl_call: talk to a samepagefs daemon without ever hanging.
 *
 * The daemon answers through virtual extended attributes. A daemon that is
 * stopped or wedged leaves getxattr(2) blocked in the kernel, so every call
 * runs in a forked child that sends its answer back over a pipe; the parent
 * waits at most the caller's timeout, then SIGKILLs the child (a FUSE
 * request waits killably) and reports -ETIMEDOUT.
 *
 * Owns: the child process of one call, for the duration of that call.
 * Nothing survives a call except, in the worst case, a child that a
 * SIGKILL could not end at once (it is stuck on a lock the kernel will
 * release later); it is left to be reaped by init.
 *
 * Locking: none; the tool is single-threaded. ctl_call() may be interrupted
 * by a signal the caller handles: when ctl_call_interrupted() says so (the
 * caller registers its flag with ctl_call_set_interrupt_flag()), the child
 * is killed and the call returns -EINTR.
 *
 * Errors: 0 or -errno. -ETIMEDOUT means the daemon did not answer in time;
 * any errno the child's system calls produced is passed through unchanged
 * (ENODATA, ENOTSUP, EPERM, EINVAL, ENOENT, ...). Output buffers are
 * malloc()ed, NUL-terminated for convenience, and the caller frees them.
 */
#ifndef SAMEPAGE_CTL_CALL_H
#define SAMEPAGE_CTL_CALL_H

#include <signal.h>
#include <stddef.h>

/* What a child produces: a growable buffer it appends to. */
struct ctl_buf {
	char  *data;
	size_t len;
	size_t cap;
};

/*
 * Runs in the child. Returns 0 or a positive errno; whatever it put in out
 * reaches the parent. It must not touch stdio buffers shared with the
 * parent (write only through out).
 */
typedef int (*ctl_call_fn)(void *arg, struct ctl_buf *out);

/* Run fn(arg) in a child, wait at most timeout_ms (< 0: forever). On
 * success *data and *len (if data is not NULL) hold what the child produced. */
int ctl_call(ctl_call_fn fn, void *arg, int timeout_ms, char **data,
	     size_t *len);

/* getxattr with a size probe first and a retry on ERANGE, in a child. */
int ctl_getxattr(const char *path, const char *name, int timeout_ms,
		 char **value, size_t *len);
/* setxattr of a string value, in a child. */
int ctl_setxattr(const char *path, const char *name, const char *value,
		 int timeout_ms);

/* The child side of ctl_getxattr(), for ctl_call_fn bodies that do more
 * than one step: reads the whole value into out. 0 or a positive errno. */
int ctl_read_xattr(const char *path, const char *name, struct ctl_buf *out);

/* The flag a SIGINT handler sets; a pending call gives up when it is set. */
void ctl_call_set_interrupt_flag(volatile sig_atomic_t *flag);

/* Append to a child's buffer (usable from ctl_call_fn). 0 or ENOMEM. */
int ctl_buf_append(struct ctl_buf *b, const void *p, size_t n);

#endif
