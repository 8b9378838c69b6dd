/*
 * Unit tests of reflink sharing on a real XFS image (loop device, reflink
 * on): clones read through the cache share frames without backing I/O or
 * hashing; writes, punched holes and re-clones behind the cache never
 * serve stale data. Skipped (77) without root, mkfs.xfs or loop devices.
 */
#include "testcache.h"
#include "cache_i.h"
#include "dedup_i.h" /* to take a frame out of the stable tree */

#include <linux/falloc.h>
#include <linux/fiemap.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>

#define PG 4096u
#define NPAGES 1024u

static char img[300], mnt[300], loopdev[64];

static void xfs_cleanup(void)
{
	char cmd[512];

	umount2(mnt, MNT_DETACH);
	if (loopdev[0]) {
		snprintf(cmd, sizeof(cmd), "losetup -d %s", loopdev);
		if (system(cmd))
			fprintf(stderr, "losetup -d failed\n");
	}
}

static int xfs_setup(const char *dir)
{
	char cmd[1024];
	FILE *p;

	if (geteuid() != 0 || system("command -v mkfs.xfs >/dev/null 2>&1"))
		return -1;
	snprintf(img, sizeof(img), "%s/xfs.img", dir);
	snprintf(mnt, sizeof(mnt), "%s/mnt", dir);
	mkdir(mnt, 0755);
	snprintf(cmd, sizeof(cmd),
		 "truncate -s 300M %s && mkfs.xfs -q -m reflink=1 %s", img, img);
	if (system(cmd))
		return -1;
	snprintf(cmd, sizeof(cmd), "losetup --direct-io=on --find --show %s",
		 img);
	p = popen(cmd, "r");
	if (!p || !fgets(loopdev, sizeof(loopdev), p)) {
		if (p)
			pclose(p);
		return -1;
	}
	pclose(p);
	loopdev[strcspn(loopdev, "\n")] = 0;
	atexit(xfs_cleanup);
	if (mount(loopdev, mnt, "xfs", 0, NULL))
		return -1;
	return 0;
}

static void clone_file(const char *src, const char *dst)
{
	char a[512], b[512];
	int s, d;

	snprintf(a, sizeof(a), "%s/%s", mnt, src);
	snprintf(b, sizeof(b), "%s/%s", mnt, dst);
	s = open(a, O_RDONLY);
	d = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	REQUIRE(s >= 0 && d >= 0);
	REQUIRE(ioctl(d, FICLONE, s) == 0);
	close(s);
	close(d);
}

static struct cfile *open_file(struct cache *c, const char *name)
{
	char path[512];
	struct cfile *f;
	int pfd;

	snprintf(path, sizeof(path), "%s/%s", mnt, name);
	pfd = open(path, O_PATH);
	REQUIRE(pfd >= 0);
	REQUIRE(cfile_open(c, pfd, true, &f) == 0);
	close(pfd);
	return f;
}

static void make_on_xfs(const char *name, uint64_t len, unsigned seed)
{
	char saved[256];

	strcpy(saved, testfs_dir);
	strcpy(testfs_dir, mnt);
	testfs_make(name, len, seed);
	strcpy(testfs_dir, saved);
	sync();
}

/* Does FIEMAP call page 0 of the file shared? */
static bool first_page_shared(const char *name)
{
	union {
		struct fiemap fm;
		char room[sizeof(struct fiemap) + sizeof(struct fiemap_extent)];
	} q;
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", mnt, name);
	fd = open(path, O_RDONLY);
	REQUIRE(fd >= 0);
	memset(&q, 0, sizeof(q));
	q.fm.fm_length = PG;
	q.fm.fm_flags = FIEMAP_FLAG_SYNC;
	q.fm.fm_extent_count = 1;
	REQUIRE(ioctl(fd, FS_IOC_FIEMAP, &q.fm) == 0);
	close(fd);
	return q.fm.fm_mapped_extents &&
	       (q.fm.fm_extents[0].fe_flags & FIEMAP_EXTENT_SHARED);
}

static void remove_on_xfs(const char *name)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", mnt, name);
	REQUIRE(unlink(path) == 0);
}

