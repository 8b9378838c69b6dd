/*
 * test_store_damage: the LMDB store without FUSE when it cannot be used
 * as it is: damaged and foreign stores, a store of format 1 rebuilt, a
 * read-only or full state directory, a second opener of a store in use.
 */
#include "teststore.h"

#include <lmdb.h>
#include <sys/mount.h>
#include <time.h>

static void write_file(const char *path, const void *buf, size_t len,
		       off_t off)
{
	int fd = open(path, O_WRONLY | O_CREAT, 0600);

	REQUIRE(fd >= 0);
	REQUIRE(pwrite(fd, buf, len, off) == (ssize_t)len);
	close(fd);
}

static void test_damaged_store_is_ebadmsg_and_rebuilds(void)
{
	const char *dir = case_dir("garbage");
	struct store_ident id = ident(31, PG);
	unsigned char junk[65536];
	struct store *s = NULL;
	char path[600];
	uint64_t fid;
	struct stat sb;

	/* Not an LMDB file at all. */
	REQUIRE(mkdir(dir, 0700) == 0);
	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	testfs_fill(junk, 0, sizeof(junk), 7);
	write_file(path, junk, sizeof(junk), 0);
	CHECK_EQ(store_open(dir, 0, false, &s), -EBADMSG);
	CHECK(s == NULL);
	CHECK_EQ(store_open(dir, 0, true, &s), 0);
	REQUIRE(s);
	put_range(s, &id, 0, 1, 31);
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(store_file_match(s, &id, &fid), 0);
	store_close(s);

	/* A real store whose tree pages are overwritten: LMDB would follow
	 * them; the check refuses them. */
	REQUIRE(stat(path, &sb) == 0);
	REQUIRE(sb.st_size > 2 * 4096);
	memset(junk, 0xff, sizeof(junk));
	for (off_t off = 2 * 4096; off < sb.st_size; off += 4096)
		write_file(path, junk, 64, off);
	CHECK_EQ(store_open(dir, 0, false, &s), -EBADMSG);
	CHECK_EQ(store_open_readonly(dir, &s), -EBADMSG);
	CHECK_EQ(store_open(dir, 0, true, &s), 0);
	if (s) {
		CHECK_EQ(store_file_match(s, &id, &fid), -ENOENT);
		store_close(s);
	}

	/* A file where the directory should be. */
	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	CHECK_EQ(store_open(path, 0, false, &s), -ENOTDIR);
}

/* Rewrite one meta record with LMDB directly. */
static void set_meta(const char *dir, const char *key, uint32_t value)
{
	uint32_t be = htobe32(value);
	MDB_val k = { strlen(key), (void *)key }, v = { 4, &be };
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;

	REQUIRE(mdb_env_create(&env) == 0);
	REQUIRE(mdb_env_set_maxdbs(env, 8) == 0);
	REQUIRE(mdb_env_open(env, dir, 0, 0600) == 0);
	REQUIRE(mdb_txn_begin(env, NULL, 0, &txn) == 0);
	REQUIRE(mdb_dbi_open(txn, "meta", 0, &dbi) == 0);
	REQUIRE(mdb_put(txn, dbi, &k, &v, 0) == 0);
	REQUIRE(mdb_txn_commit(txn) == 0);
	mdb_env_close(env);
}

static void test_other_format_is_eproto(void)
{
	const char *dir = case_dir("format");
	struct store_ident id = ident(41, PG);
	struct store *s;
	uint64_t fid;

	s = open_ok(dir, 0);
	put_range(s, &id, 0, 1, 41);
	store_close(s);

	set_meta(dir, "format", 99);
	s = NULL;
	CHECK_EQ(store_open(dir, 0, false, &s), -EPROTO);
	CHECK(s == NULL);
	CHECK_EQ(store_open_readonly(dir, &s), -EPROTO);
	set_meta(dir, "format", STORE_FORMAT);
	set_meta(dir, "page_size", 8192);
	CHECK_EQ(store_open(dir, 0, false, &s), -EPROTO);
	CHECK_EQ(store_open(dir, 0, true, &s), 0);
	if (s) {
		CHECK_EQ(store_file_match(s, &id, &fid), -ENOENT);
		store_close(s);
	}
}

/* A state directory on its own tmpfs, so that it can be made read-only
 * or full. false (test skipped) where we may not mount. */
static bool mount_tmpfs(const char *dir, const char *opts)
{
	mkdir(dir, 0700);
	return mount("tmpfs", dir, "tmpfs", 0, opts) == 0;
}

