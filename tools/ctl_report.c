/*
 * ctl_report: the histogram, per-file, settings and watch views. See
 * ctl_report.h.
 */
#include "ctl_report.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---- histogram --------------------------------------------------------- */

int ctl_parse_histogram(const char *text, struct ctl_hist_row **rows,
			size_t *n, unsigned *bad_line)
{
	struct ctl_hist_row *r;
	unsigned lineno = 0;
	char *copy, *p, *line;
	int ret = 0;

	*rows = NULL;
	*n = 0;
	copy = strdup(text);
	if (!copy)
		return -ENOMEM;
	r = calloc(ctl_count_lines(text), sizeof(*r));
	if (!r) {
		ret = -ENOMEM;
		goto out_free_copy;
	}
	p = copy;
	while ((line = ctl_next_line(&p))) {
		char *f[4];
		uint64_t v[4];
		int k;

		lineno++;
		if (!*line)
			continue;
		f[0] = line;
		for (k = 1; k < 4; k++)
			f[k] = ctl_split_word(f[k - 1]);
		if (*ctl_split_word(f[3]))
			goto out_bad;
		for (k = 0; k < 4; k++)
			if (!ctl_parse_u64(f[k], &v[k]))
				goto out_bad;
		if (v[0] > v[1])
			goto out_bad;
		r[*n] = (struct ctl_hist_row){ v[0], v[1], v[2], v[3] };
		(*n)++;
	}
	*rows = r;
	goto out_free_copy;

out_bad:
	if (bad_line)
		*bad_line = lineno;
	free(r);
	*n = 0;
	ret = -EINVAL;
out_free_copy:
	free(copy);
	return ret;
}

int ctl_fmt_histogram(FILE *f, const struct ctl_hist_row *rows, size_t n)
{
	uint64_t frames = 0, mappings = 0;
	char range[48], ref[32], res[32];
	size_t i;

	/* Like zdb -DD: one line per non-empty bucket, then the totals. */
	fprintf(f, "%13s %12s %12s %12s\n", "refcnt", "frames", "referenced",
		"resident");
	fprintf(f, "%13s %12s %12s %12s\n", "-------------", "------------",
		"------------", "------------");
	for (i = 0; i < n; i++) {
		const struct ctl_hist_row *r = &rows[i];

		frames += r->frames;
		mappings += r->mappings;
		if (!r->frames)
			continue;
		if (r->lo == r->hi)
			snprintf(range, sizeof(range), "%" PRIu64, r->lo);
		else
			snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64,
				 r->lo, r->hi);
		ctl_fmt_bytes(ref, sizeof(ref),
			      (double)r->mappings * CTL_PAGE_SIZE);
		ctl_fmt_bytes(res, sizeof(res), (double)r->frames * CTL_PAGE_SIZE);
		fprintf(f, "%13s %12" PRIu64 " %12s %12s\n", range, r->frames,
			ref, res);
	}
	ctl_fmt_bytes(ref, sizeof(ref), (double)mappings * CTL_PAGE_SIZE);
	ctl_fmt_bytes(res, sizeof(res), (double)frames * CTL_PAGE_SIZE);
	fprintf(f, "%13s %12" PRIu64 " %12s %12s\n", "total", frames, ref, res);
	if (frames)
		fprintf(f, "\ndedup ratio %.2fx (referenced / resident)\n",
			(double)mappings / (double)frames);
	return ferror(f) ? -EIO : 0;
}

/* ---- file -------------------------------------------------------------- */

static int sharer_cmp(const void *a, const void *b)
{
	const struct ctl_sharer *x = a, *y = b;

	if (x->pages != y->pages)
		return x->pages > y->pages ? -1 : 1;
	return strcmp(x->path, y->path);
}

