/*
 * fuzz_ctl: arbitrary values written to the control attributes of a mount
 * (samepage.set, samepage.scan) must be refused or applied, never crash,
 * and what was applied must read back through dedup_format_knobs().
 *
 * fs/ctl.c cannot be linked without the FUSE front end and its set path
 * (ctl_value, ctl_set_knob) is static, so fuzz_ctl_set() below repeats its
 * decoding step for step on top of the same library calls: the value is a
 * C string up to its first NUL, trailing newlines and blanks dropped, split
 * at the first '='; cache_size goes to opts_parse_size() and
 * cache_set_limit(), fail_* to cache_failpoint_set(), anything else to
 * dedup_set_knob(). One cache and one dedup object (no store) are made
 * once; the knobs are put back to their defaults after every input.
 *
 * The first input byte chooses: bit 0 set writes samepage.scan instead of
 * samepage.set; the other bits size the buffer dedup_format_knobs() gets,
 * to reach its -ERANGE path.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "dedup.h"
#include "opts.h"

#define FUZZ_MAX_LEN 4096

static struct cache *fuzz_cache;
static struct dedup *fuzz_dedup;
static struct dedup_config fuzz_defaults;
static const uint64_t fuzz_cache_size = 16u << 20;

#define FUZZ_CHECK(cond)                                                   \
	do {                                                               \
		if (!(cond)) {                                             \
			fprintf(stderr, "fuzz_ctl: %s:%d: %s\n", __FILE__, \
				__LINE__, #cond);                          \
			abort();                                           \
		}                                                          \
	} while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct cache_config cc = {
		.size_bytes = fuzz_cache_size,
		.writeback_ms = 5000,
	};

	(void)argc;
	(void)argv;
	if (cache_create(&cc, &fuzz_cache))
		abort();
	dedup_config_defaults(&fuzz_defaults);
	fuzz_defaults.state_dir = NULL;
	if (dedup_create(fuzz_cache, &fuzz_defaults, &fuzz_dedup))
		abort();
	return 0;
}

/* ctl_value(): the value as a C string without trailing newline/blanks. */
static char *fuzz_value(const uint8_t *data, size_t size)
{
	char *v = strndup((const char *)data, size);
	size_t n;

	if (!v)
		abort();
	n = strlen(v);
	while (n && (v[n - 1] == '\n' || v[n - 1] == ' ' || v[n - 1] == '\t'))
		v[--n] = '\0';
	return v;
}

/* ctl_set_knob(). */
static int fuzz_ctl_set(char *v, const char **key_out, const char **val_out)
{
	char *eq = strchr(v, '=');
	const char *key = v, *val;
	uint64_t bytes;
	int ret;

	if (!eq || eq == v)
		return -EINVAL;
	*eq = '\0';
	val = eq + 1;
	*key_out = key;
	*val_out = val;
	if (!strcmp(key, "cache_size")) {
		ret = opts_parse_size(val, &bytes);
		if (ret || bytes < (1u << 20))
			return -EINVAL;
		return cache_set_limit(fuzz_cache, bytes);
	}
	if (!strncmp(key, "fail_", 5))
		return cache_failpoint_set(key, val);
	return dedup_set_knob(fuzz_dedup, key, val);
}

/* The "key value" line of the knobs text, as a number. */
static bool knob_value(const char *text, const char *key, unsigned long *out)
{
	size_t kl = strlen(key);

	for (const char *line = text; *line;) {
		const char *nl = strchr(line, '\n');

		if (!strncmp(line, key, kl) && line[kl] == ' ') {
			*out = strtoul(line + kl + 1, NULL, 10);
			return true;
		}
		if (!nl)
			break;
		line = nl + 1;
	}
	return false;
}

static void check_format(size_t room)
{
	/* Exactly room bytes, so that ASan sees any write past them. */
	char *buf = malloc(room ? room : 1);
	int n;

	if (!buf)
		abort();
	n = dedup_format_knobs(fuzz_dedup, buf, room);
	FUZZ_CHECK(n == -ERANGE || (n >= 0 && (size_t)n < room));
	if (n >= 0)
		FUZZ_CHECK(strlen(buf) == (size_t)n);
	free(buf);
}

static void restore_defaults(void)
{
	char v[32];

	snprintf(v, sizeof(v), "%u", fuzz_defaults.run ? 1 : 0);
	FUZZ_CHECK(!dedup_set_knob(fuzz_dedup, "run", v));
	snprintf(v, sizeof(v), "%u", fuzz_defaults.pages_to_scan);
	FUZZ_CHECK(!dedup_set_knob(fuzz_dedup, "pages_to_scan", v));
	snprintf(v, sizeof(v), "%u", fuzz_defaults.sleep_millisecs);
	FUZZ_CHECK(!dedup_set_knob(fuzz_dedup, "sleep_millisecs", v));
	snprintf(v, sizeof(v), "%u", fuzz_defaults.max_page_sharing);
	FUZZ_CHECK(!dedup_set_knob(fuzz_dedup, "max_page_sharing", v));
	snprintf(v, sizeof(v), "%u", fuzz_defaults.use_zero_pages ? 1 : 0);
	FUZZ_CHECK(!dedup_set_knob(fuzz_dedup, "use_zero_pages", v));
	snprintf(v, sizeof(v), "%u", fuzz_defaults.smart_scan ? 1 : 0);
	FUZZ_CHECK(!dedup_set_knob(fuzz_dedup, "smart_scan", v));
	/* Failpoints are off unless the build has them (then -ENOTSUP). */
	cache_failpoint_set("fail_read", "0");
	cache_failpoint_set("fail_write", "0");
	FUZZ_CHECK(!cache_set_limit(fuzz_cache, fuzz_cache_size));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *key = NULL, *val = NULL;
	char knobs[4096];
	unsigned long shown;
	char *v;
	int ret, n;

	if (size < 1 || size > FUZZ_MAX_LEN)
		return 0;
	v = fuzz_value(data + 1, size - 1);
	if (data[0] & 1) {
		/* samepage.scan */
		if (!strcmp(v, "start"))
			FUZZ_CHECK(dedup_scan_now(fuzz_dedup, false) == 0);
		else if (!strcmp(v, "wait"))
			FUZZ_CHECK(dedup_scan_now(fuzz_dedup, true) == 0);
		free(v);
		return 0;
	}

	ret = fuzz_ctl_set(v, &key, &val);
	FUZZ_CHECK(ret <= 0);
	n = dedup_format_knobs(fuzz_dedup, knobs, sizeof(knobs));
	FUZZ_CHECK(n > 0 && (size_t)n < sizeof(knobs));
	if (ret == 0 && strcmp(key, "cache_size") && strncmp(key, "fail_", 5)) {
		/* A knob that was accepted is shown with the value given. */
		FUZZ_CHECK(knob_value(knobs, key, &shown));
		FUZZ_CHECK(shown == strtoul(val, NULL, 10));
	}
	if (ret == 0 && !strcmp(key, "cache_size")) {
		struct cache_stats st;
		uint64_t bytes = 0;

		FUZZ_CHECK(!opts_parse_size(val, &bytes));
		cache_get_stats(fuzz_cache, &st);
		FUZZ_CHECK(st.cache_limit_bytes == bytes);
	}
	check_format((size_t)(data[0] >> 1));
	restore_defaults();
	free(v);
	return 0;
}
