/*
 * Unit tests of content merging across mounts without FUSE: warm restart,
 * records trusted on SHA-256 only, and the size of the store per mapped
 * page.
 */
#include "testdedup.h"
#include "fp.h"
#include "store.h"

static char state_dir[300];

static void tune_state(struct dedup_config *dc)
{
	dc->state_dir = state_dir;
}

static void test_warm_restart_reads_one_copy(void)
{
	struct env e;
	struct cfile *f[8];
	struct dedup_stats ds;
	struct cache_stats cs;
	unsigned char model[256 * PG];

	snprintf(state_dir, sizeof(state_dir), "%s/state", testfs_dir);
	e = new_env(64 << 20, tune_state);
	copies("warm", 8, 256 * PG, 12, e.c, f);
	for (int i = 0; i < 8; i++)
		CHECK(tc_matches(f[i], 0, 256 * PG, 12, NULL));
	for (int i = 0; i < 8; i++)
		cfile_put(f[i]);
	free_env(&e); /* the store commits what is queued */

	/* a file changed behind the mount keeps its size and mtime */
	char path[512];
	struct stat st;
	snprintf(path, sizeof(path), "%s/warm5", testfs_dir);
	REQUIRE(stat(path, &st) == 0);
	testfs_fill(model, 0, sizeof(model), 12);
	memcpy(model + 7 * PG, "changed behind", 14);
	int fd = open(path, O_WRONLY);
	REQUIRE(fd >= 0 && pwrite(fd, "changed behind", 14, 7 * PG) == 14);
	struct timespec ts[2] = { st.st_atim, st.st_mtim };
	REQUIRE(futimens(fd, ts) == 0);
	close(fd);

	e = new_env(64 << 20, tune_state);
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.store_files, 8); /* known at mount time */
	for (int i = 0; i < 8; i++) {
		char name[16];

		snprintf(name, sizeof(name), "warm%d", i);
		f[i] = tc_open(e.c, name);
	}
	for (int i = 0; i < 8; i++)
		CHECK(tc_matches(f[i], 0, 256 * PG, 12, i == 5 ? model : NULL));
	dedup_get_stats(e.d, &ds);
	cache_get_stats(e.c, &cs);
	if (getenv("TEST_VERBOSE"))
		fprintf(stderr, "warm: read %llu pages, hashed %llu, "
			"digests %llu, store hits %llu\n",
			(unsigned long long)(cs.backing_read_bytes / PG),
			(unsigned long long)ds.hashes_computed,
			(unsigned long long)ds.digests_computed,
			(unsigned long long)ds.store_hits);
	/* one copy read, plus the changed file whose records were dropped */
	CHECK(cs.backing_read_bytes <= 2 * 256 * PG);
	CHECK(ds.store_hits >= 6 * 256);
	/* Mapped on the stored SHA-256s: store merges, not content merges,
	 * which memcmp() confirmed (the changed file's pages, read). */
	CHECK(ds.store_merges >= 6 * 256);
	CHECK(ds.store_merges <= ds.store_hits);
	CHECK(ds.content_merges <= 256);
	/* What was read was hashed, what was mapped unread was not; only
	 * pages with a record (warm0's) were digested. */
	CHECK(ds.hashes_computed <= cs.backing_read_bytes / PG + 10);
	CHECK(ds.digests_computed <= 256 + 10);
	for (int i = 0; i < 8; i++)
		cfile_put(f[i]);
	free_env(&e);
}

