/*
 * ctl_format: protocol text in, views out. See ctl_format.h.
 */
#include "ctl_format.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---- parsing ----------------------------------------------------------- */

static bool parse_i64(const char *s, int64_t *v)
{
	char *end;
	long long x;

	if (!*s || isspace((unsigned char)*s))
		return false;
	errno = 0;
	x = strtoll(s, &end, 10);
	if (errno || *end)
		return false;
	*v = x;
	return true;
}

bool ctl_parse_u64(const char *s, uint64_t *v)
{
	char *end;
	unsigned long long x;

	if (!isdigit((unsigned char)*s))
		return false;
	errno = 0;
	x = strtoull(s, &end, 10);
	if (errno || *end)
		return false;
	*v = x;
	return true;
}

/* Cut the next line out of *p (in place); NULL at the end of the text. */
char *ctl_next_line(char **p)
{
	char *line = *p;
	char *eol;
	size_t n;

	if (!*line)
		return NULL;
	eol = strchr(line, '\n');
	if (eol) {
		*eol = '\0';
		*p = eol + 1;
	} else {
		*p = line + strlen(line);
	}
	n = strlen(line);
	while (n && isspace((unsigned char)line[n - 1]))
		line[--n] = '\0';
	while (isspace((unsigned char)*line))
		line++;
	return line;
}

/* Split "first rest" at the first run of blanks; rest may be empty. */
char *ctl_split_word(char *line)
{
	char *sp = line;

	while (*sp && !isspace((unsigned char)*sp))
		sp++;
	if (!*sp)
		return sp;
	*sp++ = '\0';
	while (isspace((unsigned char)*sp))
		sp++;
	return sp;
}

size_t ctl_count_lines(const char *text)
{
	size_t n = 1;

	for (; *text; text++)
		n += *text == '\n';
	return n;
}

int ctl_parse_kv(const char *text, bool require_int, struct ctl_kvlist *out,
		 unsigned *bad_line)
{
	unsigned lineno = 0;
	char *p, *line;

	memset(out, 0, sizeof(*out));
	out->text = strdup(text);
	if (!out->text)
		return -ENOMEM;
	out->v = calloc(ctl_count_lines(text), sizeof(*out->v));
	if (!out->v)
		goto out_nomem;
	p = out->text;
	while ((line = ctl_next_line(&p))) {
		struct ctl_kv *kv = &out->v[out->n];

		lineno++;
		if (!*line)
			continue;
		kv->name = line;
		kv->str = ctl_split_word(line);
		if (!*kv->str)
			goto out_bad;
		kv->is_int = parse_i64(kv->str, &kv->value);
		if (require_int && !kv->is_int)
			goto out_bad;
		out->n++;
	}
	return 0;

out_bad:
	if (bad_line)
		*bad_line = lineno;
	ctl_kvlist_free(out);
	return -EINVAL;
out_nomem:
	ctl_kvlist_free(out);
	return -ENOMEM;
}

void ctl_kvlist_free(struct ctl_kvlist *l)
{
	free(l->v);
	free(l->text);
	memset(l, 0, sizeof(*l));
}

const struct ctl_kv *ctl_kv_find(const struct ctl_kvlist *l, const char *name)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		if (!strcmp(l->v[i].name, name))
			return &l->v[i];
	return NULL;
}

bool ctl_kv_int(const struct ctl_kvlist *l, const char *name, int64_t *v)
{
	const struct ctl_kv *kv = ctl_kv_find(l, name);

	if (!kv || !kv->is_int)
		return false;
	*v = kv->value;
	return true;
}

/* ---- units ------------------------------------------------------------- */

