/* inode: the table of backing inodes known to the kernel; see inode.h. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "inode.h"
#include "log.h"

#define ITAB_MIN_BUCKETS 1024u

static size_t itab_hash(dev_t dev, ino_t ino)
{
	uint64_t x = (uint64_t)ino ^ ((uint64_t)dev << 32 | (uint64_t)dev >> 32);

	/* splitmix64 finaliser: inode numbers are dense, buckets are not. */
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return (size_t)x;
}

static struct inode **itab_slot(struct itab *t, dev_t dev, ino_t ino)
{
	struct inode **p = &t->buckets[itab_hash(dev, ino) & (t->nbuckets - 1)];

	while (*p && ((*p)->dev != dev || (*p)->ino != ino))
		p = &(*p)->hnext;
	return p;
}

/* Doubling keeps chains short; a failed allocation only costs speed. */
static void itab_grow(struct itab *t)
{
	size_t n = t->nbuckets * 2;
	struct inode **nb = calloc(n, sizeof(*nb));

	if (!nb)
		return;
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct inode *in = t->buckets[i], *next;

		for (; in; in = next) {
			size_t b = itab_hash(in->dev, in->ino) & (n - 1);

			next = in->hnext;
			in->hnext = nb[b];
			nb[b] = in;
		}
	}
	free(t->buckets);
	t->buckets = nb;
	t->nbuckets = n;
}

static struct inode *inode_new(int fd, const struct stat *st)
{
	struct inode *in = calloc(1, sizeof(*in));

	if (!in)
		return NULL;
	if (pthread_mutex_init(&in->lock, NULL)) {
		free(in);
		return NULL;
	}
	in->fd = fd;
	in->dev = st->st_dev;
	in->ino = st->st_ino;
	in->type = st->st_mode & S_IFMT;
	return in;
}

/* The inode is out of the table and its cfiles have no owner any more. */
static void inode_free(struct inode *in)
{
	if (in->cf)
		cfile_put(in->cf);
	close(in->fd);
	pthread_mutex_destroy(&in->lock);
	free(in);
}

static void itab_idle_del_locked(struct itab *t, struct inode *in)
{
	if (!in->idle)
		return;
	if (in->idle_prev)
		in->idle_prev->idle_next = in->idle_next;
	else
		t->idle_first = in->idle_next;
	if (in->idle_next)
		in->idle_next->idle_prev = in->idle_prev;
	else
		t->idle_last = in->idle_prev;
	in->idle_prev = in->idle_next = NULL;
	in->idle = false;
	t->nidle--;
}

static void itab_idle_add_locked(struct itab *t, struct inode *in)
{
	if (in->idle)
		itab_idle_del_locked(t, in);
	in->idle_prev = t->idle_last;
	in->idle_next = NULL;
	if (t->idle_last)
		t->idle_last->idle_next = in;
	else
		t->idle_first = in;
	t->idle_last = in;
	in->idle = true;
	t->nidle++;
}

/* Called with t->lock held: unhook a dead inode so that nobody can find it,
 * neither through the table nor through its cfile's owner. */
static bool itab_unhook_if_dead(struct itab *t, struct inode *in)
{
	struct inode **p;

	if (in->nlookup || in->pins || in == t->root)
		return false;
	p = itab_slot(t, in->dev, in->ino);
	assert(*p == in);
	*p = in->hnext;
	t->count--;
	itab_idle_del_locked(t, in);
	if (in->cf)
		cfile_set_owner(in->cf, NULL);
	return true;
}

