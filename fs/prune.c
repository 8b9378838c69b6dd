/*
 * prune: a background pass, once per mount, that drops the store's
 * records of files deleted while the file system was not mounted (or
 * behind the mount). It lists the regular files of the backing tree (one
 * walk, not crossing into other file systems, following no symlink,
 * leaving access times alone) and asks the store to forget every file
 * not among them; a walk that could not see everything prunes nothing.
 * It runs at idle priority and gives way to unmount.
 */
#include "prune.h"

#include "dedup.h"
#include "log.h"
#include "u64map.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* Set by prune_stop, read by the walk. */
static _Atomic bool walk_stop;
/* Deeper than this the walk gives up (and nothing is pruned). */
#define WALK_MAX_DEPTH 256

static uint64_t seen_key(uint64_t dev, uint64_t ino)
{
	uint64_t k = (dev * 0x9E3779B97F4A7C15ull) ^ ino;

	return k ? k : 1;
}

/* The walk is the daemon's own business: it leaves the directories'
 * access times as they were (O_NOATIME, where the daemon may). */
static int walk_open_dir(int at, const char *name)
{
	int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
	int fd = openat(at, name, flags | O_NOATIME);

	if (fd < 0 && errno == EPERM)
		fd = openat(at, name, flags);
	return fd < 0 ? -errno : fd;
}

/*
 * Put the regular files under the directory open at fd (closed here)
 * into seen, staying on device dev and following no symlink. 0, or
 * -errno: then the walk missed something and nothing may be pruned.
 */
static int walk_dir(int fd, dev_t dev, struct u64map *seen, unsigned depth)
{
	DIR *dp = fdopendir(fd);
	struct dirent *e;
	int ret = 0;

	if (!dp) {
		ret = -errno;
		close(fd);
		return ret;
	}
	while (!ret && (errno = 0, e = readdir(dp))) {
		struct stat st;
		int sub;

		if (atomic_load(&walk_stop)) {
			ret = -EINTR;
			break;
		}
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
		    (e->d_type != DT_REG && e->d_type != DT_DIR &&
		     e->d_type != DT_UNKNOWN))
			continue;
		if (fstatat(dirfd(dp), e->d_name, &st, AT_SYMLINK_NOFOLLOW)) {
			if (errno != ENOENT) /* else gone meanwhile */
				ret = -errno;
			continue;
		}
		if (st.st_dev != dev)
			continue;
		if (S_ISREG(st.st_mode)) {
			if (!u64map_put(seen, seen_key(st.st_dev, st.st_ino), 0,
					NULL))
				ret = -ENOMEM;
		} else if (S_ISDIR(st.st_mode)) {
			if (depth >= WALK_MAX_DEPTH) {
				ret = -ELOOP;
				break;
			}
			sub = walk_open_dir(dirfd(dp), e->d_name);
			if (sub >= 0)
				ret = walk_dir(sub, dev, seen, depth + 1);
			else if (sub != -ENOENT)
				ret = sub;
		}
	}
	if (!ret && !e && errno)
		ret = -errno;
	closedir(dp);
	return ret;
}

/* A key may collide (dev * K ^ ino): then a record is kept, never lost
 * wrongly. */
static bool exists(void *arg, uint64_t dev, uint64_t ino)
{
	return u64map_find(arg, seen_key(dev, ino)) != NULL;
}

struct prune_arg {
	struct dedup *d;
	int root_fd; /* O_PATH or not, owned */
};

static void *prune_main(void *p)
{
	struct prune_arg *a = p;
	struct u64map s;
	struct stat st;
	int fd, ret;

	pthread_setname_np(pthread_self(), "sp-prune");
	setpriority(PRIO_PROCESS, 0, 19);
	u64map_init(&s);
	fd = walk_open_dir(a->root_fd, ".");
	if (fd >= 0 && fstat(fd, &st)) {
		ret = -errno;
		close(fd);
	} else if (fd >= 0) {
		ret = walk_dir(fd, st.st_dev, &s, 0);
	} else {
		ret = fd;
	}
	if (atomic_load(&walk_stop))
		ret = 0; /* unmounting: a partial walk must not prune */
	else if (ret == 0)
		ret = dedup_prune_missing(a->d, exists, &s);
	if (ret)
		log_warn("pruning the store of deleted files: %s", strerror(-ret));
	u64map_fini(&s);
	close(a->root_fd);
	free(a);
	return NULL;
}

int prune_start(struct dedup *d, int backing_fd, pthread_t *out)
{
	struct prune_arg *a = calloc(1, sizeof(*a));
	int ret;

	if (!a)
		return -ENOMEM;
	a->d = d;
	a->root_fd = fcntl(backing_fd, F_DUPFD_CLOEXEC, 0);
	if (a->root_fd < 0) {
		ret = -errno;
		free(a);
		return ret;
	}
	ret = pthread_create(out, NULL, prune_main, a);
	if (ret) {
		close(a->root_fd);
		free(a);
		return -ret;
	}
	return 0;
}

void prune_stop(pthread_t t)
{
	atomic_store(&walk_stop, true);
	pthread_join(t, NULL);
}
