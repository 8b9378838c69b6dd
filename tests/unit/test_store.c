/*
 * test_store: the LMDB store without FUSE. Round trips across reopen,
 * identity checks, refcounts, quota pruning, damaged and foreign stores,
 * a read-only state directory, a crash of the writer, batching.
 */
#include "check.h"
#include "testfs.h"

#include "store.h"

#include <lmdb.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>

#define PG 4096u

static const char *root;

/* A fresh directory for one test case. */
static const char *case_dir(const char *name)
{
	static char path[512];

	snprintf(path, sizeof(path), "%s/%s", root, name);
	return path;
}

static struct store_ident ident(uint64_t ino, uint64_t size)
{
	return (struct store_ident){ .dev = 42, .ino = ino, .size = size,
				     .mtime_ns = 1000000000ll * (int64_t)ino,
				     .ctime_ns = 2000000000ll * (int64_t)ino };
}

/* A made-up SHA-256 of page i of content seed. */
struct dg {
	uint8_t b[STORE_SHA256_LEN];
};

static struct dg dg_of(unsigned seed, uint64_t i)
{
	uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed * 0xBF58476D1CE4E5B9ull;
	struct dg d;

	x ^= x >> 29;
	for (unsigned k = 0; k < sizeof(d.b); k++)
		d.b[k] = (uint8_t)(x >> (k % 8 * 8)) ^ (uint8_t)(k * 7 + seed);
	return d;
}

static const struct dg dg_12 = { { 1, 2 } };

static struct store *open_ok(const char *dir, uint64_t quota)
{
	struct store *s = NULL;
	int ret = store_open(dir, quota, false, &s);

	if (ret)
		fprintf(stderr, "store_open(%s): %s\n", dir, strerror(-ret));
	REQUIRE(ret == 0 && s);
	return s;
}

/* Pages [first, first + n) of id, each with its own digest of seed; or,
 * with ref, each the same content as page i of ref. */
static void put_range_ref(struct store *s, const struct store_ident *id,
			  uint64_t first, uint64_t n, unsigned seed,
			  const struct store_ident *ref, uint64_t ref_first)
{
	for (uint64_t i = first; i < first + n; i++) {
		struct dg d = dg_of(seed, ref ? ref_first + (i - first) : i);

		REQUIRE(store_put_page(s, id, i, d.b, ref,
				       ref_first + (i - first)) == 0);
	}
}

static void put_range(struct store *s, const struct store_ident *id,
		      uint64_t first, uint64_t n, unsigned seed)
{
	put_range_ref(s, id, first, n, seed, NULL, 0);
}

/* How many of pages [first, first + n) have a record, and whether every
 * one found is dg_of(seed, index - shift) (whole, or its tag). */
static unsigned count_fps_shift(struct store *s, uint64_t fid, uint64_t first,
				unsigned n, unsigned seed, uint64_t shift,
				bool *right)
{
	static struct store_rec recs[4096];
	static struct store_group groups[4096];
	unsigned found = 0, ng = 4096;

	REQUIRE(n <= 4096);
	*right = true;
	if (store_get_recs(s, fid, first, n, recs, groups, &ng))
		return 0;
	for (unsigned i = 0; i < n; i++) {
		struct dg want = dg_of(seed, first + i - shift);

		if (recs[i].kind == STORE_REC_NONE)
			continue;
		found++;
		if (recs[i].kind == STORE_REC_DIGEST)
			*right &= !memcmp(recs[i].sha256, want.b, sizeof(want.b));
		else if (recs[i].kind == STORE_REC_GROUP)
			*right &= !memcmp(groups[recs[i].group].tag[recs[i].member],
					  want.b, STORE_TAG_LEN);
		else
			*right = false;
	}
	return found;
}

static unsigned count_fps(struct store *s, uint64_t fid, uint64_t first,
			  unsigned n, unsigned seed, bool *right)
{
	return count_fps_shift(s, fid, first, n, seed, 0, right);
}

