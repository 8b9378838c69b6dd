/*
 * store_open: opening and closing the LMDB store: the state directory and
 * its lock, the check of data.mdb, the environment and its databases,
 * the meta records, the rebuild of older formats and the writer thread's
 * start and stop. See store.h for the contract, store_i.h for the locking.
 *
 * One daemon owns a state directory at a time: it holds an exclusive
 * flock() on the directory while the store is open. That is what lets
 * store_open() check data.mdb before LMDB maps it (nobody is writing it)
 * and remove it when asked to rebuild (nobody is using it).
 */
#include "store_i.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *const store_db_names[SDB_COUNT] = {
	[SDB_META] = "meta",
	[SDB_FILES] = "files",
	[SDB_RECIPES] = "recipes",
	[SDB_RUNS] = "runs",
	[SDB_CHUNKS] = "chunks",
};

#define STORE_MAX_READERS 512
/* How long store_open waits for another opener to let go (50 ms steps):
 * 10 s, since umount(8) returns before the daemon it ends has written
 * back and let go (4 s for 3000 files written just before, measured), and
 * `umount; mount` of the same directory is common in scripts. */
#define STORE_LOCK_TRIES 200

/* What messages call the store's directory: given as /proc/self/fd/N
 * (opened before the mount over it, fs/main.c), the path it names. */
static char *store_dir_name(const char *dir)
{
	char buf[PATH_MAX];
	ssize_t n;

	if (strncmp(dir, "/proc/self/fd/", 14))
		return strdup(dir);
	n = readlink(dir, buf, sizeof(buf) - 1);
	if (n <= 0)
		return strdup(dir);
	buf[n] = '\0';
	return strdup(buf);
}

static int store_alloc(const char *dir, uint64_t quota, bool readonly,
		       struct store **out)
{
	pthread_rwlockattr_t rwa;
	pthread_condattr_t ca;
	struct store *s;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dir = strdup(dir);
	s->name = store_dir_name(dir);
	if (!s->dir || !s->name) {
		free(s->dir);
		free(s->name);
		free(s);
		return -ENOMEM;
	}
	s->dir_fd = -1;
	s->readonly = readonly;
	if (!quota)
		quota = STORE_DEFAULT_QUOTA;
	if (quota < STORE_QUOTA_MIN)
		quota = STORE_QUOTA_MIN;
	s->quota = quota & ~(uint64_t)(STORE_PAGE_SIZE - 1);
	s->psize = STORE_PAGE_SIZE;
	/* Prefer the resizer: a steady stream of readers must not starve
	 * the writer thread waiting to grow the map. */
	pthread_rwlockattr_init(&rwa);
	pthread_rwlockattr_setkind_np(&rwa,
		PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&s->map_lock, &rwa);
	pthread_rwlockattr_destroy(&rwa);
	pthread_mutex_init(&s->q_lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->q_wake, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&s->q_done, NULL);
	*out = s;
	return 0;
}

static void store_close_env(struct store *s)
{
	if (s->env)
		mdb_env_close(s->env);
	s->env = NULL;
	s->have_dbs = false;
}

static void store_free(struct store *s)
{
	store_close_env(s);
	if (s->dir_fd >= 0)
		close(s->dir_fd);       /* releases the flock */
	pthread_rwlock_destroy(&s->map_lock);
	pthread_mutex_destroy(&s->q_lock);
	pthread_cond_destroy(&s->q_wake);
	pthread_cond_destroy(&s->q_done);
	free(s->q.ops);
	u64map_fini(&s->masks);
	free(s->dir);
	free(s->name);
	free(s);
}

/* mkdir -p, each missing component mode 0700. */
static int store_mkdir_p(const char *dir)
{
	struct stat st;
	char *path, *p;
	int ret = 0;

	if (!*dir)
		return -ENOENT;
	path = strdup(dir);
	if (!path)
		return -ENOMEM;
	for (p = strchr(path + 1, '/'); p && !ret; p = strchr(p + 1, '/')) {
		*p = '\0';
		if (mkdir(path, 0700) && errno != EEXIST)
			ret = -errno;
		*p = '/';
	}
	if (!ret && mkdir(path, 0700) && errno != EEXIST)
		ret = -errno;
	free(path);
	/* A component we could not create matters only if the directory
	 * itself is not there (e.g. it exists on a read-only mount). */
	if (!stat(dir, &st))
		return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	return ret ? ret : -errno;
}