static int64_t ts_ns(struct timespec ts)
{
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * Record in the store at state_dir what a previous mount would have: page
 * i of name has the SHA-256 of page i of content sha_seed, but for its
 * first 8 bytes (the tag, which finds candidates), taken from page i of
 * content tag_seed. With both seeds the file's own, that is the truth;
 * with another tag seed, a collision on the tag (crafted or not). The
 * pages are recorded as a file's own digests: a run of whole groups.
 */
static void record_pages(const char *name, unsigned npages, unsigned tag_seed,
			 unsigned sha_seed)
{
	unsigned char page[PG];
	struct store_ident id;
	struct store *s;
	struct stat st;
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", testfs_dir, name);
	REQUIRE(stat(path, &st) == 0);
	id = (struct store_ident){ .dev = st.st_dev, .ino = st.st_ino,
				   .size = (uint64_t)st.st_size,
				   .mtime_ns = ts_ns(st.st_mtim),
				   .ctime_ns = ts_ns(st.st_ctim) };
	REQUIRE(store_open(state_dir, 0, false, &s) == 0);
	for (unsigned i = 0; i < npages; i++) {
		uint8_t dg[FP_DIGEST_LEN], tag[FP_DIGEST_LEN];

		testfs_fill(page, (uint64_t)i * PG, PG, sha_seed);
		REQUIRE(fp_digest(page, dg) == 0);
		testfs_fill(page, (uint64_t)i * PG, PG, tag_seed);
		REQUIRE(fp_digest(page, tag) == 0);
		memcpy(dg, tag, STORE_TAG_LEN);
		REQUIRE(store_put_page(s, &id, i, dg, NULL, 0) == 0);
	}
	REQUIRE(store_sync(s) == 0);
	store_close(s);
}

#define NCOLL 64u

/*
 * cx (content 22) was shared in an earlier mount and recorded truly. cv
 * (content 21) has records whose tags are cx's pages' but whose SHA-256s
 * are otherwise its own: what a collision on the tag crafted against cv
 * looks like. Once cx is resident, the tags name cx's frames, but their
 * digests do not hash to cv's groups: cv must still be read, never
 * mapped to cx's frames.
 */
static void test_stored_tag_match_other_sha256_is_read(void)
{
	struct env e;
	struct cfile *x, *v;
	struct dedup_stats ds;
	struct cache_stats cs;

	snprintf(state_dir, sizeof(state_dir), "%s/state-collide", testfs_dir);
	testfs_make("cx", NCOLL * PG, 22);
	testfs_make("cv", NCOLL * PG, 21);
	record_pages("cx", NCOLL, 22, 22);
	record_pages("cv", NCOLL, 22, 21);

	e = new_env(64 << 20, tune_state);
	x = tc_open(e.c, "cx");
	v = tc_open(e.c, "cv");
	CHECK(tc_matches(x, 0, NCOLL * PG, 22, NULL));
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.digests_computed, NCOLL);   /* cx's fills, records true */
	CHECK(tc_matches(v, 0, NCOLL * PG, 21, NULL));
	dedup_get_stats(e.d, &ds);
	cache_get_stats(e.c, &cs);
	CHECK_EQ(ds.store_hits, 0);
	CHECK_EQ(cs.backing_read_bytes, 2 * NCOLL * PG);
	CHECK_EQ(ds.pages_sharing, 0);
	cfile_put(x);
	cfile_put(v);
	free_env(&e);
}

/* The same with a true record: cy, a copy of cx, is mapped to cx's
 * frames without backing I/O and without hashing, on its groups' digests
 * (NCOLL pages: whole groups only) and on whole digests (the open group
 * of a run of NCOLL + 3 pages). */
static void test_stored_sha256_match_maps_unread(void)
{
	const unsigned npages = NCOLL + 3;
	struct env e;
	struct cfile *x, *y;
	struct dedup_stats ds, before;
	struct cache_stats cs;

	snprintf(state_dir, sizeof(state_dir), "%s/state-match", testfs_dir);
	testfs_make("mx", npages * PG, 22);
	testfs_make("my", npages * PG, 22);
	record_pages("mx", npages, 22, 22);
	record_pages("my", npages, 22, 22);

	e = new_env(64 << 20, tune_state);
	x = tc_open(e.c, "mx");
	y = tc_open(e.c, "my");
	CHECK(tc_matches(x, 0, npages * PG, 22, NULL));
	dedup_get_stats(e.d, &before);
	CHECK(tc_matches(y, 0, npages * PG, 22, NULL));
	dedup_get_stats(e.d, &ds);
	cache_get_stats(e.c, &cs);
	CHECK_EQ(ds.store_hits, npages);
	CHECK_EQ(cs.backing_read_bytes, npages * PG);
	CHECK_EQ(ds.hashes_computed, before.hashes_computed);
	CHECK_EQ(ds.digests_computed, before.digests_computed);
	CHECK_EQ(ds.pages_sharing, npages);
	cfile_put(x);
	cfile_put(y);
	free_env(&e);
}

