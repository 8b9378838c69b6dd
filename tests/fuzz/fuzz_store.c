/*
 * fuzz_store: a state directory holding arbitrary bytes as data.mdb must
 * never crash the daemon. Each input becomes data.mdb in a private
 * directory; the store is opened (without rebuild, then read-only), its
 * statistics read, a few records looked up and one update committed.
 * Errors are fine; crashes, hangs and sanitizer reports are not.
 *
 * Build and run with libFuzzer (clang), seeded with real stores:
 *   cc="-g -O1 -D_GNU_SOURCE -I dedup dedup/store*.c -llmdb -lcrypto -lpthread"
 *   clang $cc -DFUZZ_STORE_MAIN tests/fuzz/fuzz_store.c -o fuzz_store_replay
 *   ./fuzz_store_replay --make-seed corpus
 *   clang $cc -fsanitize=fuzzer,address tests/fuzz/fuzz_store.c -o fuzz_store
 *   ./fuzz_store -max_total_time=10 corpus
 * With -DFUZZ_STORE_MAIN (any compiler, no libFuzzer) the program instead
 * replays the files given as arguments, or writes the seeds.
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char fuzz_dir[256];

static void fuzz_path(char *buf, const char *name)
{
	snprintf(buf, PATH_MAX, "%s/%s", fuzz_dir, name);
}

static void fuzz_cleanup(void)
{
	char path[PATH_MAX];

	fuzz_path(path, "data.mdb");
	unlink(path);
	fuzz_path(path, "lock.mdb");
	unlink(path);
	rmdir(fuzz_dir);
}

static int fuzz_setup(void)
{
	const char *tmp = getenv("TMPDIR");

	if (fuzz_dir[0])
		return 0;
	snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/sp-fuzz-store-XXXXXX",
		 tmp ? tmp : "/tmp");
	if (!mkdtemp(fuzz_dir)) {
		perror("mkdtemp");
		abort();
	}
	atexit(fuzz_cleanup);
	return 0;
}

static bool fuzz_exists(void *arg, uint64_t dev, uint64_t ino)
{
	(void)arg;
	(void)dev;
	return ino & 1;
}

/* What the daemon and samepagectl would do with an opened store. */
static void fuzz_use(struct store *s, bool write)
{
	struct store_ident id = { 42, 1, 4096, 1, 1 };
	struct store_ident ref = { 42, 0, 4096, 1, 1 };
	struct store_stats st;
	struct store_rec recs[8];
	struct store_group groups[8];
	uint8_t sha[32] = { 3 };
	unsigned ng;
	uint64_t fid;

	store_get_stats(s, &st);
	for (uint64_t ino = 0; ino < 4; ino++) {
		id.ino = ino;
		ng = 8;
		if (!store_file_match(s, &id, &fid))
			store_get_recs(s, fid, 0, 8, recs, groups, &ng);
	}
	for (uint64_t f = 0; f < 4; f++) {
		ng = 8;
		store_get_recs(s, f, 0, 8, recs, groups, &ng);
	}
	ng = 2;
	store_get_recs(s, UINT64_MAX, UINT64_MAX - 3, 8, recs, groups, &ng);
	if (!write)
		return;
	store_put_page(s, &id, 3, sha, NULL, 0);
	store_put_page(s, &id, 4, sha, &ref, 0);
	store_put_page(s, &id, 5, NULL, NULL, 0);
	store_file_changed(s, id.dev, 2, &id, 0, UINT64_MAX);
	store_forget_file(s, id.dev, 3);
	store_prune_missing(s, fuzz_exists, NULL);
	store_sync(s);
	store_get_stats(s, &st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[PATH_MAX];
	struct store *s;
	int fd;

	fuzz_setup();
	fuzz_path(path, "lock.mdb");
	unlink(path);
	fuzz_path(path, "data.mdb");
	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		abort();
	if (size && write(fd, data, size) != (ssize_t)size)
		abort();
	close(fd);

	if (!store_open_readonly(fuzz_dir, &s)) {
		fuzz_use(s, false);
		store_close(s);
	}
	if (!store_open(fuzz_dir, 8u << 20, false, &s)) {
		fuzz_use(s, true);
		store_close(s);
	}
	return 0;
}

#ifdef FUZZ_STORE_MAIN
/* Seeds: real stores, so that mutations start from valid LMDB pages. */
static int make_seeds(const char *out)
{
	static const unsigned sizes[] = { 0, 1, 40, 600, 3000 };
	char src[PATH_MAX], dst[PATH_MAX], cmd[3 * PATH_MAX];
	struct store *s;

	fuzz_setup();
	mkdir(out, 0755);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		fuzz_path(src, "data.mdb");
		unlink(src);
		fuzz_path(src, "lock.mdb");
		unlink(src);
		if (store_open(fuzz_dir, 8u << 20, false, &s))
			return 1;
		for (unsigned p = 0; p < sizes[i]; p++) {
			struct store_ident id = { 42, p % 5, 1u << 20, 1, 1 };
			struct store_ident ref = { 42, 0, 1u << 20, 1, 1 };
			uint8_t sha[32] = { (uint8_t)p, (uint8_t)(p >> 8) };

			/* Own digests (runs with whole and open groups),
			 * copies (recipes into file 0's run), zeros. */
			if (p % 5 == 0 || p % 11 == 3)
				store_put_page(s, &id, p, sha, NULL, 0);
			else if (p % 13 == 1)
				store_put_page(s, &id, p, NULL, NULL, 0);
			else
				store_put_page(s, &id, p, sha, &ref,
					       p - p % 5);
		}
		if (sizes[i] > 100)
			store_forget_file(s, 42, 4);  /* a free list */
		store_sync(s);
		store_close(s);
		fuzz_path(src, "data.mdb");
		snprintf(dst, sizeof(dst), "%s/seed-%zu", out, i);
		snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", src, dst);
		if (system(cmd))
			return 1;
	}
	return 0;
}

static int replay(const char *path)
{
	struct stat st;
	uint8_t *buf;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd < 0 || fstat(fd, &st)) {
		perror(path);
		return 1;
	}
	buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf || read(fd, buf, st.st_size) != st.st_size) {
		perror(path);
		return 1;
	}
	close(fd);
	LLVMFuzzerTestOneInput(buf, (size_t)st.st_size);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	int ret = 0;

	if (argc == 3 && !strcmp(argv[1], "--make-seed"))
		return make_seeds(argv[2]);
	for (int i = 1; i < argc; i++)
		ret |= replay(argv[i]);
	return ret;
}
#endif