int itab_init(struct itab *t, int root_fd, size_t idle_max)
{
	struct stat st;
	int ret;

	memset(t, 0, sizeof(*t));
	if (fstatat(root_fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
		return -errno;
	ret = -pthread_mutex_init(&t->lock, NULL);
	if (ret)
		return ret;
	t->idle_max = idle_max;
	t->nbuckets = ITAB_MIN_BUCKETS;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	if (!t->buckets) {
		ret = -ENOMEM;
		goto out_lock;
	}
	t->root = inode_new(root_fd, &st);
	if (!t->root) {
		ret = -ENOMEM;
		goto out_buckets;
	}
	/* The kernel never forgets the root; count it once for good. */
	t->root->nlookup = 1;
	*itab_slot(t, st.st_dev, st.st_ino) = t->root;
	t->count = 1;
	return 0;

out_buckets:
	free(t->buckets);
out_lock:
	pthread_mutex_destroy(&t->lock);
	return ret;
}

void itab_destroy(struct itab *t)
{
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct inode *in = t->buckets[i], *next;

		for (; in; in = next) {
			next = in->hnext;
			if (in->cf)
				cfile_set_owner(in->cf, NULL);
			inode_free(in);
		}
	}
	free(t->buckets);
	pthread_mutex_destroy(&t->lock);
	memset(t, 0, sizeof(*t));
}

int itab_lookup_fd(struct itab *t, int fd, const struct stat *st,
		   struct inode **out)
{
	struct inode **p, *in;

	pthread_mutex_lock(&t->lock);
	p = itab_slot(t, st->st_dev, st->st_ino);
	in = *p;
	if (in) {
		in->nlookup++;
		pthread_mutex_unlock(&t->lock);
		close(fd);
		*out = in;
		return 0;
	}
	in = inode_new(fd, st);
	if (!in) {
		pthread_mutex_unlock(&t->lock);
		return -ENOMEM;
	}
	in->nlookup = 1;
	*p = in;
	if (++t->count > t->nbuckets)
		itab_grow(t);
	pthread_mutex_unlock(&t->lock);
	*out = in;
	return 0;
}

void itab_ref(struct itab *t, struct inode *in)
{
	pthread_mutex_lock(&t->lock);
	in->nlookup++;
	pthread_mutex_unlock(&t->lock);
}

void itab_forget(struct itab *t, struct inode *in, uint64_t nlookup)
{
	bool dead;

	pthread_mutex_lock(&t->lock);
	if (in == t->root) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	if (in->nlookup < nlookup) {
		log_warn("forget of %" PRIu64 " lookups on an inode with %"
			 PRIu64, nlookup, in->nlookup);
		nlookup = in->nlookup;
	}
	in->nlookup -= nlookup;
	dead = itab_unhook_if_dead(t, in);
	pthread_mutex_unlock(&t->lock);
	/* Outside the table lock: dropping the cfile may write pages back. */
	if (dead)
		inode_free(in);
}

struct inode *itab_find_pin(struct itab *t, dev_t dev, ino_t ino)
{
	struct inode *in;

	pthread_mutex_lock(&t->lock);
	in = *itab_slot(t, dev, ino);
	if (in)
		in->pins++;
	pthread_mutex_unlock(&t->lock);
	return in;
}

void itab_pin_locked(struct inode *in)
{
	in->pins++;
}

void itab_unpin(struct itab *t, struct inode *in)
{
	bool dead;

	pthread_mutex_lock(&t->lock);
	assert(in->pins > 0);
	in->pins--;
	dead = itab_unhook_if_dead(t, in);
	pthread_mutex_unlock(&t->lock);
	if (dead)
		inode_free(in);
}

void itab_lock(struct itab *t)
{
	pthread_mutex_lock(&t->lock);
}

void itab_unlock(struct itab *t)
{
	pthread_mutex_unlock(&t->lock);
}

static int inode_cfile_locked(struct cache *c, struct inode *in,
			      bool want_write, struct cfile **out)
{
	struct cfile *cf;
	bool writable = true;
	int ret;

	if (in->cf && (in->cf_writable || !want_write)) {
		*out = in->cf;
		return 0;
	}
	if (in->cf) {
		/* The file became writable since it was opened read-only. */
		ret = cfile_make_writable(in->cf);
		if (ret)
			return ret;
		in->cf_writable = true;
		*out = in->cf;
		return 0;
	}
	/*
	 * Ask for a writable cfile even for a reader, so that a later
	 * writer finds it ready; settle for a read-only one only when the
	 * backing file refuses (permissions, a running executable, a
	 * read-only mount).
	 */
	ret = cfile_open(c, in->fd, true, &cf);
	if ((ret == -EACCES || ret == -EPERM || ret == -ETXTBSY) &&
	    !want_write) {
		writable = false;
		ret = cfile_open(c, in->fd, false, &cf);
	}
	if (ret)
		return ret;
	cfile_set_owner(cf, in);
	__atomic_store_n(&in->cf, cf, __ATOMIC_RELEASE);
	in->cf_writable = writable;
	*out = cf;
	return 0;
}

int inode_cfile(struct cache *c, struct inode *in, bool want_write,
		struct cfile **out)
{
	int ret;

	pthread_mutex_lock(&in->lock);
	ret = inode_cfile_locked(c, in, want_write, out);
	if (ret == 0)
		cfile_get(*out);
	pthread_mutex_unlock(&in->lock);
	return ret;
}

struct cfile *inode_cfile_ref(struct inode *in)
{
	struct cfile *cf;

	pthread_mutex_lock(&in->lock);
	cf = in->cf;
	if (cf)
		cfile_get(cf);
	pthread_mutex_unlock(&in->lock);
	return cf;
}

int inode_open(struct itab *t, struct cache *c, struct inode *in,
	       bool want_write, struct cfile **out)
{
	int ret;

	pthread_mutex_lock(&in->lock);
	ret = inode_cfile_locked(c, in, want_write, out);
	if (ret == 0) {
		in->nopen++;
		if (want_write)
			in->nwriters++;
	}
	pthread_mutex_unlock(&in->lock);
	if (ret == 0) {
		/* In use again: not a candidate for dropping. (Should the
		 * trimmer have taken it off already, it sees nopen > 0.) */
		pthread_mutex_lock(&t->lock);
		itab_idle_del_locked(t, in);
		pthread_mutex_unlock(&t->lock);
	}
	return ret;
}

/* Drop the cfiles of an inode nobody has open; the inode is pinned. */
static void inode_drop_cfiles(struct itab *t, struct inode *in)
{
	struct cfile *cf;

	pthread_mutex_lock(&in->lock);
	if (in->nopen) {
		pthread_mutex_unlock(&in->lock);
		return;
	}
	cf = in->cf;
	__atomic_store_n(&in->cf, NULL, __ATOMIC_RELEASE);
	in->cf_writable = false;
	pthread_mutex_unlock(&in->lock);

	pthread_mutex_lock(&t->lock);
	if (cf)
		cfile_set_owner(cf, NULL);
	pthread_mutex_unlock(&t->lock);
	/* Writes the pages back and leaves them to the cache, which keeps
	 * them for the file; others may still hold references. */
	if (cf)
		cfile_put(cf);
}

/* The least recently closed files give their cfiles back. */
static void itab_trim_idle(struct itab *t)
{
	struct inode *victims[8];
	unsigned n = 0;

	pthread_mutex_lock(&t->lock);
	while (t->nidle > t->idle_max && n < 8) {
		struct inode *v = t->idle_first;

		itab_idle_del_locked(t, v);
		v->pins++;
		victims[n++] = v;
	}
	pthread_mutex_unlock(&t->lock);
	for (unsigned i = 0; i < n; i++) {
		inode_drop_cfiles(t, victims[i]);
		itab_unpin(t, victims[i]);
	}
}

int inode_release(struct itab *t, struct inode *in, bool was_writer)
{
	struct cfile *flush = NULL;
	bool idle;
	int ret = 0;

	/* The last writer's data reaches the backing file before the handle
	 * stops counting, so that the cfile cannot be dropped meanwhile. */
	pthread_mutex_lock(&in->lock);
	if (was_writer && in->nwriters == 1 && in->cf) {
		flush = in->cf;
		cfile_get(flush);
	}
	pthread_mutex_unlock(&in->lock);
	if (flush) {
		ret = cache_flush_file(flush);
		cfile_put(flush);
	}

	pthread_mutex_lock(&in->lock);
	assert(in->nopen > 0);
	in->nopen--;
	if (was_writer) {
		assert(in->nwriters > 0);
		in->nwriters--;
	}
	idle = in->nopen == 0 && in->cf;
	if (in->nopen == 0 && in->mode_set) {
		in->mode_set = false;
		atomic_fetch_sub(in->kernel_mode ? &t->open_kernel
						 : &t->open_shared, 1);
	}
	pthread_mutex_unlock(&in->lock);

	if (idle) {
		pthread_mutex_lock(&t->lock);
		itab_idle_add_locked(t, in);
		pthread_mutex_unlock(&t->lock);
		itab_trim_idle(t);
	}
	return ret;
}

static bool ts_before(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec ||
	       (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

void inode_fix_attr(struct inode *in, struct stat *st)
{
	struct cfile *cf;
	int64_t m, floor;
	struct timespec ts;

	if (!S_ISREG(st->st_mode))
		return;
	if (st->st_mode & (S_ISUID | S_ISGID))
		__atomic_store_n(&in->maybe_suid, true, __ATOMIC_RELAXED);
	cf = inode_cfile_ref(in);
	if (!cf)
		return;
	st->st_size = (off_t)cfile_size(cf);
	/*
	 * A write through the mount that has not reached the backing file
	 * yet counts (unless utimens came after it). Once written back, the
	 * backing file's own times are the truth: its clock is coarser than
	 * ours, and the two must agree.
	 */
	m = cfile_has_dirty(cf) ? cfile_mtime_ns(cf) : 0;
	cfile_put(cf);
	floor = __atomic_load_n(&in->mtime_floor_ns, __ATOMIC_RELAXED);
	if (m <= 0 || m <= floor)
		return;
	ts.tv_sec = m / 1000000000;
	ts.tv_nsec = m % 1000000000;
	if (ts_before(&st->st_mtim, &ts))
		st->st_mtim = ts;
	if (ts_before(&st->st_ctim, &ts))
		st->st_ctim = ts;
}

int inode_stat(struct inode *in, struct stat *st)
{
	if (fstatat(in->fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
		return -errno;
	inode_fix_attr(in, st);
	return 0;
}

int inode_kill_suid(struct inode *in, bool (*in_group)(void *arg, gid_t gid),
		    void *arg, bool *killed)
{
	char path[32];
	struct stat st;
	mode_t kill = 0;

	*killed = false;
	if (!__atomic_load_n(&in->maybe_suid, __ATOMIC_RELAXED))
		return 0;
	if (fstatat(in->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (st.st_mode & S_ISUID)
		kill |= S_ISUID;
	if ((st.st_mode & S_ISGID) &&
	    ((st.st_mode & S_IXGRP) || !in_group(arg, st.st_gid)))
		kill |= S_ISGID;
	if (kill) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", in->fd);
		if (fchmodat(AT_FDCWD, path, st.st_mode & 07777 & ~kill, 0))
			return -errno;
		*killed = true;
	}
	if (!(st.st_mode & ~kill & (S_ISUID | S_ISGID)))
		__atomic_store_n(&in->maybe_suid, false, __ATOMIC_RELAXED);
	return 0;
}