void ctl_fmt_bytes(char *buf, size_t len, double bytes)
{
	static const char *const units[] = {
		"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB",
	};
	double a = bytes < 0 ? -bytes : bytes;
	unsigned u = 0;

	/* Step up while the one-decimal rounding would print 1024.0. */
	while (u + 1 < sizeof(units) / sizeof(units[0]) &&
	       (u == 0 ? a >= 1024 : a >= 1023.95)) {
		a /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%.0f B", bytes);
	else
		snprintf(buf, len, "%s%.1f %s", bytes < 0 ? "-" : "", a,
			 units[u]);
}

int ctl_parse_size(const char *s, uint64_t *out)
{
	uint64_t mult = 1;
	double d = 0;
	uint64_t i = 0;
	bool frac;
	char *end;

	if (!isdigit((unsigned char)*s) && *s != '.')
		return -EINVAL;
	/* Integers stay exact; a fraction ("1.5G") goes through double. */
	frac = strcspn(s, ".") < strspn(s, "0123456789.");
	errno = 0;
	if (frac)
		d = strtod(s, &end);
	else
		i = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (tolower((unsigned char)*end)) {
	case 'k': mult = 1ull << 10; end++; break;
	case 'm': mult = 1ull << 20; end++; break;
	case 'g': mult = 1ull << 30; end++; break;
	case 't': mult = 1ull << 40; end++; break;
	default: break;
	}
	if (mult > 1 && *end == 'i' && tolower((unsigned char)end[1]) == 'b')
		end += 2;
	else if (tolower((unsigned char)*end) == 'b')
		end++;
	if (*end)
		return -EINVAL;
	if (frac) {
		d *= (double)mult;
		if (d >= 18446744073709551615.0)
			return -EINVAL;
		*out = (uint64_t)(d + 0.5);
		return 0;
	}
	if (i > UINT64_MAX / mult)
		return -EINVAL;
	*out = i * mult;
	return 0;
}

/* ---- counters ---------------------------------------------------------- */

static const struct counter_doc {
	const char *name;
	bool        gauge;
	const char *help;
} counter_docs[] = {
	{ "cache_bytes", true, "Bytes of resident page frames." },
	{ "cache_limit_bytes", true, "Memory budget for page frames, in bytes." },
	{ "metadata_bytes", true,
	  "The daemon's anonymous memory beyond its frames (measured)." },
	{ "pages_shared", true, "Resident frames mapped by more than one page." },
	{ "pages_sharing", true,
	  "Page mappings beyond the first of a shared frame: pages saved." },
	{ "pages_unshared", true,
	  "Clean frames in the dedup trees with a single mapper." },
	{ "pages_volatile", true, "Written frames kept out of the dedup trees." },
	{ "zero_pages", true, "Page mappings of the shared zero frame." },
	{ "frames_dirty", true, "Frames written but not yet written back." },
	{ "files_cached", true, "Files with a page index in the cache." },
	{ "free_frame_bytes", true,
	  "Memory of free frames not yet given back to the kernel." },
	{ "uring_fallbacks", true,
	  "Threads doing backing I/O with preadv/pwritev: no io_uring." },
	{ "files_kernel_mode", true,
	  "Files with handles open that the kernel caches (cache_mode)." },
	{ "files_shared_mode", true,
	  "Files with handles open that samepage caches, merged." },
	{ "files_kept", true,
	  "Closed files the kernel forgot whose clean pages the cache keeps." },
	{ "general_profit", true,
	  "Bytes saved by sharing minus the bytes of dedup metadata." },
	{ "stable_chains", true,
	  "Stable frames that exist because an identical one was full "
	  "(max_page_sharing)." },
	{ "store_files", true, "Files the state store holds records of." },
	{ "store_pages", true, "Pages the state store's recipes describe." },
	{ "store_distinct", true,
	  "SHA-256 digests the state store holds (distinct contents)." },
	{ "store_bytes", true, "Bytes of the state store's trees." },
	{ "store_paused", true,
	  "1 while persistence is paused after a store failure." },
	{ "full_scans", false, "Completed full scans of the resident frames." },
	{ "reflink_merges", false,
	  "Pages shared because they map the same physical extent." },
	{ "content_merges", false,
	  "Pages merged after their content compared equal." },
	{ "cow_breaks", false,
	  "Writes that gave a page a private copy of a shared frame." },
	{ "hashes_computed", false, "Page fingerprints computed." },
	{ "digests_computed", false,
	  "SHA-256 digests of pages computed for the state store." },
	{ "store_hits", false,
	  "Pages mapped without being read, on a digest in the state store." },
	{ "store_merges", false,
	  "Of those, pages mapped onto a resident frame (not the zero frame)." },
	{ "store_queue_full", false,
	  "Records not stored because the store's queue was full." },
	{ "hits", false, "Pages served from a resident frame." },
	{ "misses", false, "Pages that needed a fill." },
	{ "evictions", false,
	  "Frames evicted to stay within the memory budget." },
	{ "backing_read_bytes", false, "Bytes read from backing files." },
	{ "backing_write_bytes", false, "Bytes written to backing files." },
	{ "backing_reads", false, "Read requests issued to backing files." },
	{ "backing_writes", false, "Write requests issued to backing files." },
	{ "writeback_errors", false, "Writebacks that failed." },
	{ "invalidations", false,
	  "Pages dropped by truncate, hole punching or a changed backing file." },
	{ "readahead_pages", false,
	  "Pages filled ahead of a sequential reader (not counted as misses)." },
	{ "mode_switches", false,
	  "Opens that moved a file to the other caching mode." },
	{ "direct_read_pages", false,
	  "Pages of kernel-mode files read from disk without a frame." },
	{ "file_reattaches", false,
	  "Kept files found again by a later lookup, pages and all." },
	{ "pressure_shrinks", false,
	  "Times the cache shrank on a memory pressure notification." },
	{ "pressure_bytes", false,
	  "Frame bytes given back to the kernel by those shrinks." },
};

static const struct counter_doc *counter_doc(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(counter_docs) / sizeof(counter_docs[0]); i++)
		if (!strcmp(counter_docs[i].name, name))
			return &counter_docs[i];
	return NULL;
}