static void test_round_trip_survives_reopen(void)
{
	const char *dir = case_dir("roundtrip/state/sub");
	struct store_ident a = ident(1, 10 * PG), b = ident(2, 3 * PG);
	struct store_stats st;
	struct store *s;
	uint64_t fa, fb;
	bool right;

	s = open_ok(dir, 0);
	put_range(s, &a, 0, 10, 1);
	put_range(s, &b, 0, 3, 2);
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(store_file_match(s, &a, &fa), 0);
	CHECK_EQ(count_fps(s, fa, 0, 64, 1, &right), 10);
	CHECK(right);
	store_close(s);

	s = open_ok(dir, 0);
	CHECK_EQ(store_file_match(s, &a, &fa), 0);
	CHECK_EQ(store_file_match(s, &b, &fb), 0);
	CHECK(fa != fb);
	CHECK_EQ(count_fps(s, fa, 0, 16, 1, &right), 10);
	CHECK(right);
	CHECK_EQ(count_fps(s, fa, 4, 3, 1, &right), 3);
	CHECK(right);
	CHECK_EQ(count_fps(s, fb, 0, 16, 2, &right), 3);
	CHECK(right);
	store_get_stats(s, &st);
	CHECK_EQ(st.files, 2);
	CHECK_EQ(st.pages, 13);
	CHECK_EQ(st.distinct, 13);
	CHECK(!st.paused);
	store_close(s);

	/* Read-only, as samepagectl opens it. */
	CHECK_EQ(store_open_readonly(dir, &s), 0);
	if (s) {
		CHECK_EQ(store_file_match(s, &b, &fb), 0);
		CHECK_EQ(count_fps(s, fb, 0, 16, 2, &right), 3);
		store_get_stats(s, &st);
		CHECK_EQ(st.pages, 13);
		store_close(s);
	}
	CHECK_EQ(store_open_readonly(case_dir("nonexistent"), &s), -ENOENT);
}

static void check_mismatch(struct store *s, const struct store_ident *good,
			   struct store_ident bad)
{
	struct store_stats st;
	uint64_t fid;

	put_range(s, good, 0, 4, 3);
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(store_file_match(s, good, &fid), 0);
	CHECK_EQ(store_file_match(s, &bad, &fid), -ESTALE);
	CHECK_EQ(store_sync(s), 0);
	/* The records are gone, whichever identity asks. */
	CHECK_EQ(store_file_match(s, good, &fid), -ENOENT);
	CHECK_EQ(store_file_match(s, &bad, &fid), -ENOENT);
	store_get_stats(s, &st);
	CHECK_EQ(st.files, 0);
	CHECK_EQ(st.pages, 0);
	CHECK_EQ(st.distinct, 0);
}

static void test_identity_mismatch_is_stale(void)
{
	struct store *s = open_ok(case_dir("ident"), 0);
	struct store_ident id = ident(7, 4 * PG), bad;

	bad = id;
	bad.size += 1;
	check_mismatch(s, &id, bad);
	bad = id;
	bad.mtime_ns += 1;
	check_mismatch(s, &id, bad);
	bad = id;
	bad.ctime_ns += 1;          /* mtime put back, ctime moved */
	check_mismatch(s, &id, bad);
	store_close(s);
}

static void test_file_changed_drops_range_keeps_rest(void)
{
	struct store *s = open_ok(case_dir("changed"), 0);
	struct store_ident id = ident(9, 10 * PG), now;
	uint64_t fid, fid2;
	bool right;

	put_range(s, &id, 0, 10, 4);
	CHECK_EQ(store_sync(s), 0);
	REQUIRE(store_file_match(s, &id, &fid) == 0);

	now = id;
	now.mtime_ns += 5;
	now.ctime_ns += 5;
	CHECK_EQ(store_file_changed(s, id.dev, id.ino, &now, 3, 2), 0);
	/* Not committed yet, yet the changed pages are never handed out. */
	{
		struct store_rec recs[10];
		struct store_group grp[10];
		unsigned ng = 10;

		CHECK_EQ(store_get_recs(s, fid, 0, 10, recs, grp, &ng), 0);
		CHECK(recs[3].kind == STORE_REC_NONE &&
		      recs[4].kind == STORE_REC_NONE);
	}
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(store_file_match(s, &now, &fid2), 0);
	CHECK_EQ(fid2, fid);
	CHECK_EQ(count_fps(s, fid, 0, 3, 4, &right), 3);
	CHECK_EQ(count_fps(s, fid, 3, 2, 4, &right), 0);
	CHECK_EQ(count_fps(s, fid, 5, 5, 4, &right), 5);
	CHECK(right);

	/* Truncated to 6 pages: the tail goes too. */
	id = now;
	now.size = 6 * PG;
	now.ctime_ns += 5;
	CHECK_EQ(store_file_changed(s, id.dev, id.ino, &now, 0, 1), 0);
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(count_fps(s, fid, 0, 10, 4, &right), 3);  /* 1, 2, 5 */
	CHECK(right);

	/* Everything from page 2 on. */
	id = now;
	now.ctime_ns += 5;
	CHECK_EQ(store_file_changed(s, id.dev, id.ino, &now, 2, UINT64_MAX), 0);
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(count_fps(s, fid, 0, 10, 4, &right), 1);

	/* Unlinked: gone at once for readers, and for good after commit. */
	CHECK_EQ(store_forget_file(s, now.dev, now.ino), 0);
	CHECK_EQ(count_fps(s, fid, 0, 10, 4, &right), 0);
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(store_file_match(s, &now, &fid2), -ENOENT);

	/* A match with an identity older than the stored one is stale
	 * too: the record goes. */
	put_range(s, &now, 0, 2, 4);
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(store_file_match(s, &id, &fid2), -ESTALE);
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(store_file_match(s, &now, &fid2), -ENOENT);
	store_close(s);
}

