/*
 * prune: a background pass, once per mount, that drops the store's
 * records of files deleted while the file system was not mounted (or
 * behind the mount). It lists the regular files of the backing tree (one
 * walk, not crossing into other file systems, following no symlink) and
 * asks the store to forget every file not among them. It runs at idle
 * priority and gives way to unmount.
 */
#include "prune.h"

#include "dedup.h"
#include "log.h"
#include "u64map.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* The files seen, by seen_key; values unused. */
static struct u64map *walk_seen; /* nftw has no user argument */
static _Atomic bool walk_stop; /* set by prune_stop, read by the walk */

static uint64_t seen_key(uint64_t dev, uint64_t ino)
{
	uint64_t k = (dev * 0x9E3779B97F4A7C15ull) ^ ino;

	return k ? k : 1;
}

static int walk_one(const char *path, const struct stat *st, int type,
		    struct FTW *ftw)
{
	(void)path, (void)ftw;
	if (atomic_load(&walk_stop))
		return FTW_STOP;
	if (type == FTW_F && S_ISREG(st->st_mode))
		return u64map_put(walk_seen, seen_key(st->st_dev, st->st_ino),
				  0, NULL) ? FTW_CONTINUE : FTW_STOP;
	return FTW_CONTINUE;
}

/* A key may collide (dev * K ^ ino): then a record is kept, never lost
 * wrongly. */
static bool exists(void *arg, uint64_t dev, uint64_t ino)
{
	return u64map_find(arg, seen_key(dev, ino)) != NULL;
}

struct prune_arg {
	struct dedup *d;
	char *root;
};

static void *prune_main(void *p)
{
	struct prune_arg *a = p;
	struct u64map s;
	int ret;

	pthread_setname_np(pthread_self(), "sp-prune");
	setpriority(PRIO_PROCESS, 0, 19);
	u64map_init(&s);
	walk_seen = &s;
	ret = nftw(a->root, walk_one, 16,
		   FTW_PHYS | FTW_MOUNT | FTW_ACTIONRETVAL);
	if (atomic_load(&walk_stop))
		ret = 0; /* unmounting: a partial walk must not prune */
	else if (ret == 0)
		ret = dedup_prune_missing(a->d, exists, &s);
	else
		ret = -ENOMEM;
	if (ret)
		log_warn("pruning the store of deleted files: %s", strerror(-ret));
	u64map_fini(&s);
	free(a->root);
	free(a);
	return NULL;
}

int prune_start(struct dedup *d, const char *backing, pthread_t *out)
{
	struct prune_arg *a = calloc(1, sizeof(*a));
	int ret;

	if (!a)
		return -ENOMEM;
	a->d = d;
	a->root = strdup(backing);
	if (!a->root) {
		free(a);
		return -ENOMEM;
	}
	ret = pthread_create(out, NULL, prune_main, a);
	if (ret) {
		free(a->root);
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
