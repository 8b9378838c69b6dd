/*
 * fuzz_opts: any mount option string must be parsed and checked without a
 * crash, a leak or a sanitizer report, and what opts_check() accepts must
 * satisfy the invariants opts.h promises.
 *
 * The first input byte picks how the rest becomes a command line:
 *   0  one "-o REST" before BACKING MNT (the interactive order)
 *   1  REST split on ',' into one "-o" per option
 *   2  BACKING MNT -o REST (the order mount.fuse3 uses)
 *   3  REST split on '\n' into raw arguments after "samepagefs"
 *      (BACKING MNT appended), so -f, -d, --help and friends are reached.
 * BACKING and MNT are two empty directories made once; nothing is ever
 * mounted or created by the code under test (it only stats and resolves).
 *
 * opts_parse_size() is checked against a reference parser on the whole
 * input and on every "key=value" value.
 *
 * opts_check_values() is static in fs/opts.c, so the values are checked
 * through opts_check(), which also resolves the two directories.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "opts.h"

#define FUZZ_MAX_ARGS 64
#define FUZZ_MAX_LEN  4096

static char fuzz_root[PATH_MAX], fuzz_backing[PATH_MAX], fuzz_mnt[PATH_MAX];

static void fuzz_rmdirs(void)
{
	rmdir(fuzz_backing);
	rmdir(fuzz_mnt);
	rmdir(fuzz_root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *tmp = getenv("TMPDIR");

	(void)argc;
	(void)argv;
	snprintf(fuzz_root, sizeof(fuzz_root), "%s/sp-fuzz-opts-XXXXXX",
		 tmp ? tmp : "/tmp");
	if (!mkdtemp(fuzz_root))
		abort();
	snprintf(fuzz_backing, sizeof(fuzz_backing), "%s/backing", fuzz_root);
	snprintf(fuzz_mnt, sizeof(fuzz_mnt), "%s/mnt", fuzz_root);
	if (mkdir(fuzz_backing, 0700) || mkdir(fuzz_mnt, 0700))
		abort();
	atexit(fuzz_rmdirs);
	return 0;
}

#define FUZZ_CHECK(cond)                                                   \
	do {                                                               \
		if (!(cond)) {                                             \
			fprintf(stderr, "fuzz_opts: %s:%d: %s\n", __FILE__,\
				__LINE__, #cond);                          \
			abort();                                           \
		}                                                          \
	} while (0)

/* What opts.h documents: digits, then an optional K/M/G/T (either case)
 * and, after a unit only, "B" or "iB"; the value must fit in 64 bits. */
static int ref_parse_size(const char *s, uint64_t *out)
{
	unsigned __int128 v = 0;
	unsigned shift = 0;
	const char *p = s;

	if (*p < '0' || *p > '9')
		return -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (unsigned)(*p - '0');
		if (v > UINT64_MAX)
			v = (unsigned __int128)UINT64_MAX + 1; /* saturate */
	}
	switch (*p) {
	case 'k': case 'K': shift = 10; p++; break;
	case 'm': case 'M': shift = 20; p++; break;
	case 'g': case 'G': shift = 30; p++; break;
	case 't': case 'T': shift = 40; p++; break;
	}
	if (shift && (!strcmp(p, "B") || !strcmp(p, "iB")))
		p += strlen(p);
	if (*p)
		return -EINVAL;
	if (v > UINT64_MAX || (v << shift) > UINT64_MAX)
		return -ERANGE;
	*out = (uint64_t)(v << shift);
	return 0;
}

static void check_size(const char *s)
{
	uint64_t got = 0, want = 0;
	int r = opts_parse_size(s, &got);
	int w = ref_parse_size(s, &want);

	/* Both refuse (the errno may differ: -EINVAL vs -ERANGE for "1x" past
	 * 64 bits is a matter of order), or both accept the same value. */
	FUZZ_CHECK((r == 0) == (w == 0));
	if (r == 0)
		FUZZ_CHECK(got == want);
}

static void check_values(const char *opt)
{
	const char *eq = strchr(opt, '=');

	if (eq)
		check_size(eq + 1);
}

/* The invariants of a struct opts that opts_check() accepted. */
static void check_accepted(const struct opts *o)
{
	bool defperm = false;

	FUZZ_CHECK(o->backing && o->backing[0] == '/');
	FUZZ_CHECK(o->mountpoint && o->mountpoint[0] == '/');
	FUZZ_CHECK(o->state_dir && o->state_dir[0] == '/');
	FUZZ_CHECK(o->cache_size >= (1u << 20));
	FUZZ_CHECK(o->writeback_ms <= 3600000u);
	FUZZ_CHECK(o->read_ahead_kb <= (1u << 20));
	FUZZ_CHECK(o->store_quota >= (1u << 20));
	FUZZ_CHECK(o->dedup_scope == OPTS_SCOPE_GLOBAL ||
		   o->dedup_scope == OPTS_SCOPE_UID ||
		   o->dedup_scope == OPTS_SCOPE_NONE);
	FUZZ_CHECK(!o->state_parent || o->state_name);
	FUZZ_CHECK(o->args.argc >= 1);
	for (int i = 0; i < o->args.argc; i++) {
		FUZZ_CHECK(o->args.argv[i]);
		if (!strcmp(o->args.argv[i], "-odefault_permissions"))
			defperm = true;
	}
	FUZZ_CHECK(defperm);
}

/* Check the size parser on every value of a ','-separated list. */
static void check_tokens(char *list)
{
	for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ","))
		check_values(tok);
}

/* Split buf (NUL-terminated, writable) on sep into argv from argc on,
 * each piece preceded by flag if there is one. */
static int split_into(char *buf, char sep, const char *flag, char **argv,
		      int argc)
{
	char *p = buf;

	while (argc < FUZZ_MAX_ARGS - 4) {
		char *next = strchr(p, sep);

		if (next)
			*next = '\0';
		if (flag)
			argv[argc++] = (char *)flag;
		argv[argc++] = p;
		check_values(p);
		if (!next)
			break;
		p = next + 1;
	}
	return argc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *argv[FUZZ_MAX_ARGS + 1];
	char *buf, *copy;
	struct opts o;
	unsigned mode;
	int argc = 0;

	if (size < 1 || size > FUZZ_MAX_LEN)
		return 0;
	mode = data[0] & 3;
	/* Arguments are C strings: the input ends at its first NUL. */
	buf = strndup((const char *)data + 1, size - 1);
	copy = strdup(buf);
	if (!buf || !copy)
		abort();
	check_size(buf);

	argv[argc++] = "samepagefs";
	switch (mode) {
	case 0:
		argv[argc++] = "-o";
		argv[argc++] = buf;
		argv[argc++] = fuzz_backing;
		argv[argc++] = fuzz_mnt;
		check_tokens(copy);
		break;
	case 1:
		argc = split_into(buf, ',', "-o", argv, argc);
		argv[argc++] = fuzz_backing;
		argv[argc++] = fuzz_mnt;
		break;
	case 2:
		argv[argc++] = fuzz_backing;
		argv[argc++] = fuzz_mnt;
		argv[argc++] = "-o";
		argv[argc++] = buf;
		check_tokens(copy);
		break;
	default:
		argc = split_into(buf, '\n', NULL, argv, argc);
		argv[argc++] = fuzz_backing;
		argv[argc++] = fuzz_mnt;
		break;
	}
	argv[argc] = NULL;

	if (opts_parse(argc, argv, &o) == 0 && !o.help && !o.version &&
	    opts_check(&o) == 0)
		check_accepted(&o);
	opts_free(&o);
	free(copy);
	free(buf);
	return 0;
}
