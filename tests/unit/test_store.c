/*
 * test_store: the LMDB store without FUSE. Round trips across reopen,
 * identity checks, refcounts, quota pruning, a crash of the writer,
 * batching, pruning of files gone. Damaged, foreign and old stores are in
 * test_store_damage.c.
 */
#include "teststore.h"

#include <signal.h>
#include <sys/wait.h>
#include <time.h>

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

/* Zero records say nothing about sharing; one digest does, until the
 * page holding it changes. */
static void test_has_content_ignores_zero_records(void)
{
	struct store *s = open_ok(case_dir("content"), 0);
	struct store_ident id = ident(3, 9 * PG), now;
	struct dg d = dg_of(5, 0);
	uint64_t fid;

	for (uint64_t i = 0; i < 8; i++)
		REQUIRE(store_put_page(s, &id, i, NULL, NULL, 0) == 0);
	CHECK_EQ(store_sync(s), 0);
	REQUIRE(store_file_match(s, &id, &fid) == 0);
	CHECK_EQ(store_file_has_content(s, fid), 0);

	REQUIRE(store_put_page(s, &id, 8, d.b, NULL, 0) == 0);
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(store_file_has_content(s, fid), 1);

	now = id;
	now.ctime_ns += 5;
	CHECK_EQ(store_file_changed(s, id.dev, id.ino, &now, 8, 1), 0);
	CHECK_EQ(store_file_has_content(s, fid), 0);    /* before commit */
	CHECK_EQ(store_sync(s), 0);
	CHECK_EQ(store_file_has_content(s, fid), 0);
	store_close(s);
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

/*
 * A page may name as its reference a page that itself points at another
 * (the mount picks any recorded mapper of a shared frame). Queued in one
 * batch, with the pointing file sorting before its reference (b's inode
 * below c's), the reference must still be recorded first: one run, no
 * digest stored twice.
 */
static void test_reference_to_a_reference_in_one_batch(void)
{
	const uint64_t n = 64;
	struct store *s = open_ok(case_dir("chain"), 0);
	struct store_ident a = ident(31, n * PG), b = ident(32, n * PG),
			   c = ident(33, n * PG);
	struct store_stats st;
	uint64_t fid;
	bool right;

	put_range(s, &a, 0, n, 31);
	put_range_ref(s, &c, 0, n, 31, &a, 0);
	put_range_ref(s, &b, 0, n, 31, &c, 0);
	CHECK_EQ(store_sync(s), 0);
	store_get_stats(s, &st);
	CHECK_EQ(st.pages, 3 * n);
	CHECK_EQ(st.distinct, n);
	CHECK_EQ(st.runs, 1);
	CHECK_EQ(st.recipes, 3);
	REQUIRE(store_file_match(s, &b, &fid) == 0);
	CHECK_EQ(count_fps(s, fid, 0, n, 31, &right), n);
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

int main(void)
{
	root = testfs_init();
	RUN(test_round_trip_survives_reopen);
	RUN(test_identity_mismatch_is_stale);
	RUN(test_has_content_ignores_zero_records);
	RUN(test_file_changed_drops_range_keeps_rest);
	RUN(test_copies_share_a_run_counts_follow);
	RUN(test_8_copies_one_run_eight_recipes);
	RUN(test_reference_to_a_reference_in_one_batch);
	RUN(test_quota_prunes_unique_pages_of_lru_files);
	RUN(test_kill9_keeps_synced_batches);
	RUN(test_100k_puts_commit_in_few_transactions);
	RUN(test_prune_missing_drops_gone_files);
	return CHECK_DONE();
}