int ctl_parse_file(const char *text, struct ctl_file_report *r,
		   unsigned *bad_line)
{
	static const char *const keys[] = {
		"resident_pages", "shared_pages", "zero_pages",
		"reflink_pages", "dirty_pages", "sharing_found",
	};
	uint64_t *const slots[] = {
		&r->resident_pages, &r->shared_pages, &r->zero_pages,
		&r->reflink_pages, &r->dirty_pages, &r->sharing_found,
	};
	unsigned lineno = 0;
	char *p, *line;
	size_t k;

	memset(r, 0, sizeof(*r));
	r->text = strdup(text);
	if (!r->text)
		return -ENOMEM;
	r->sharers = calloc(ctl_count_lines(text), sizeof(*r->sharers));
	if (!r->sharers) {
		ctl_file_report_free(r);
		return -ENOMEM;
	}
	p = r->text;
	while ((line = ctl_next_line(&p))) {
		char *rest;

		lineno++;
		if (!*line)
			continue;
		rest = ctl_split_word(line);
		if (!strcmp(line, "sharer")) {
			struct ctl_sharer *s = &r->sharers[r->nsharers];
			char *num = rest;

			/* The path is the rest of the line: it may hold
			 * blanks. */
			s->path = ctl_split_word(num);
			if (!*s->path || !ctl_parse_u64(num, &s->pages))
				goto out_bad;
			r->nsharers++;
			continue;
		}
		if (!strcmp(line, "cache_mode")) {
			if (!*rest || strlen(rest) >= sizeof(r->mode))
				goto out_bad;
			strcpy(r->mode, rest);
			continue;
		}
		for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
			if (strcmp(line, keys[k]))
				continue;
			if (!ctl_parse_u64(rest, slots[k]))
				goto out_bad;
			break;
		}
		/* Other keys are from a newer daemon: ignore them. */
	}
	qsort(r->sharers, r->nsharers, sizeof(*r->sharers), sharer_cmp);
	return 0;

out_bad:
	if (bad_line)
		*bad_line = lineno;
	ctl_file_report_free(r);
	return -EINVAL;
}

void ctl_file_report_free(struct ctl_file_report *r)
{
	free(r->sharers);
	free(r->text);
	memset(r, 0, sizeof(*r));
}

static void file_row(FILE *f, const char *label, uint64_t pages,
		     uint64_t resident)
{
	char b[32];

	ctl_fmt_bytes(b, sizeof(b), (double)pages * CTL_PAGE_SIZE);
	if (resident && pages)
		fprintf(f, "  %-10s %12" PRIu64 " pages %11s  %5.1f %%\n",
			label, pages, b, 100.0 * (double)pages / (double)resident);
	else
		fprintf(f, "  %-10s %12" PRIu64 " pages %11s\n", label, pages,
			b);
}

int ctl_fmt_file(FILE *f, const char *path, const struct ctl_file_report *r)
{
	char b[32];
	size_t i;

	fprintf(f, "%s\n", path);
	file_row(f, "resident", r->resident_pages, 0);
	file_row(f, "shared", r->shared_pages, r->resident_pages);
	file_row(f, "zero", r->zero_pages, r->resident_pages);
	file_row(f, "reflink", r->reflink_pages, r->resident_pages);
	file_row(f, "dirty", r->dirty_pages, r->resident_pages);
	if (!strcmp(r->mode, "kernel"))
		fprintf(f, "  cached by the kernel (cache_mode kernel)%s\n",
			r->sharing_found ? "; its reads found its pages in"
					   " other files"
					 : "");
	else if (!strcmp(r->mode, "shared"))
		fprintf(f, "  cached by samepage, merged (cache_mode shared)\n");
	if (!r->nsharers) {
		fprintf(f, "  shares no cached page with other files\n");
		return ferror(f) ? -EIO : 0;
	}
	fprintf(f, "  shares pages with %zu other file%s:\n", r->nsharers,
		r->nsharers == 1 ? "" : "s");
	for (i = 0; i < r->nsharers; i++) {
		ctl_fmt_bytes(b, sizeof(b),
			      (double)r->sharers[i].pages * CTL_PAGE_SIZE);
		fprintf(f, "  %23" PRIu64 " pages %11s  %s\n",
			r->sharers[i].pages, b, r->sharers[i].path);
	}
	return ferror(f) ? -EIO : 0;
}

/* ---- knobs ------------------------------------------------------------- */

int ctl_fmt_knobs(FILE *f, const struct ctl_kvlist *knobs)
{
	size_t i, w = 0;
	char b[32];

	for (i = 0; i < knobs->n; i++) {
		size_t nl = strlen(knobs->v[i].name);

		w = nl > w ? nl : w;
	}
	for (i = 0; i < knobs->n; i++) {
		const struct ctl_kv *kv = &knobs->v[i];

		if (kv->is_int && !strcmp(kv->name, "cache_size")) {
			ctl_fmt_bytes(b, sizeof(b), (double)kv->value);
			fprintf(f, "%-*s %s  (%s)\n", (int)w, kv->name, kv->str,
				b);
		} else {
			fprintf(f, "%-*s %s\n", (int)w, kv->name, kv->str);
		}
	}
	return ferror(f) ? -EIO : 0;
}

/* ---- watch ------------------------------------------------------------- */

/* Growth of a monotonic counter per second; a restarted daemon (counter
 * went down) counts as no growth rather than a negative rate. */