/*
 * A block identity carried by a frame whose mappers never held the block:
 * R and A hold equal bytes in blocks of their own; B, a clone of A, is
 * read and merges into R's frame by content, bringing A's block P along.
 * With B gone, P is A's alone and a write to A rewrites P in place. A new
 * clone C of A (and A itself, once its pages are gone) must read the new
 * bytes, not R's frame.
 */
static void test_identity_moved_by_content_merge(struct cache *c)
{
	const uint64_t len = 16 * PG;
	unsigned char page[PG];
	struct cfile *r, *a, *b, *cc;

	make_on_xfs("mv_r", len, 41);
	make_on_xfs("mv_a", len, 41);
	make_on_xfs("mv_b", 0, 0);
	make_on_xfs("mv_c", 0, 0);
	r = open_file(c, "mv_r");
	a = open_file(c, "mv_a");
	b = open_file(c, "mv_b");
	cc = open_file(c, "mv_c");
	CHECK(tc_matches(r, 0, len, 41, NULL));
	CHECK_EQ(cache_clone_range(a, 0, b, 0, len), (ssize_t)len);
	CHECK(tc_matches(b, 0, len, 41, NULL));
	/* B goes away; A's block is its own again (XFS frees an unlinked
	 * inode's blocks in the background; statfs pushes that on) */
	remove_on_xfs("mv_b");
	cfile_set_orphan(b, true);
	cfile_put(b);
	for (int i = 0; first_page_shared("mv_a"); i++) {
		struct statvfs sv;

		REQUIRE(i < 10000 && statvfs(mnt, &sv) == 0);
		usleep(1000); /* the kernel's background work, not ours */
	}
	memset(page, 0xD7, PG);
	CHECK_EQ(cache_write(a, page, PG, 0, false, NULL), (ssize_t)PG);
	CHECK_EQ(cache_fsync(a, false), 0);
	CHECK_EQ(cache_invalidate_file(a), 0);
	CHECK_EQ(cache_clone_range(a, 0, cc, 0, len), (ssize_t)len);
	CHECK(tc_matches(cc, 0, PG, 0, page));
	CHECK(tc_matches(a, 0, PG, 0, page));
	CHECK(tc_matches(r, 0, len, 41, NULL));
	cfile_put(r);
	cfile_put(a);
	cfile_put(cc);
	printf("ok block_identity_moved_by_content_merge_not_trusted\n");
}

struct writer_arg {
	struct cfile *f;
	const unsigned char *data;
	ssize_t ret;
};

static void *writer_main(void *p)
{
	struct writer_arg *w = p;

	w->ret = cache_write(w->f, w->data, PG, 0, false, NULL);
	return NULL;
}

/*
 * A frame known by its block but not in the stable tree gains a mapper
 * (a clone's read, by block) while its only other mapper is about to be
 * written: the write must copy it into a frame of its own, not write into
 * the shared one.
 */
static void test_cow_of_block_frame_gaining_a_mapper(struct cache *c,
						    struct dedup *d)
{
	const uint64_t len = 4 * PG;
	unsigned char page[PG], old[PG];
	struct writer_arg w;
	struct cfile *a, *b;
	struct frame *fr;
	pthread_t t;
	uint32_t fid;
	int ret;

	ret = cache_failpoint_set("pause_write_cow", "1");
	if (ret == -ENOTSUP) {
		printf("skip cow_of_block_frame (no failpoints)\n");
		return;
	}
	REQUIRE(ret == 0);
	make_on_xfs("cw_a", len, 43);
	clone_file("cw_a", "cw_b");
	a = open_file(c, "cw_a");
	b = open_file(c, "cw_b");
	CHECK(tc_matches(a, 0, len, 43, NULL));
	/* Out of the stable tree, still known by its block. */
	pthread_rwlock_rdlock(&a->pidx_lock);
	fid = pidx_lookup(&a->pidx, 0);
	pthread_rwlock_unlock(&a->pidx_lock);
	fr = cache_frame(c, fid);
	pthread_mutex_lock(&c->map_lock);
	CHECK(frame_flags(fr) & F_PHYS);
	if (frame_flags(fr) & F_STABLE) {
		stree_remove(&d->stable, fid);
		frame_clear(fr, F_STABLE);
	}
	pthread_mutex_unlock(&c->map_lock);