static struct store_ident ident_of(const char *name)
{
	struct stat st;
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", testfs_dir, name);
	REQUIRE(stat(path, &st) == 0);
	return (struct store_ident){ .dev = st.st_dev, .ino = st.st_ino,
				     .size = (uint64_t)st.st_size,
				     .mtime_ns = ts_ns(st.st_mtim),
				     .ctime_ns = ts_ns(st.st_ctim) };
}

/* How many of the npages first pages of name the store at state_dir
 * records as content seed (whole digest, or tag in a group whose digest
 * is that of the true members). */
static unsigned records_right(const char *name, unsigned npages,
			      unsigned seed)
{
	static struct store_rec recs[1024];
	static struct store_group groups[1024];
	struct store_ident id = ident_of(name);
	unsigned char page[PG];
	unsigned ng = 1024, right = 0;
	struct store *s;
	uint64_t fid;

	REQUIRE(npages <= 1024);
	REQUIRE(store_open_readonly(state_dir, &s) == 0);
	if (store_file_match(s, &id, &fid) ||
	    store_get_recs(s, fid, 0, npages, recs, groups, &ng)) {
		store_close(s);
		return 0;
	}
	for (unsigned i = 0; i < npages; i++) {
		uint8_t dg[FP_DIGEST_LEN];
		uint8_t leaf[STORE_GROUP][STORE_SHA256_LEN], gd[32];
		unsigned first;

		testfs_fill(page, (uint64_t)i * PG, PG, seed);
		REQUIRE(fp_digest(page, dg) == 0);
		if (recs[i].kind == STORE_REC_DIGEST) {
			right += !memcmp(recs[i].sha256, dg, sizeof(dg));
			continue;
		}
		if (recs[i].kind != STORE_REC_GROUP ||
		    memcmp(groups[recs[i].group].tag[recs[i].member], dg,
			   STORE_TAG_LEN))
			continue;
		/* The group's members are this file's pages around i. */
		first = i - recs[i].member;
		for (unsigned m = 0; m < STORE_GROUP; m++) {
			testfs_fill(page, (uint64_t)(first + m) * PG, PG, seed);
			REQUIRE(fp_digest(page, leaf[m]) == 0);
		}
		REQUIRE(store_group_digest(
			(const uint8_t (*)[STORE_SHA256_LEN])leaf, gd) == 0);
		right += !memcmp(gd, groups[recs[i].group].digest, sizeof(gd));
	}
	store_close(s);
	return right;
}

/*
 * A record that is not what the file holds (a store that lies) is not
 * copied into the frame: the fill hashes what it read, so a copy without
 * a record still merges with it, and the wrong record is replaced by the
 * true one when the page is shared.
 */