/*
 * Copies point into one run: a page put as the same content as another
 * page costs no digest; a put again changes nothing; a page put with
 * other content (even the same tag) leaves the run; a run goes with the
 * last recipe into it.
 */
static void test_copies_share_a_run_counts_follow(void)
{
	struct store *s = open_ok(case_dir("refs"), 0);
	struct store_ident a = ident(11, 64 * PG), b = ident(12, 64 * PG);
	struct dg same = dg_of(5, 0), other = dg_of(6, 0), twin;
	struct store_stats st;
	struct store_rec recs[2];
	struct store_group grp[2];
	unsigned ng = 2;
	uint64_t fid;
	bool right;

	REQUIRE(store_put_page(s, &a, 0, same.b, NULL, 0) == 0);
	REQUIRE(store_put_page(s, &b, 0, same.b, &a, 0) == 0);
	REQUIRE(store_put_page(s, &b, 0, same.b, &a, 0) == 0);  /* no-op */
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	CHECK_EQ(st.pages, 2);
	CHECK_EQ(st.distinct, 1);
	CHECK_EQ(st.dup_pages, 1);
	CHECK_EQ(st.runs, 1);

	/* b's next page, other content: appended where b's page 0 is. */
	REQUIRE(store_put_page(s, &b, 1, other.b, NULL, 0) == 0);
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	CHECK_EQ(st.pages, 3);
	CHECK_EQ(st.distinct, 2);
	CHECK_EQ(st.runs, 1);
	CHECK_EQ(st.recipes, 2);

	/* The same tag, another SHA-256 (a crafted collision): another
	 * content, which gets a run of its own. */
	twin = same;
	twin.b[31] ^= 1;
	REQUIRE(store_put_page(s, &b, 0, twin.b, NULL, 0) == 0);
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	CHECK_EQ(st.pages, 3);
	CHECK_EQ(st.distinct, 3);
	REQUIRE(store_file_match(s, &b, &fid) == 0);
	CHECK_EQ(store_get_recs(s, fid, 0, 2, recs, grp, &ng), 0);
	CHECK(recs[0].kind == STORE_REC_DIGEST &&
	      !memcmp(recs[0].sha256, twin.b, 32));
	CHECK(recs[1].kind == STORE_REC_DIGEST &&
	      !memcmp(recs[1].sha256, other.b, 32));

	/* Back: twin's run goes, b is one recipe into a's run again. */
	REQUIRE(store_put_page(s, &b, 0, same.b, &a, 0) == 0);
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	CHECK_EQ(st.distinct, 2);
	CHECK_EQ(st.runs, 1);
	CHECK_EQ(st.recipes, 2);

	/* Zero pages cost no digest. */
	REQUIRE(store_put_page(s, &b, 2, NULL, NULL, 0) == 0);
	REQUIRE(store_put_page(s, &b, 3, NULL, NULL, 0) == 0);
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	CHECK_EQ(st.pages, 5);
	CHECK_EQ(st.distinct, 2);
	CHECK_EQ(st.recipes, 3);
	ng = 2;
	CHECK_EQ(store_get_recs(s, fid, 2, 2, recs, grp, &ng), 0);
	CHECK(recs[0].kind == STORE_REC_ZERO && recs[1].kind == STORE_REC_ZERO);

	CHECK_EQ(store_forget_file(s, b.dev, b.ino), 0);
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	CHECK_EQ(st.files, 1);
	CHECK_EQ(st.pages, 1);
	CHECK_EQ(st.recipes, 1);
	CHECK_EQ(st.runs, 1);
	REQUIRE(store_file_match(s, &a, &fid) == 0);
	CHECK_EQ(count_fps(s, fid, 0, 4, 5, &right), 1);
	CHECK(right);

	CHECK_EQ(store_forget_file(s, a.dev, a.ino), 0);
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	CHECK_EQ(st.files, 0);
	CHECK_EQ(st.pages, 0);
	CHECK_EQ(st.distinct, 0);
	CHECK_EQ(st.runs, 0);
	store_close(s);
}