static int store_lock_dir(struct store *s, bool exclusive, bool wait)
{
	int op = (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB;

	s->dir_fd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dir_fd < 0)
		return -errno;
	for (int i = 0; i < STORE_LOCK_TRIES; i++) {
		if (!flock(s->dir_fd, op))
			return 0;
		if (errno != EWOULDBLOCK)
			return -errno;
		if (!wait)
			break;
		usleep(50 * 1000);
	}
	return -EBUSY;
}

static int store_path(const struct store *s, const char *name, char *buf,
		      size_t len)
{
	if ((size_t)snprintf(buf, len, "%s/%s", s->dir, name) >= len)
		return -ENAMETOOLONG;
	return 0;
}

static int store_remove_files(struct store *s)
{
	static const char *const names[] = { "data.mdb", "lock.mdb" };
	char path[PATH_MAX];
	int ret;

	for (size_t i = 0; i < 2; i++) {
		ret = store_path(s, names[i], path, sizeof(path));
		if (ret)
			return ret;
		if (unlink(path) && errno != ENOENT)
			return -errno;
	}
	return 0;
}

/* The meta records: check them, or write them into a new store. */
static int store_check_meta(struct stxn *t, bool create)
{
	uint8_t v4[4], v8[8];
	bool found;

	found = stxn_get(t, SDB_META, STORE_META_FORMAT,
			 STORE_KEYLEN(STORE_META_FORMAT), v4, sizeof(v4));
	if (t->rc)
		return -EBADMSG;
	if (!found) {
		if (!create || stxn_entries(t, SDB_META) ||
		    stxn_entries(t, SDB_FILES) ||
		    stxn_entries(t, SDB_RECIPES) ||
		    stxn_entries(t, SDB_RUNS) || stxn_entries(t, SDB_CHUNKS))
			return -EBADMSG;
		store_be32(v4, STORE_FORMAT);
		stxn_put(t, SDB_META, STORE_META_FORMAT,
			 STORE_KEYLEN(STORE_META_FORMAT), v4, sizeof(v4));
		store_be32(v4, STORE_PAGE_SIZE);
		stxn_put(t, SDB_META, STORE_META_PAGE_SIZE,
			 STORE_KEYLEN(STORE_META_PAGE_SIZE), v4, sizeof(v4));
		store_be64(v8, 1);
		stxn_put(t, SDB_META, STORE_META_NEXT_FID,
			 STORE_KEYLEN(STORE_META_NEXT_FID), v8, sizeof(v8));
		return 0;
	}
	t->s->found_format = store_get32(v4);
	if (store_get32(v4) != STORE_FORMAT)
		return -EPROTO;
	found = stxn_get(t, SDB_META, STORE_META_PAGE_SIZE,
			 STORE_KEYLEN(STORE_META_PAGE_SIZE), v4, sizeof(v4));
	if (!found || t->rc)
		return -EBADMSG;
	if (store_get32(v4) != STORE_PAGE_SIZE)
		return -EPROTO;
	return 0;
}

/* Open (creating if writable) the databases and check meta. meta
 * first: a store of another format may not have the others. */
