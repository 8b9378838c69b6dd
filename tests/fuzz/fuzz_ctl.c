/*
 * fuzz_ctl: arbitrary values written to the control attributes of a mount
 * (samepage.set, samepage.scan) must be refused or applied, never crash,
 * and what was applied must read back through dedup_format_knobs().
 *
 * It runs the front end's own decoding (fs/ctl_parse.c, which knows no
 * FUSE) on one cache and one dedup object (no store), made once; the knobs
 * are put back to their defaults after every input.
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
#include "ctl_parse.h"
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
	v = ctl_value((const char *)data + 1, size - 1);
	if (!v)
		abort();
	if (data[0] & 1) {
		/* samepage.scan */
		ret = ctl_apply_scan(fuzz_dedup, v);
		FUZZ_CHECK(ret == 0 || ret == -EINVAL);
		FUZZ_CHECK(ret == 0 || (strcmp(v, "start") && strcmp(v, "wait")));
		free(v);
		return 0;
	}

	ret = ctl_apply_set(fuzz_cache, fuzz_dedup, v, &key, &val);
	FUZZ_CHECK(ret <= 0);
	n = dedup_format_knobs(fuzz_dedup, knobs, sizeof(knobs));
	FUZZ_CHECK(n > 0 && (size_t)n < sizeof(knobs));
	if (ret == 0 && strcmp(key, "cache_size") && strncmp(key, "fail_", 5) &&
	    strncmp(key, "pause_", 6)) {
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
