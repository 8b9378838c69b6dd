/*
 * ctl_parse: the values written to the mount root's control attributes,
 * decoded and applied to the cache and dedup objects.
 *
 *   samepage.set   "key=value": cache_size (a size, at least 1M), a
 *                  failpoint or pause point (fail_*, pause_*: builds with
 *                  -Dfailpoints=true), or a dedup knob (dedup_set_knob).
 *   samepage.scan  "start" or "wait": a full scan now.
 *
 * Knows no FUSE: fs/ctl.c checks who may write and calls this; the fuzzer
 * (tests/fuzz/fuzz_ctl.c) runs the same code. Functions return 0 or
 * -errno (-EINVAL for a value that means nothing).
 */
#ifndef SAMEPAGE_FS_CTL_PARSE_H
#define SAMEPAGE_FS_CTL_PARSE_H

#include <stddef.h>

struct cache;
struct dedup;

/* The value as a C string without trailing newlines or blanks (malloc'd,
 * NULL without memory). */
char *ctl_value(const char *value, size_t size);
/* Apply "key=value" in v (split in place; *key and *val point into it). */
int ctl_apply_set(struct cache *c, struct dedup *d, char *v,
		  const char **key, const char **val);
int ctl_apply_scan(struct dedup *d, const char *v);

#endif
