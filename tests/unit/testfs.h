/*
 * testfs: helpers for unit tests that need real backing files: a private
 * temporary directory, files with known content, and a cache over them.
 */
#ifndef SAMEPAGE_TESTFS_H
#define SAMEPAGE_TESTFS_H

#include "check.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char testfs_dir[256];

static inline void testfs_cleanup(void)
{
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", testfs_dir);
	if (system(cmd))
		fprintf(stderr, "could not remove %s\n", testfs_dir);
}

static inline const char *testfs_init(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(testfs_dir, sizeof(testfs_dir), "%s/sp-unit-XXXXXX",
		 tmp ? tmp : "/var/tmp");
	REQUIRE(mkdtemp(testfs_dir));
	atexit(testfs_cleanup);
	return testfs_dir;
}

/* Deterministic content: byte i of a file made with seed s. */
static inline unsigned char testfs_byte(uint64_t i, unsigned s)
{
	uint64_t x = (i / 8) * 0x9E3779B97F4A7C15ull + s * 0xBF58476D1CE4E5B9ull;

	x ^= x >> 31;
	return (unsigned char)(x >> (8 * (i % 8)));
}

static inline void testfs_fill(unsigned char *buf, uint64_t off, size_t len,
			unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = testfs_byte(off + i, seed);
}

/* Create name with len bytes of seed content (seed 0: zeros). */
static inline void testfs_make(const char *name, uint64_t len, unsigned seed)
{
	char path[512];
	unsigned char buf[65536];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", testfs_dir, name);
	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
	REQUIRE(fd >= 0);
	for (uint64_t off = 0; off < len; off += sizeof(buf)) {
		size_t n = len - off < sizeof(buf) ? len - off : sizeof(buf);

		if (seed)
			testfs_fill(buf, off, n, seed);
		else
			memset(buf, 0, n);
		REQUIRE(pwrite(fd, buf, n, (off_t)off) == (ssize_t)n);
	}
	close(fd);
}

static inline int testfs_open_path(const char *name)
{
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", testfs_dir, name);
	fd = open(path, O_PATH);
	REQUIRE(fd >= 0);
	return fd;
}

/* Read the backing file directly (not through the cache). */
static inline ssize_t testfs_read_backing(const char *name, void *buf, size_t len,
				   uint64_t off)
{
	char path[512];
	ssize_t r;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", testfs_dir, name);
	fd = open(path, O_RDONLY);
	REQUIRE(fd >= 0);
	r = pread(fd, buf, len, (off_t)off);
	close(fd);
	return r;
}

#endif