/* 8 copies of 100000 pages: one run, a recipe each; the copies' records
 * are the reference's digests, whole groups verified by their digests. */
static void test_8_copies_one_run_eight_recipes(void)
{
	const uint64_t n = 100000;
	struct store *s = open_ok(case_dir("copies"), 0);
	struct store_ident ref = ident(13, n * PG);
	struct store_stats st;
	uint64_t fid;
	bool right;

	put_range(s, &ref, 0, n, 13);
	for (uint64_t c = 1; c < 8; c++) {
		struct store_ident id = ident(13 + c, n * PG);

		put_range_ref(s, &id, 0, n, 13, &ref, 0);
	}
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	if (getenv("TEST_VERBOSE"))
		fprintf(stderr, "8 copies: %llu bytes, %.2f B per page\n",
			(unsigned long long)st.bytes,
			(double)st.bytes / (double)(8 * n));
	CHECK_EQ(st.pages, 8 * n);
	CHECK_EQ(st.distinct, n);
	CHECK_EQ(st.recipes, 8);
	CHECK_EQ(st.runs, 1);
	CHECK((double)st.bytes / (double)(8 * n) <= 4.0);
	{
		struct store_ident id = ident(17, n * PG);

		REQUIRE(store_file_match(s, &id, &fid) == 0);
	}
	CHECK_EQ(count_fps(s, fid, 5000, 2048, 13, &right), 2048);
	CHECK(right);
	store_close(s);
}

/* Pages of [first, first + n) of fid still stored with dg_of(seed, i). */
static unsigned count_range(struct store *s, uint64_t fid, uint64_t first,
			    uint64_t n, unsigned seed)
{
	unsigned kept = 0;
	bool right;

	for (uint64_t i = first; i < first + n; i += 2048) {
		unsigned chunk = first + n - i < 2048 ?
				 (unsigned)(first + n - i) : 2048;

		kept += count_fps(s, fid, i, chunk, seed, &right);
		CHECK(right);
	}
	return kept;
}

/*
 * Files b, c (old, large), a (small, used recently) hold unique pages and
 * pages all three share; file d then grows until the store must prune.
 * Pruning must keep data.mdb within the quota by taking the unique pages
 * of b, then c, and leave shared pages, a and d alone.
 */
static void test_quota_prunes_unique_pages_of_lru_files(void)
{
	const uint64_t quota = 4u << 20, nbig = 100000, nsmall = 2000,
		nshared = 1000, chunk = 2000;
	const char *dir = case_dir("quota");
	struct store_ident a = ident(21, 0), b = ident(22, 0), c = ident(23, 0),
		d = ident(24, 0);
	uint64_t fa, fb, fc, fd, nd = 0;
	unsigned kept_b, kept_c;
	struct store_stats st;
	struct store *s;
	struct stat sb;
	char path[600];

	s = open_ok(dir, quota);
	put_range(s, &b, 0, nbig, 22);
	put_range(s, &c, 0, nbig, 23);
	put_range(s, &a, 0, nsmall, 21);
	put_range_ref(s, &a, nsmall, nshared, 99, NULL, 0);
	put_range_ref(s, &b, nbig, nshared, 99, &a, nsmall);
	put_range_ref(s, &c, nbig, nshared, 99, &a, nsmall);
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	REQUIRE(st.pruned_pages == 0);

	sleep(2);                       /* a becomes the most recently used */
	REQUIRE(store_file_match(s, &a, &fa) == 0);
	CHECK_EQ(store_sync(s), 0);

	for (int i = 0; i < 400 && !st.pruned_pages; i++, nd += chunk) {
		put_range(s, &d, nd, chunk, 24);
		CHECK_EQ(store_sync(s), 0);
		store_get_stats(s, &st);
	}
	if (getenv("TEST_VERBOSE"))
		fprintf(stderr, "quota: d %llu bytes %llu pages %llu pruned "
			"%llu\n", (unsigned long long)nd,
			(unsigned long long)st.bytes,
			(unsigned long long)st.pages,
			(unsigned long long)st.pruned_pages);
	CHECK(st.pruned_pages > 0);
	CHECK(st.bytes <= quota);
	CHECK(!st.paused);
	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	REQUIRE(stat(path, &sb) == 0);
	CHECK((uint64_t)sb.st_size <= quota);

	REQUIRE(store_file_match(s, &a, &fa) == 0);
	REQUIRE(store_file_match(s, &b, &fb) == 0);
	REQUIRE(store_file_match(s, &c, &fc) == 0);
	REQUIRE(store_file_match(s, &d, &fd) == 0);
	kept_b = count_range(s, fb, 0, nbig, 22);
	kept_c = count_range(s, fc, 0, nbig, 23);
	/* b, least recently used, lost its unique pages first ... */
	CHECK(kept_b < nbig);
	CHECK(kept_c == nbig || kept_b == 0);
	/* ... while shared pages and the recently used a stayed. */
	{
		bool right;

		CHECK_EQ(count_fps_shift(s, fb, nbig, nshared, 99,
					 nbig - nsmall, &right), nshared);
		CHECK(right);
	}
	CHECK_EQ(count_range(s, fa, 0, nsmall, 21), nsmall);
	CHECK_EQ(count_range(s, fa, nsmall, nshared, 99), nshared);
	CHECK_EQ(count_range(s, fd, 0, nd, 24), nd);
	store_close(s);
}

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