static double rate(const struct ctl_kvlist *prev, const struct ctl_kvlist *cur,
		   const char *name, double dt)
{
	int64_t a, b;

	if (dt <= 0 || !ctl_kv_int(prev, name, &a) || !ctl_kv_int(cur, name, &b) ||
	    b < a)
		return 0;
	return (double)(b - a) / dt;
}

void ctl_compute_rates(const struct ctl_kvlist *prev,
		       const struct ctl_kvlist *cur, double dt,
		       struct ctl_rates *r)
{
	int64_t sharing = 0, zero = 0;

	memset(r, 0, sizeof(*r));
	r->hits = rate(prev, cur, "hits", dt);
	r->misses = rate(prev, cur, "misses", dt);
	r->reads = r->hits + r->misses;
	r->read_mib = rate(prev, cur, "backing_read_bytes", dt) / (1 << 20);
	r->write_mib = rate(prev, cur, "backing_write_bytes", dt) / (1 << 20);
	r->merges = rate(prev, cur, "content_merges", dt) +
		    rate(prev, cur, "store_merges", dt) +
		    rate(prev, cur, "reflink_merges", dt);
	r->cow_breaks = rate(prev, cur, "cow_breaks", dt);
	ctl_kv_int(cur, "full_scans", &r->full_scans);
	ctl_kv_int(cur, "cache_bytes", &r->used_bytes);
	ctl_kv_int(cur, "pages_sharing", &sharing);
	ctl_kv_int(cur, "zero_pages", &zero);
	r->saved_bytes = (sharing + zero) * (int64_t)CTL_PAGE_SIZE;
}

static const char *fmt_rate(char *buf, size_t len, double v)
{
	snprintf(buf, len, v >= 100 ? "%.0f" : "%.1f", v);
	return buf;
}

int ctl_fmt_watch_header(FILE *f)
{
	fprintf(f, "%-8s %9s %9s %9s %8s %8s %9s %8s %6s %10s %10s\n", "time",
		"reads/s", "hits/s", "misses/s", "rdMiB/s", "wrMiB/s",
		"merges/s", "cow/s", "scans", "used", "saved");
	return ferror(f) ? -EIO : 0;
}

int ctl_fmt_watch_row(FILE *f, const char *stamp, const struct ctl_rates *r)
{
	char a[6][24], used[32], saved[32];

	ctl_fmt_bytes(used, sizeof(used), (double)r->used_bytes);
	ctl_fmt_bytes(saved, sizeof(saved), (double)r->saved_bytes);
	fprintf(f, "%-8s %9s %9s %9s %8.1f %8.1f %9s %8s %6" PRId64
		" %10s %10s\n", stamp,
		fmt_rate(a[0], sizeof(a[0]), r->reads),
		fmt_rate(a[1], sizeof(a[1]), r->hits),
		fmt_rate(a[2], sizeof(a[2]), r->misses), r->read_mib,
		r->write_mib, fmt_rate(a[3], sizeof(a[3]), r->merges),
		fmt_rate(a[4], sizeof(a[4]), r->cow_breaks), r->full_scans,
		used, saved);
	return ferror(f) ? -EIO : 0;
}

int ctl_fmt_watch_screen(FILE *f, const char *mount, double interval,
			 const char *stamp, const struct ctl_rates *r)
{
	char v[32];

	fprintf(f, "samepage on %s, every %g s, %s  (Ctrl-C to quit)\n\n",
		mount, interval, stamp);
	fprintf(f, "  %-14s %12s /s\n", "reads", fmt_rate(v, sizeof(v), r->reads));
	fprintf(f, "  %-14s %12s /s\n", "hits", fmt_rate(v, sizeof(v), r->hits));
	fprintf(f, "  %-14s %12s /s\n", "misses",
		fmt_rate(v, sizeof(v), r->misses));
	fprintf(f, "  %-14s %12.1f MiB/s\n", "backing read", r->read_mib);
	fprintf(f, "  %-14s %12.1f MiB/s\n", "backing write", r->write_mib);
	fprintf(f, "  %-14s %12s /s\n", "merges",
		fmt_rate(v, sizeof(v), r->merges));
	fprintf(f, "  %-14s %12s /s\n", "COW breaks",
		fmt_rate(v, sizeof(v), r->cow_breaks));
	fprintf(f, "  %-14s %12" PRId64 "\n", "full scans", r->full_scans);
	ctl_fmt_bytes(v, sizeof(v), (double)r->used_bytes);
	fprintf(f, "  %-14s %12s\n", "memory used", v);
	ctl_fmt_bytes(v, sizeof(v), (double)r->saved_bytes);
	fprintf(f, "  %-14s %12s\n", "memory saved", v);
	return ferror(f) ? -EIO : 0;
}