static void test_readonly_state_dir_pauses_reads_work(void)
{
	const char *dir = case_dir("rofs");
	struct store_ident id = ident(51, 8 * PG), other = ident(52, PG);
	struct store_stats st;
	struct store *s;
	uint64_t fid;
	bool right;
	int ret;

	if (!mount_tmpfs(dir, "size=64m")) {
		printf("skip test_readonly_state_dir (cannot mount: %s)\n",
		       strerror(errno));
		return;
	}
	s = open_ok(dir, 0);
	put_range(s, &id, 0, 8, 51);
	CHECK_EQ(store_sync(s), 0);
	store_close(s);
	REQUIRE(mount("tmpfs", dir, "tmpfs", MS_REMOUNT | MS_RDONLY,
		      "size=64m") == 0);

	s = open_ok(dir, 0);
	store_get_stats(s, &st);
	CHECK(st.paused);
	CHECK_EQ(store_file_match(s, &id, &fid), 0);
	CHECK_EQ(count_fps(s, fid, 0, 8, 51, &right), 8);
	CHECK(right);
	CHECK_EQ(store_put_page(s, &other, 0, dg_12.b, NULL, 0), 0);
	CHECK_EQ(store_sync(s), -EROFS);
	CHECK_EQ(store_file_match(s, &other, &fid), -ENOENT);
	store_close(s);
	CHECK_EQ(umount2(dir, MNT_DETACH), 0);

	/* A disk that fills up while the daemon runs. */
	REQUIRE(mount_tmpfs(dir, "size=256k"));
	s = open_ok(dir, 0);
	put_range(s, &id, 0, 8, 51);
	CHECK_EQ(store_sync(s), 0);
	put_range(s, &other, 0, 60000, 52);
	ret = store_sync(s);
	CHECK(ret == -ENOSPC || ret == -EIO);   /* LMDB: EIO on short write */
	store_get_stats(s, &st);
	CHECK(st.paused);
	CHECK(st.commit_errors > 0);
	CHECK_EQ(store_put_page(s, &other, 0, dg_12.b, NULL, 0), 0);
	CHECK_EQ(store_file_match(s, &id, &fid), 0);
	CHECK_EQ(count_fps(s, fid, 0, 8, 51, &right), 8);
	/* Paused with the change dropped: the file stays masked. */
	CHECK_EQ(store_file_changed(s, id.dev, id.ino, &id, 0, 1), 0);
	CHECK_EQ(count_fps(s, fid, 0, 8, 51, &right), 0);
	store_close(s);
	CHECK_EQ(umount2(dir, MNT_DETACH), 0);
}

static void put_raw(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t klen,
		    const void *v, size_t vlen)
{
	MDB_val key = { klen, (void *)k }, val = { vlen, (void *)v };

	REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
}

static void be64(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}

/* A store as format 1 wrote it: XXH3-only records of 16 bytes, no
 * digest, for file id of npages pages. */
static void make_format1_store_in(const char *dir,
				  const struct store_ident *id,
				  unsigned npages)
{
	uint32_t fmt = htobe32(1), psz = htobe32(PG);
	uint8_t k[16], v[40];
	MDB_dbi meta, files, pages, fps;
	MDB_env *env;
	MDB_txn *txn;

	REQUIRE(mdb_env_create(&env) == 0);
	REQUIRE(mdb_env_set_maxdbs(env, 8) == 0);
	REQUIRE(mdb_env_open(env, dir, 0, 0600) == 0);
	REQUIRE(mdb_txn_begin(env, NULL, 0, &txn) == 0);
	REQUIRE(mdb_dbi_open(txn, "meta", MDB_CREATE, &meta) == 0);
	REQUIRE(mdb_dbi_open(txn, "files", MDB_CREATE, &files) == 0);
	REQUIRE(mdb_dbi_open(txn, "pages", MDB_CREATE, &pages) == 0);
	REQUIRE(mdb_dbi_open(txn, "fps", MDB_CREATE, &fps) == 0);
	put_raw(txn, meta, "format", 6, &fmt, 4);
	put_raw(txn, meta, "page_size", 9, &psz, 4);
	be64(v, 2);
	put_raw(txn, meta, "next_file_id", 12, v, 8);
	be64(k, id->dev);
	be64(k + 8, id->ino);
	be64(v, 1);
	be64(v + 8, id->size);
	be64(v + 16, (uint64_t)id->mtime_ns);
	be64(v + 24, (uint64_t)id->ctime_ns);
	be64(v + 32, (uint64_t)time(NULL));
	put_raw(txn, files, k, 16, v, 40);
	for (unsigned i = 0; i < npages; i++) {
		struct dg fp = dg_of(44, i);

		be64(k, 1);
		be64(k + 8, i);
		memcpy(v, fp.b, 16);
		put_raw(txn, pages, k, 16, v, 16);
		be64(v + 16, 1);
		be64(v + 24, 1);
		be64(v + 32, i);
		put_raw(txn, fps, v, 16, v + 16, 24);
	}
	REQUIRE(mdb_txn_commit(txn) == 0);
	mdb_env_close(env);
}

