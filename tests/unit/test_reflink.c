/*
 * Unit tests of reflink sharing on a real XFS image (loop device, reflink
 * on): clones read through the cache share frames without backing I/O or
 * hashing; writes, punched holes and re-clones behind the cache never
 * serve stale data. Skipped (77) without root, mkfs.xfs or loop devices.
 */
#include "testfs.h"
#include "cache_i.h"
#include "dedup.h"

#include <linux/falloc.h>
#include <sys/stat.h>
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

static int matches(struct cfile *f, uint64_t off, size_t len, unsigned seed,
		   const unsigned char *expect)
{
	unsigned char *got = malloc(len), *want = malloc(len);
	int ok;

	if (expect)
		memcpy(want, expect, len);
	else
		testfs_fill(want, off, len, seed);
	ok = cache_pread(f, got, len, off) == (ssize_t)len &&
	     !memcmp(got, want, len);
	free(got);
	free(want);
	return ok;
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
		CHECK(matches(f[i], 0, NPAGES * PG, 1, NULL));
	dedup_get_stats(d, &ds);
	cache_get_stats(c, &cs);
	CHECK_EQ(ds.reflink_merges, 7 * NPAGES);
	CHECK_EQ(ds.hashes_computed, NPAGES);
	CHECK_EQ(cs.backing_read_bytes, NPAGES * PG);
	CHECK_EQ(ds.pages_sharing, 7 * NPAGES);
	CHECK(cs.cache_bytes <= (NPAGES + 8) * PG);
	printf("ok reflink_clones_share_without_io\n");

	/* a write to one clone is seen there only */
	testfs_fill(model, 0, NPAGES * PG, 1);
	memset(model + 10 * PG + 5, 0x5A, 3 * PG);
	CHECK_EQ(cache_write(f[3], model + 10 * PG + 5, 3 * PG, 10 * PG + 5,
			     false, NULL), 3 * PG);
	CHECK_EQ(cache_fsync(f[3], false), 0);
	CHECK(matches(f[3], 0, NPAGES * PG, 0, model));
	for (int i = 0; i < 8; i++)
		if (i != 3)
			CHECK(matches(f[i], 0, NPAGES * PG, 1, NULL));
	printf("ok reflink_write_stays_private\n");

	/* punch a hole through the cache in clone 5 */
	CHECK_EQ(cache_fallocate(f[5], FALLOC_FL_PUNCH_HOLE |
				 FALLOC_FL_KEEP_SIZE, 100 * PG, 50 * PG), 0);
	testfs_fill(model, 0, NPAGES * PG, 1);
	memset(model + 100 * PG, 0, 50 * PG);
	CHECK(matches(f[5], 0, NPAGES * PG, 0, model));
	CHECK(matches(f[6], 0, NPAGES * PG, 1, NULL));
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
	CHECK(matches(f[7], 0, NPAGES * PG, 2, NULL));
	/* and a fresh clone of the changed file reads right too */
	clone_file("c7", "c8");
	struct cfile *g = open_file(c, "c8");
	CHECK(matches(g, 0, NPAGES * PG, 2, NULL));
	CHECK(matches(f[0], 0, NPAGES * PG, 1, NULL));
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
		uint64_t before = ds.zero_pages;
		memset(model, 0, 64 * PG);
		CHECK(matches(g, 0, 64 * PG, 0, model));
		dedup_get_stats(d, &ds);
		CHECK_EQ(ds.zero_pages, before + 64);
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
		CHECK(matches(f[0], 0, NPAGES * PG, 1, NULL));
		dedup_get_stats(d, &ds);
		cache_get_stats(c, &cs);
		uint64_t sharing = ds.pages_sharing, reads = cs.backing_read_bytes;
		CHECK_EQ(cache_clone_range(f[0], 0, g, 0, NPAGES * PG),
			 NPAGES * PG);
		CHECK_EQ(cfile_size(g), NPAGES * PG);
		CHECK(matches(g, 0, NPAGES * PG, 1, NULL));
		dedup_get_stats(d, &ds);
		cache_get_stats(c, &cs);
		CHECK_EQ(ds.pages_sharing, sharing + NPAGES);
		CHECK_EQ(cs.backing_read_bytes, reads);
		/* unaligned offsets are refused: the caller copies instead */
		CHECK_EQ(cache_clone_range(f[0], 100, g, 0, PG), -EINVAL);
		/* and the clone is independent */
		CHECK_EQ(cache_write(g, "W", 1, 0, false, NULL), 1);
		CHECK(matches(f[0], 0, NPAGES * PG, 1, NULL));
		cfile_put(g);
		printf("ok clone_through_cache_shares_frames\n");
	}

	for (int i = 0; i < 8; i++)
		cfile_put(f[i]);
	dedup_destroy(d);
	cache_destroy(c);
	free(model);
	return CHECK_DONE();
}