static void test_fill_hashes_content_not_the_record(void)
{
	struct env e;
	struct cfile *a, *b;
	struct dedup_stats ds;

	snprintf(state_dir, sizeof(state_dir), "%s/state-lie", testfs_dir);
	testfs_make("la", NCOLL * PG, 23);
	testfs_make("lb", NCOLL * PG, 23);
	record_pages("la", NCOLL, 99, 99);
	CHECK_EQ(records_right("la", NCOLL, 23), 0);

	e = new_env(64 << 20, tune_state);
	a = tc_open(e.c, "la");
	b = tc_open(e.c, "lb");
	CHECK(tc_matches(a, 0, NCOLL * PG, 23, NULL));
	CHECK(tc_matches(b, 0, NCOLL * PG, 23, NULL));
	dedup_get_stats(e.d, &ds);
	CHECK_EQ(ds.pages_sharing, NCOLL);
	CHECK_EQ(ds.hashes_computed, 2 * NCOLL);
	CHECK_EQ(ds.store_hits, 0);
	cfile_put(a);
	cfile_put(b);
	free_env(&e);       /* the shared pages are recorded by now */

	CHECK_EQ(records_right("la", NCOLL, 23), NCOLL);
	CHECK_EQ(records_right("lb", NCOLL, 23), NCOLL);
}

/* Read every page of f (len bytes) through the cache. */
static void read_through(struct cfile *f, uint64_t len)
{
	static unsigned char buf[1 << 20];

	for (uint64_t off = 0; off < len; off += sizeof(buf))
		REQUIRE(cache_pread(f, buf, sizeof(buf), off) > 0);
}

/* Overwrite pages i of name with i % every == 0 by content seed. */
static void patch_pages(const char *name, uint64_t npages, unsigned every,
			unsigned seed)
{
	unsigned char page[PG];
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", testfs_dir, name);
	fd = open(path, O_WRONLY);
	REQUIRE(fd >= 0);
	for (uint64_t i = 0; i < npages; i += every) {
		testfs_fill(page, i * PG, PG, seed);
		REQUIRE(pwrite(fd, page, PG, (off_t)(i * PG)) == PG);
	}
	close(fd);
}

/* Bytes the store at state_dir uses: its trees (what LMDB reuses) and
 * data.mdb (what the disk holds). */
static void store_size(struct store_stats *st, uint64_t *file_bytes)
{
	struct store *s;
	struct stat sb;
	char path[600];

	REQUIRE(store_open_readonly(state_dir, &s) == 0);
	store_get_stats(s, st);
	store_close(s);
	snprintf(path, sizeof(path), "%s/data.mdb", state_dir);
	REQUIRE(stat(path, &sb) == 0);
	*file_bytes = (uint64_t)sb.st_size;
}

/*
 * 8 identical copies of 16 MiB, read through the cache and recorded: the
 * store holds one run of digests and a recipe per copy, at most 4 bytes
 * per mapped page (the reference's 12.5 bytes a page over 8 copies).
 */
static void test_store_8_copies_at_most_4_bytes_per_mapped_page(void)
{
	const uint64_t len = 16ull << 20, npages = len / PG;
	struct store_stats st;
	struct cfile *f[8];
	uint64_t file_bytes;
	double per_page;
	struct env e;

	snprintf(state_dir, sizeof(state_dir), "%s/state-size8", testfs_dir);
	e = new_env(64 << 20, tune_state);
	copies("size8-", 8, len, 31, e.c, f);
	for (int i = 0; i < 8; i++)
		read_through(f[i], len);
	for (int i = 0; i < 8; i++)
		cfile_put(f[i]);
	free_env(&e);

	store_size(&st, &file_bytes);
	per_page = (double)st.bytes / (double)(8 * npages);
	printf("store of 8 copies of 16 MiB: %llu pages described, %llu "
	       "digests, %llu recipes, %llu runs; %llu bytes in use (%.2f "
	       "B per mapped page), data.mdb %llu bytes (%.2f B per page)\n",
	       (unsigned long long)st.pages, (unsigned long long)st.distinct,
	       (unsigned long long)st.recipes, (unsigned long long)st.runs,
	       (unsigned long long)st.bytes, per_page,
	       (unsigned long long)file_bytes,
	       (double)file_bytes / (double)(8 * npages));
	CHECK_EQ(st.pages, 8 * npages);
	CHECK_EQ(st.distinct, npages);
	/* a recipe per copy, a few more where a mapper that was busy when
	 * its frame was recorded split a run (timing: sanitizers, load) */
	CHECK(st.recipes <= 8 * 8);
	CHECK(per_page <= 4.0);
	/* data.mdb also holds the pages copy-on-write freed in the last
	 * two commits, which LMDB reuses after them: a few dozen, whatever
	 * the size, more when a slow run commits on the timer in small
	 * batches (one more page was seen under TSan on a loaded machine). */
	CHECK(file_bytes <= st.bytes + (128u << 10));
}