/* store_open(dir) with what it writes on stderr in log. */
static int open_logged(const char *dir, struct store **s, char *log,
		       size_t len)
{
	char path[600];
	int fd, saved, ret;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/stderr.log", root);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	REQUIRE(fd >= 0);
	fflush(stderr);
	saved = dup(2);
	REQUIRE(saved >= 0 && dup2(fd, 2) == 2);
	ret = store_open(dir, 0, false, s);
	fflush(stderr);
	REQUIRE(dup2(saved, 2) == 2);
	close(saved);
	n = pread(fd, log, len - 1, 0);
	log[n > 0 ? n : 0] = '\0';
	close(fd);
	return ret;
}

static unsigned count_lines(const char *text)
{
	unsigned n = 0;

	for (; *text; text++)
		n += *text == '\n';
	return n;
}

static void test_format1_store_is_rebuilt_with_one_line(void)
{
	const char *dir = case_dir("format1");
	struct store_ident id = ident(43, 4 * PG);
	struct store_stats st;
	struct store *s = NULL;
	char log[4096];
	uint64_t fid;
	bool right;

	REQUIRE(mkdir(dir, 0700) == 0);
	make_format1_store_in(dir, &id, 4);
	/* Offline readers do not rebuild, and do not read it either. */
	CHECK_EQ(store_open_readonly(dir, &s), -EPROTO);

	/* Whether or not rebuild_state was given: it is our own store. */
	CHECK_EQ(open_logged(dir, &s, log, sizeof(log)), 0);
	REQUIRE(s);
	CHECK_EQ(count_lines(log), 1);
	CHECK(strstr(log, dir) != NULL);
	CHECK(strstr(log, "format 1 (no cryptographic digests): rebuilt"));
	if (getenv("TEST_VERBOSE"))
		fprintf(stderr, "format 1: %s", log);
	/* Nothing of it is trusted: no file, no page. */
	CHECK_EQ(store_file_match(s, &id, &fid), -ENOENT);
	store_get_stats(s, &st);
	CHECK_EQ(st.files, 0);
	CHECK_EQ(st.pages, 0);
	CHECK(!st.paused);
	put_range(s, &id, 0, 4, 43);
	CHECK_EQ(store_sync(s), 0);
	store_close(s);

	/* Rebuilt as format 2: opens silently, keeps what was put. */
	s = NULL;
	CHECK_EQ(open_logged(dir, &s, log, sizeof(log)), 0);
	REQUIRE(s);
	CHECK_EQ(count_lines(log), 0);
	CHECK_EQ(store_file_match(s, &id, &fid), 0);
	CHECK_EQ(count_fps(s, fid, 0, 4, 43, &right), 4);
	CHECK(right);
	store_close(s);

	/* On a read-only file system it can be neither rebuilt nor read:
	 * the mount runs without persistence. */
	dir = case_dir("format1-ro");
	if (!mount_tmpfs(dir, "size=16m")) {
		printf("skip format 1 read-only (cannot mount: %s)\n",
		       strerror(errno));
		return;
	}
	make_format1_store_in(dir, &id, 4);
	REQUIRE(mount("tmpfs", dir, "tmpfs", MS_REMOUNT | MS_RDONLY,
		      "size=16m") == 0);
	s = NULL;
	CHECK_EQ(open_logged(dir, &s, log, sizeof(log)), 0);
	REQUIRE(s);
	CHECK_EQ(count_lines(log), 1);
	CHECK(strstr(log, "format 1 (no cryptographic digests)"));
	if (getenv("TEST_VERBOSE"))
		fprintf(stderr, "format 1, read-only: %s", log);
	store_get_stats(s, &st);
	CHECK(st.paused);
	CHECK_EQ(store_file_match(s, &id, &fid), -ENOENT);
	store_close(s);
	CHECK_EQ(umount2(dir, MNT_DETACH), 0);
}

static void test_second_opener_runs_without_persistence(void)
{
	const char *dir = case_dir("busy");
	struct store *s1 = open_ok(dir, 0), *s2;
	struct store_ident id = ident(91, PG);
	struct store_stats st;
	uint64_t fid;

	s2 = open_ok(dir, 0);       /* waits ~2 s for the owner, then gives up */
	store_get_stats(s2, &st);
	CHECK(st.paused);
	CHECK_EQ(store_put_page(s2, &id, 0, dg_12.b, NULL, 0), 0);
	CHECK_EQ(store_file_match(s2, &id, &fid), -ENOENT);
	store_close(s2);
	store_get_stats(s1, &st);
	CHECK(!st.paused);
	store_close(s1);
}

int main(void)
{
	root = testfs_init();
	RUN(test_damaged_store_is_ebadmsg_and_rebuilds);
	RUN(test_other_format_is_eproto);
	RUN(test_format1_store_is_rebuilt_with_one_line);
	RUN(test_readonly_state_dir_pauses_reads_work);
	RUN(test_second_opener_runs_without_persistence);
	return CHECK_DONE();
}