static int store_attach(struct store *s)
{
	struct stxn t;
	MDB_stat st;
	int rc = 0, ret;

	stxn_begin(s, &t, !s->readonly);
	if (t.rc)
		return store_errno(t.rc);
	rc = mdb_dbi_open(t.txn, store_db_names[SDB_META],
			  s->readonly ? 0 : MDB_CREATE, &s->dbi[SDB_META]);
	if (rc == MDB_NOTFOUND && s->readonly &&
	    !mdb_stat(t.txn, 1, &st) && !st.ms_entries) {
		/* A store created but never written: nothing to read. */
		stxn_abort(&t);
		return 0;
	}
	if (!rc) {
		uint8_t v4[4];
		MDB_val k = { STORE_KEYLEN(STORE_META_FORMAT),
			      (void *)STORE_META_FORMAT }, v;

		if (!mdb_get(t.txn, s->dbi[SDB_META], &k, &v) &&
		    v.mv_size == sizeof(v4)) {
			memcpy(v4, v.mv_data, sizeof(v4));
			s->found_format = store_get32(v4);
			if (s->found_format != STORE_FORMAT) {
				stxn_abort(&t);
				return -EPROTO;
			}
		}
	}
	for (int i = SDB_META + 1; i < SDB_COUNT && !rc; i++)
		rc = mdb_dbi_open(t.txn, store_db_names[i],
				  s->readonly ? 0 : MDB_CREATE, &s->dbi[i]);
	if (rc) {
		stxn_abort(&t);
		return rc == MDB_INCOMPATIBLE || rc == MDB_NOTFOUND ?
			-EBADMSG : store_errno(rc);
	}
	s->have_dbs = true;
	ret = store_check_meta(&t, !s->readonly);
	if (ret) {
		stxn_abort(&t);
		s->have_dbs = false;
		return ret;
	}
	/* Commit (read-only too): that keeps the dbi handles open. */
	ret = stxn_commit(&t);
	if (ret)
		s->have_dbs = false;
	return ret;
}

static int store_env_open(struct store *s, unsigned flags)
{
	struct stat st;
	char path[PATH_MAX];
	uint64_t map;
	int rc;

	rc = mdb_env_create(&s->env);
	if (rc) {
		s->env = NULL;
		return store_errno(rc);
	}
	rc = mdb_env_set_maxreaders(s->env, STORE_MAX_READERS);
	if (!rc)
		rc = mdb_env_set_maxdbs(s->env, SDB_COUNT);
	if (!rc && !(flags & MDB_RDONLY)) {
		/* Start small, but never below what the file holds. */
		map = STORE_MAP_INITIAL;
		if (!store_path(s, "data.mdb", path, sizeof(path)) &&
		    !stat(path, &st) && (uint64_t)st.st_size > map)
			map = ((uint64_t)st.st_size + (1u << 20) - 1) &
			      ~(uint64_t)((1u << 20) - 1);
		if (map > s->quota)
			map = s->quota;
		rc = mdb_env_set_mapsize(s->env, map);
	}
	if (!rc)
		rc = mdb_env_open(s->env, s->dir, flags, 0600);
	if (rc)
		store_close_env(s);
	return store_errno(rc);
}

/*
 * Check data.mdb (unless a live daemon owns it, check false), open the
 * environment and attach the databases.
 */
static int store_open_env(struct store *s, bool check)
{
	/* No readahead into the map: the store's look-ups and updates are
	 * random, and what a fault reads around them would only swell the
	 * page cache. The kernel manages the map's clean pages. */
	unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
	char path[PATH_MAX];
	MDB_stat st;
	int ret;

	ret = store_path(s, "data.mdb", path, sizeof(path));
	if (ret)
		return ret;
	if (check) {
		ret = store_check_file(path);
		if (ret)
			return ret;
	}
	if (s->readonly) {
		if (access(path, F_OK))
			return -errno;
		flags |= MDB_RDONLY;
	} else {
		/* Commits are batched, so syncing each is affordable; the
		 * meta page may lag one commit behind a system crash. */
		flags |= MDB_NOMETASYNC;
	}
	ret = store_env_open(s, flags);
	if (ret == -EACCES && s->readonly)
		/* Cannot even open lock.mdb: read without the reader table,
		 * as LMDB itself does on a read-only file system. */
		ret = store_env_open(s, flags | MDB_NOLOCK);
	if (ret)
		return ret;
	if (!mdb_env_stat(s->env, &st))
		s->psize = st.ms_psize;
	ret = store_attach(s);
	if (ret)
		store_close_env(s);
	return ret;
}

static int store_start_writer(struct store *s)
{
	int rc = pthread_create(&s->writer, NULL, store_writer_main, s);

	if (rc)
		return -rc;
	s->writer_started = true;
	return 0;
}

static bool store_format_old(uint32_t format)
{
	return format == STORE_FORMAT_NO_DIGEST ||
	       format == STORE_FORMAT_PER_PAGE;
}