	memset(page, 0x3C, PG);
	w = (struct writer_arg){ .f = a, .data = page };
	REQUIRE(pthread_create(&t, NULL, writer_main, &w) == 0);
	CHECK_EQ(cache_failpoint_set("pause_write_cow", "wait"), 0);
	/* the clone's read maps A's frame by its block meanwhile */
	testfs_fill(old, 0, PG, 43);
	CHECK(tc_matches(b, 0, PG, 0, old));
	CHECK_EQ(cache_failpoint_set("pause_write_cow", "0"), 0);
	pthread_join(t, NULL);
	CHECK_EQ(w.ret, (ssize_t)PG);
	CHECK(tc_matches(a, 0, PG, 0, page));
	CHECK(tc_matches(b, 0, PG, 0, old));
	CHECK_EQ(cache_fsync(a, false), 0);
	CHECK(tc_matches(b, 0, len, 43, NULL));
	cfile_put(a);
	cfile_put(b);
	printf("ok cow_of_block_frame_gaining_a_mapper\n");
}

int main(void)
{
	const char *dir = testfs_init();
	struct cache_config cfg = { .size_bytes = 64 << 20,
				    .writeback_ms = 100 };
	struct dedup_config dc;
	struct cache *c;
	struct dedup *d;
	struct cfile *f[8];
	struct dedup_stats ds;
	struct cache_stats cs;
	unsigned char *model = malloc(NPAGES * PG);

	if (xfs_setup(dir)) {
		printf("skip: needs root, mkfs.xfs and a loop device\n");
		return 77;
	}
	/* a file written on the XFS image, and 7 clones of it */
	{
		char saved[256];

		strcpy(saved, testfs_dir);
		strcpy(testfs_dir, mnt);
		testfs_make("c0", NPAGES * PG, 1);
		strcpy(testfs_dir, saved);
	}
	sync();
	for (int i = 1; i < 8; i++) {
		char name[8];

		snprintf(name, sizeof(name), "c%d", i);
		clone_file("c0", name);
	}
	dedup_config_defaults(&dc);
	REQUIRE(cache_create(&cfg, &c) == 0);
	REQUIRE(dedup_create(c, &dc, &d) == 0);
	for (int i = 0; i < 8; i++) {
		char name[8];

		snprintf(name, sizeof(name), "c%d", i);
		f[i] = open_file(c, name);
	}

	/* 8 clones: one copy read from disk and hashed, the rest mapped */
	for (int i = 0; i < 8; i++)
		CHECK(tc_matches(f[i], 0, NPAGES * PG, 1, NULL));
	dedup_get_stats(d, &ds);
	cache_get_stats(c, &cs);
	CHECK_EQ(ds.reflink_merges, 7 * NPAGES);
	CHECK_EQ(ds.hashes_computed, NPAGES);
	CHECK_EQ(cs.backing_read_bytes, NPAGES * PG);
	CHECK_EQ(ds.pages_sharing, 7 * NPAGES);
	CHECK(cs.cache_bytes <= (NPAGES + 8) * PG);
	printf("ok reflink_clones_share_without_io\n");

	/* a write to one clone is seen there only. Its bytes differ page by
	 * page: two equal pages would be merged by the scanner whenever it
	 * comes to them, and pages_sharing, counted below, would move under
	 * the test's feet. */
	testfs_fill(model, 0, NPAGES * PG, 1);
	testfs_fill(model + 10 * PG + 5, 10 * PG + 5, 3 * PG, 9);
	CHECK_EQ(cache_write(f[3], model + 10 * PG + 5, 3 * PG, 10 * PG + 5,
			     false, NULL), 3 * PG);
	CHECK_EQ(cache_fsync(f[3], false), 0);
	CHECK(tc_matches(f[3], 0, NPAGES * PG, 0, model));
	for (int i = 0; i < 8; i++)
		if (i != 3)
			CHECK(tc_matches(f[i], 0, NPAGES * PG, 1, NULL));
	printf("ok reflink_write_stays_private\n");

	/* punch a hole through the cache in clone 5 */
	CHECK_EQ(cache_fallocate(f[5], FALLOC_FL_PUNCH_HOLE |
				 FALLOC_FL_KEEP_SIZE, 100 * PG, 50 * PG), 0);
	testfs_fill(model, 0, NPAGES * PG, 1);
	memset(model + 100 * PG, 0, 50 * PG);
	CHECK(tc_matches(f[5], 0, NPAGES * PG, 0, model));
	CHECK(tc_matches(f[6], 0, NPAGES * PG, 1, NULL));
	printf("ok reflink_punch_hole\n");

	/* behind the cache: re-clone c7 from a new file, then reopen it */
	{
		char saved[256];

		strcpy(saved, testfs_dir);
		strcpy(testfs_dir, mnt);
		testfs_make("other", NPAGES * PG, 2);
		strcpy(testfs_dir, saved);
	}
	clone_file("other", "c7");
	CHECK_EQ(cfile_revalidate(f[7]), 0);
	CHECK(tc_matches(f[7], 0, NPAGES * PG, 2, NULL));
	/* and a fresh clone of the changed file reads right too */
	clone_file("c7", "c8");
	struct cfile *g = open_file(c, "c8");
	CHECK(tc_matches(g, 0, NPAGES * PG, 2, NULL));
	CHECK(tc_matches(f[0], 0, NPAGES * PG, 1, NULL));
	cfile_put(g);
	printf("ok reflink_reclone_behind_not_stale\n");

	/* preallocated (unwritten) space reads as zeros, one zero frame */
	{
		char path[512];
		int fd;

		snprintf(path, sizeof(path), "%s/prealloc", mnt);
		fd = open(path, O_CREAT | O_RDWR, 0644);
		REQUIRE(fd >= 0 && fallocate(fd, 0, 0, 64 * PG) == 0);
		close(fd);
		g = open_file(c, "prealloc");
		dedup_get_stats(d, &ds);
		cache_get_stats(c, &cs);
		uint64_t before = ds.zero_pages;
		uint64_t reads = cs.backing_read_bytes;
		memset(model, 0, 64 * PG);
		CHECK(tc_matches(g, 0, 64 * PG, 0, model));
		dedup_get_stats(d, &ds);
		cache_get_stats(c, &cs);
		CHECK_EQ(ds.zero_pages, before + 64);
		/* mapped from the extent map, not read */
		CHECK_EQ(cs.backing_read_bytes, reads);
		cfile_put(g);
		printf("ok unwritten_extent_reads_zero\n");
	}

	/* a clone made through the cache shares the source's frames at once */
	{
		char path[512];
		int fd;

		snprintf(path, sizeof(path), "%s/made", mnt);
		fd = open(path, O_CREAT | O_RDWR, 0644);
		REQUIRE(fd >= 0);
		close(fd);
		g = open_file(c, "made");
		CHECK(tc_matches(f[0], 0, NPAGES * PG, 1, NULL));
		dedup_get_stats(d, &ds);
		cache_get_stats(c, &cs);
		uint64_t sharing = ds.pages_sharing, reads = cs.backing_read_bytes;
		CHECK_EQ(cache_clone_range(f[0], 0, g, 0, NPAGES * PG),
			 NPAGES * PG);
		CHECK_EQ(cfile_size(g), NPAGES * PG);
		CHECK(tc_matches(g, 0, NPAGES * PG, 1, NULL));
		dedup_get_stats(d, &ds);
		cache_get_stats(c, &cs);
		CHECK_EQ(ds.pages_sharing, sharing + NPAGES);
		CHECK_EQ(cs.backing_read_bytes, reads);
		/* unaligned offsets are refused: the caller copies instead */
		CHECK_EQ(cache_clone_range(f[0], 100, g, 0, PG), -EINVAL);
		/* and the clone is independent */
		CHECK_EQ(cache_write(g, "W", 1, 0, false, NULL), 1);
		CHECK(tc_matches(f[0], 0, NPAGES * PG, 1, NULL));
		cfile_put(g);
		printf("ok clone_through_cache_shares_frames\n");
	}

	test_identity_moved_by_content_merge(c);
	test_cow_of_block_frame_gaining_a_mapper(c, d);

	for (int i = 0; i < 8; i++)
		cfile_put(f[i]);
	dedup_destroy(d);
	cache_destroy(c);
	free(model);
	return CHECK_DONE();
}
