/* ctl_parse: control values decoded and applied; see ctl_parse.h. */
#include "ctl_parse.h"

#include "cache.h"
#include "dedup.h"
#include "opts.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

char *ctl_value(const char *value, size_t size)
{
	char *v = strndup(value, size);
	size_t n;

	if (!v)
		return NULL;
	n = strlen(v);
	while (n && (v[n - 1] == '\n' || v[n - 1] == ' ' || v[n - 1] == '\t'))
		v[--n] = '\0';
	return v;
}

int ctl_apply_set(struct cache *c, struct dedup *d, char *v,
		  const char **key, const char **val)
{
	char *eq = strchr(v, '=');
	uint64_t bytes;
	int ret;

	if (!eq || eq == v)
		return -EINVAL;
	*eq = '\0';
	*key = v;
	*val = eq + 1;
	if (!strcmp(*key, "cache_size")) {
		ret = opts_parse_size(*val, &bytes);
		if (ret || bytes < (1u << 20))
			return -EINVAL;
		return cache_set_limit(c, bytes);
	}
	/* Fault injection and pause points, in builds with
	 * -Dfailpoints=true only. */
	if (!strncmp(*key, "fail_", 5) || !strncmp(*key, "pause_", 6))
		return cache_failpoint_set(*key, *val);
	if (!d)
		return -EINVAL;
	return dedup_set_knob(d, *key, *val);
}

int ctl_apply_scan(struct dedup *d, const char *v)
{
	if (!d)
		return -EINVAL;
	if (!strcmp(v, "start"))
		return dedup_scan_now(d, false);
	if (!strcmp(v, "wait"))
		return dedup_scan_now(d, true);
	return -EINVAL;
}