/*
 * A mix: a (16 MiB), b a copy of it, c a's first half then other pages,
 * d a with every 16th page its own, u unique. What the store holds stays
 * within 2% of the distinct content it describes.
 */
static void test_store_mix_within_2_percent_of_unique_bytes(void)
{
	const uint64_t len = 16ull << 20, npages = len / PG;
	static const char *const names[] = { "mix-a", "mix-b", "mix-c",
					      "mix-d", "mix-u" };
	struct store_stats st;
	struct cfile *f[5];
	uint64_t file_bytes;
	double share;
	struct env e;

	snprintf(state_dir, sizeof(state_dir), "%s/state-mix", testfs_dir);
	testfs_make("mix-a", len, 41);
	testfs_make("mix-b", len, 41);
	testfs_make("mix-c", len, 41);
	patch_pages("mix-c", npages, 1, 43);    /* all ... */
	{
		unsigned char page[PG];
		char path[512];
		int fd;

		/* ... then a's first half back */
		snprintf(path, sizeof(path), "%s/mix-c", testfs_dir);
		fd = open(path, O_WRONLY);
		REQUIRE(fd >= 0);
		for (uint64_t i = 0; i < npages / 2; i++) {
			testfs_fill(page, i * PG, PG, 41);
			REQUIRE(pwrite(fd, page, PG, (off_t)(i * PG)) == PG);
		}
		close(fd);
	}
	testfs_make("mix-d", len, 41);
	patch_pages("mix-d", npages, 16, 44);
	testfs_make("mix-u", len, 45);

	e = new_env(96 << 20, tune_state);
	for (int i = 0; i < 5; i++) {
		f[i] = tc_open(e.c, names[i]);
		read_through(f[i], len);
	}
	for (int i = 0; i < 5; i++)
		cfile_put(f[i]);
	free_env(&e);

	store_size(&st, &file_bytes);
	share = 100.0 * (double)st.bytes / (double)(st.distinct * PG);
	printf("store of a mix: %llu pages described, %llu digests (%llu "
	       "MiB of distinct content), %llu recipes, %llu runs; %llu "
	       "bytes in use (%.3f%% of it), data.mdb %llu bytes (%.3f%%)\n",
	       (unsigned long long)st.pages, (unsigned long long)st.distinct,
	       (unsigned long long)(st.distinct * PG >> 20),
	       (unsigned long long)st.recipes, (unsigned long long)st.runs,
	       (unsigned long long)st.bytes, share,
	       (unsigned long long)file_bytes,
	       100.0 * (double)file_bytes / (double)(st.distinct * PG));
	/* a's pages, and b's, c's first half, d's but every 16th. */
	CHECK(st.pages >= 3 * npages);
	CHECK(st.distinct <= npages + npages / 8);
	CHECK(share <= 2.0);
	CHECK(100.0 * (double)file_bytes / (double)(st.distinct * PG) <= 2.0);
	CHECK(st.recipes <= 5 + npages / 16 * 2);
	CHECK_EQ(records_right("mix-b", 1024, 41), 1024);
}

int main(void)
{
	testfs_init();
	RUN(test_warm_restart_reads_one_copy);
	RUN(test_stored_tag_match_other_sha256_is_read);
	RUN(test_stored_sha256_match_maps_unread);
	RUN(test_fill_hashes_content_not_the_record);
	RUN(test_store_8_copies_at_most_4_bytes_per_mapped_page);
	RUN(test_store_mix_within_2_percent_of_unique_bytes);
	return CHECK_DONE();
}