static const char *store_format_why(uint32_t format)
{
	return format == STORE_FORMAT_NO_DIGEST ?
		"no cryptographic digests" : "a record per page";
}

/*
 * A store of format 1 holds XXH3 fingerprints only, which a page may not
 * be mapped on unread (store.h); one of format 2 a record per page,
 * which format 3 replaces by runs and recipes. Neither is converted: a
 * digest needs the page, and a converted store would be trusted on the
 * old code's records. Rebuilt, with one line, whatever rebuild says: it
 * is our own older store, not a foreign or damaged one.
 */
static int store_rebuild_old(struct store *s)
{
	uint32_t format = s->found_format;
	int ret = store_remove_files(s);

	s->found_format = 0;
	if (!ret)
		ret = store_open_env(s, true);
	if (!ret)
		fprintf(stderr, "samepagefs: store %s has format %u (%s): "
			"rebuilt\n", s->name, format, store_format_why(format));
	return ret;
}

int store_open(const char *dir, uint64_t quota_bytes, bool rebuild,
	       struct store **out)
{
	struct store *s;
	int ret;

	*out = NULL;
	ret = store_alloc(dir, quota_bytes, false, &s);
	if (ret)
		return ret;
	ret = store_mkdir_p(dir);
	if (ret == -EROFS) {
		/* Nowhere to keep a store: serve without one. */
		store_pause(s, ret, "cannot create the directory");
		goto out_ok;
	}
	if (ret)
		goto out_free;
	ret = store_lock_dir(s, true, true);
	if (ret == -EBUSY) {
		store_pause(s, ret, "in use by another process");
		goto out_ok;
	}
	if (ret)
		goto out_free;

	ret = store_open_env(s, true);
	if (ret == -EPROTO && store_format_old(s->found_format))
		ret = store_rebuild_old(s);
	if ((ret == -EBADMSG || ret == -EPROTO) && rebuild) {
		ret = store_remove_files(s);
		if (!ret)
			ret = store_open_env(s, true);
	}
	if (ret == -EROFS || ret == -EACCES) {
		/* The directory is there but we cannot write in it: read
		 * what it holds, persist nothing. */
		int err = ret;

		s->readonly = true;
		s->found_format = 0;
		ret = store_open_env(s, false);
		if (ret == -EPROTO && store_format_old(s->found_format)) {
			/* Not to be read, and not ours to rebuild: none. */
			char what[96];

			snprintf(what, sizeof(what), "format %u (%s), cannot "
				 "rebuild it", s->found_format,
				 store_format_why(s->found_format));
			store_pause(s, err, what);
			goto out_ok;
		}
		if (ret && ret != -ENOENT)
			goto out_free;
		store_pause(s, err, "open");
		goto out_ok;
	}
	if (ret)
		goto out_free;
	ret = store_start_writer(s);
	if (ret)
		goto out_free;
out_ok:
	*out = s;
	return 0;
out_free:
	store_free(s);
	return ret;
}

int store_open_readonly(const char *dir, struct store **out)
{
	struct store *s;
	bool owned;
	int ret;

	*out = NULL;
	ret = store_alloc(dir, 0, true, &s);
	if (ret)
		return ret;
	/* A daemon that owns the store checked it when it opened it and
	 * keeps it consistent; otherwise check it like a daemon would. */
	ret = store_lock_dir(s, false, false);
	if (ret && ret != -EBUSY)
		goto out_free;
	owned = ret == -EBUSY;
	ret = store_open_env(s, !owned);
	if (!owned)
		flock(s->dir_fd, LOCK_UN);
	if (ret)
		goto out_free;
	*out = s;
	return 0;
out_free:
	store_free(s);
	return ret;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	if (s->writer_started) {
		pthread_mutex_lock(&s->q_lock);
		s->stop = true;
		pthread_cond_signal(&s->q_wake);
		pthread_mutex_unlock(&s->q_lock);
		pthread_join(s->writer, NULL);
	}
	if (s->env && !s->readonly)
		mdb_env_sync(s->env, 1);        /* the lagging meta page */
	store_free(s);
}