static void test_kill9_keeps_synced_batches(void)
{
	const char *dir = case_dir("crash");
	struct store_ident a = ident(61, 100 * PG), b = ident(62, 100 * PG);
	struct store *s;
	uint64_t fid;
	bool right;
	pid_t pid;
	int status;

	fflush(NULL);
	pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		s = open_ok(dir, 0);
		put_range(s, &a, 0, 100, 61);
		if (store_sync(s))
			_exit(2);
		put_range(s, &b, 0, 100, 62);
		raise(SIGKILL);
		_exit(3);
	}
	REQUIRE(waitpid(pid, &status, 0) == pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

	s = open_ok(dir, 0);
	CHECK_EQ(store_file_match(s, &a, &fid), 0);
	CHECK_EQ(count_fps(s, fid, 0, 100, 61, &right), 100);
	CHECK(right);
	/* b may or may not have made it, but whole if at all. */
	if (store_file_match(s, &b, &fid) == 0) {
		unsigned n = count_fps(s, fid, 0, 100, 62, &right);

		CHECK(right);
		CHECK(n <= 100);
	}
	put_range(s, &b, 0, 100, 62);
	CHECK_EQ(store_sync(s), 0);
	store_close(s);
}

static void test_100k_puts_commit_in_few_transactions(void)
{
	struct store *s = open_ok(case_dir("batch"), 0);
	struct store_ident id = ident(71, 100000ull * PG);
	struct store_stats before, after;
	struct timespec t0, t1;
	uint64_t elapsed_ms;

	store_get_stats(s, &before);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	put_range(s, &id, 0, 100000, 71);
	CHECK_EQ(store_sync(s), 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	store_get_stats(s, &after);
	CHECK_EQ(after.pages, 100000);
	/* The writer commits every STORE_BATCH updates or every
	 * STORE_BATCH_MS, whichever comes first: a slow machine (or a
	 * sanitizer) adds the timed commits, never more. */
	elapsed_ms = (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000 +
				(t1.tv_nsec - t0.tv_nsec) / 1000000);
	CHECK(after.commits - before.commits <=
	      100000 / STORE_BATCH + elapsed_ms / STORE_BATCH_MS + 3);
	CHECK(after.commits > before.commits);
	store_close(s);
}

static bool only_even(void *arg, uint64_t dev, uint64_t ino)
{
	(void)arg;
	(void)dev;
	return ino % 2 == 0;
}

static void test_prune_missing_drops_gone_files(void)
{
	struct store *s = open_ok(case_dir("missing"), 0);
	struct store_stats st;

	for (uint64_t ino = 80; ino < 90; ino++) {
		struct store_ident id = ident(ino, 2 * PG);

		put_range(s, &id, 0, 2, (unsigned)ino);
	}
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(store_prune_missing(s, only_even, NULL), 0);
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	CHECK_EQ(st.files, 5);
	CHECK_EQ(st.pages, 10);
	store_close(s);
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
	RUN(test_round_trip_survives_reopen);
	RUN(test_identity_mismatch_is_stale);
	RUN(test_file_changed_drops_range_keeps_rest);
	RUN(test_copies_share_a_run_counts_follow);
	RUN(test_8_copies_one_run_eight_recipes);
	RUN(test_quota_prunes_unique_pages_of_lru_files);
	RUN(test_damaged_store_is_ebadmsg_and_rebuilds);
	RUN(test_other_format_is_eproto);
	RUN(test_format1_store_is_rebuilt_with_one_line);
	RUN(test_readonly_state_dir_pauses_reads_work);
	RUN(test_kill9_keeps_synced_batches);
	RUN(test_100k_puts_commit_in_few_transactions);
	RUN(test_prune_missing_drops_gone_files);
	RUN(test_second_opener_runs_without_persistence);
	return CHECK_DONE();
}