bool ctl_counter_is_gauge(const char *name)
{
	const struct counter_doc *d = counter_doc(name);

	return d && d->gauge;
}

const char *ctl_counter_help(const char *name)
{
	const struct counter_doc *d = counter_doc(name);

	return d ? d->help : NULL;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !strcmp(s + n - m, suffix);
}

/* ---- stats ------------------------------------------------------------- */

static void summary_row(FILE *f, const char *label, const char *value,
			const char *detail)
{
	if (detail && *detail)
		fprintf(f, "  %-14s %11s   %s\n", label, value, detail);
	else
		fprintf(f, "  %-14s %11s\n", label, value);
}

static void bytes_or_na(char *buf, size_t len, bool have, double bytes)
{
	if (have)
		ctl_fmt_bytes(buf, len, bytes);
	else
		snprintf(buf, len, "n/a");
}

int ctl_fmt_stats_human(FILE *f, const char *mount, const char *version,
			const struct ctl_kvlist *st)
{
	int64_t cache = 0, limit = 0, sharing = 0, zero = 0, hits = 0;
	int64_t misses = 0, rd = 0, wr = 0, rdn = 0, wrn = 0, meta = 0;
	bool h_cache, h_limit, h_sharing, h_hits, h_misses;
	bool h_rd, h_wr, h_rdn, h_wrn, h_meta;
	char val[64], det[160], a[32], b[32];
	size_t i, wname = 0, wval = 0;

	h_cache = ctl_kv_int(st, "cache_bytes", &cache);
	h_limit = ctl_kv_int(st, "cache_limit_bytes", &limit);
	h_sharing = ctl_kv_int(st, "pages_sharing", &sharing);
	ctl_kv_int(st, "zero_pages", &zero);   /* absent: no zero pages */
	h_hits = ctl_kv_int(st, "hits", &hits);
	h_misses = ctl_kv_int(st, "misses", &misses);
	h_rd = ctl_kv_int(st, "backing_read_bytes", &rd);
	h_wr = ctl_kv_int(st, "backing_write_bytes", &wr);
	h_rdn = ctl_kv_int(st, "backing_reads", &rdn);
	h_wrn = ctl_kv_int(st, "backing_writes", &wrn);
	h_meta = ctl_kv_int(st, "metadata_bytes", &meta);

	fprintf(f, "%s on %s\n\n", version && *version ? version : "samepage",
		mount);

	bytes_or_na(val, sizeof(val), h_cache, (double)cache);
	det[0] = '\0';
	if (h_cache && h_limit && limit > 0) {
		ctl_fmt_bytes(a, sizeof(a), (double)limit);
		snprintf(det, sizeof(det), "of %s limit (%.1f %%)", a,
			 100.0 * (double)cache / (double)limit);
	}
	summary_row(f, "memory used", val, det);

	/* Zero-page mappings save a frame each, like a sharing mapping. */
	bytes_or_na(val, sizeof(val), h_sharing,
		    (double)(sharing + zero) * CTL_PAGE_SIZE);
	snprintf(det, sizeof(det), "%" PRId64 " shared mappings, %" PRId64
		 " zero pages", sharing, zero);
	summary_row(f, "memory saved", val, h_sharing ? det : "");

	if (h_cache && h_sharing && cache >= (int64_t)CTL_PAGE_SIZE) {
		double resident = (double)cache / CTL_PAGE_SIZE;

		snprintf(val, sizeof(val), "%.2fx",
			 (resident + (double)sharing + (double)zero) / resident);
		snprintf(det, sizeof(det), "pages mapped per resident frame");
	} else {
		snprintf(val, sizeof(val), "n/a");
		snprintf(det, sizeof(det), h_cache ? "nothing cached" : "");
	}
	summary_row(f, "dedup ratio", val, det);

	if (h_hits && h_misses && hits + misses > 0) {
		snprintf(val, sizeof(val), "%.1f %%",
			 100.0 * (double)hits / (double)(hits + misses));
		snprintf(det, sizeof(det), "%" PRId64 " hits, %" PRId64
			 " misses", hits, misses);
	} else {
		snprintf(val, sizeof(val), "n/a");
		snprintf(det, sizeof(det), h_hits ? "no reads yet" : "");
	}
	summary_row(f, "hit rate", val, det);

	bytes_or_na(val, sizeof(val), h_rd, (double)rd);
	snprintf(det, sizeof(det), "in %" PRId64 " requests", rdn);
	summary_row(f, "backing read", val, h_rdn ? det : "");
	bytes_or_na(val, sizeof(val), h_wr, (double)wr);
	snprintf(det, sizeof(det), "in %" PRId64 " requests", wrn);
	summary_row(f, "backing write", val, h_wrn ? det : "");
	bytes_or_na(val, sizeof(val), h_meta, (double)meta);
	summary_row(f, "metadata", val, "");

	fprintf(f, "\ncounters\n");
	for (i = 0; i < st->n; i++) {
		size_t nl = strlen(st->v[i].name), vl = strlen(st->v[i].str);

		wname = nl > wname ? nl : wname;
		wval = vl > wval ? vl : wval;
	}
	for (i = 0; i < st->n; i++) {
		const struct ctl_kv *kv = &st->v[i];

		if (kv->is_int && ends_with(kv->name, "_bytes") &&
		    (kv->value >= 1024 || kv->value <= -1024)) {
			ctl_fmt_bytes(b, sizeof(b), (double)kv->value);
			fprintf(f, "  %-*s %*s  (%s)\n", (int)wname, kv->name,
				(int)wval, kv->str, b);
		} else {
			fprintf(f, "  %-*s %*s\n", (int)wname, kv->name,
				(int)wval, kv->str);
		}
	}
	return ferror(f) ? -EIO : 0;
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

int ctl_fmt_stats_json(FILE *f, const struct ctl_kvlist *st)
{
	size_t i;

	fputc('{', f);
	for (i = 0; i < st->n; i++) {
		fputs(i ? ",\n  " : "\n  ", f);
		json_string(f, st->v[i].name);
		fprintf(f, ": %" PRId64, st->v[i].value);
	}
	fputs(st->n ? "\n}\n" : "}\n", f);
	return ferror(f) ? -EIO : 0;
}

/* Metric names allow [a-zA-Z0-9_:]; anything else becomes '_'. */
static void prom_name(FILE *f, const char *name)
{
	fputs("samepage_", f);
	for (; *name; name++) {
		unsigned char c = (unsigned char)*name;

		fputc(isalnum(c) || c == '_' || c == ':' ? c : '_', f);
	}
}

/* HELP text escapes backslash and newline; label values also '"'. */
static void prom_escape(FILE *f, const char *s, bool label)
{
	for (; *s; s++) {
		if (*s == '\\')
			fputs("\\\\", f);
		else if (*s == '\n')
			fputs("\\n", f);
		else if (label && *s == '"')
			fputs("\\\"", f);
		else
			fputc(*s, f);
	}
}

int ctl_fmt_stats_prometheus(FILE *f, const char *mount,
			     const struct ctl_kvlist *st)
{
	size_t i;

	for (i = 0; i < st->n; i++) {
		const struct ctl_kv *kv = &st->v[i];
		const char *help = ctl_counter_help(kv->name);

		fputs("# HELP ", f);
		prom_name(f, kv->name);
		fputc(' ', f);
		if (help) {
			prom_escape(f, help, false);
		} else {
			fputs("samepage counter ", f);
			prom_escape(f, kv->name, false);
		}
		fputs("\n# TYPE ", f);
		prom_name(f, kv->name);
		fputs(ctl_counter_is_gauge(kv->name) ? " gauge\n" : " counter\n",
		      f);
		prom_name(f, kv->name);
		fputs("{mountpoint=\"", f);
		prom_escape(f, mount, true);
		fprintf(f, "\"} %" PRId64 "\n", kv->value);
	}
	return ferror(f) ? -EIO : 0;
}
