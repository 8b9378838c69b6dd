/*
 * ctl_report: the views beyond the counters.
 *
 * Owns the parsing and printing of samepage.histogram ("lo hi frames
 * mappings" lines), samepage.file (the per-file summary and its "sharer
 * PAGES PATH" lines) and samepage.knobs, and the rates that watch derives
 * from two samples of samepage.stats.
 *
 * Invariants: pure functions, as in ctl_format: text in, structures out,
 * or structures in, a FILE written; no daemon, clock or terminal. Keys of
 * samepage.file that this tool does not know are ignored, so a newer
 * daemon may add some.
 *
 * Locking: none (single-threaded tool).
 *
 * Errors: parsers return 0, -EINVAL for a malformed line (*bad_line says
 * which, counting from 1) or -ENOMEM. Formatters return 0 or -EIO when
 * the stream reports an error.
 */
#ifndef SAMEPAGE_CTL_REPORT_H
#define SAMEPAGE_CTL_REPORT_H

#include "ctl_format.h"

/* histogram: frames by number of mappers. */
struct ctl_hist_row {
	uint64_t lo, hi;       /* mapper count range of the bucket */
	uint64_t frames;       /* resident frames */
	uint64_t mappings;     /* pages that map them */
};
int ctl_parse_histogram(const char *text, struct ctl_hist_row **rows,
			size_t *n, unsigned *bad_line);
int ctl_fmt_histogram(FILE *f, const struct ctl_hist_row *rows, size_t n);

/* file: what one file holds in the cache and with whom it shares. */
struct ctl_sharer {
	uint64_t    pages;
	const char *path;      /* relative to the mount root */
};
struct ctl_file_report {
	char              *text;     /* owned copy the paths point into */
	uint64_t           resident_pages;
	uint64_t           shared_pages;
	uint64_t           zero_pages;
	uint64_t           reflink_pages;
	uint64_t           dirty_pages;
	uint64_t           sharing_found;
	char               mode[16];  /* cache_mode: kernel, shared, none;
				       * empty from an older daemon */
	struct ctl_sharer *sharers;  /* most pages first */
	size_t             nsharers;
};
int ctl_parse_file(const char *text, struct ctl_file_report *r,
		   unsigned *bad_line);
void ctl_file_report_free(struct ctl_file_report *r);
int ctl_fmt_file(FILE *f, const char *path, const struct ctl_file_report *r);

/* knobs: "name value" lines, aligned. */
int ctl_fmt_knobs(FILE *f, const struct ctl_kvlist *knobs);

/* watch: rates between two stats samples dt seconds apart. */
struct ctl_rates {
	double  reads;        /* pages/s, hits + misses */
	double  hits;
	double  misses;
	double  read_mib;     /* backing MiB/s */
	double  write_mib;
	double  merges;       /* content + store + reflink merges/s */
	double  cow_breaks;
	int64_t full_scans;   /* total so far */
	int64_t used_bytes;   /* cache_bytes now */
	int64_t saved_bytes;  /* (pages_sharing + zero_pages) * page now */
};
void ctl_compute_rates(const struct ctl_kvlist *prev,
		       const struct ctl_kvlist *cur, double dt,
		       struct ctl_rates *r);
/* Plain lines for logs and pipes: a header once, then one row per sample
 * prefixed by a time stamp the caller formats. */
int ctl_fmt_watch_header(FILE *f);
int ctl_fmt_watch_row(FILE *f, const char *stamp, const struct ctl_rates *r);
/* The full-screen view of a terminal (the caller clears the screen). */
int ctl_fmt_watch_screen(FILE *f, const char *mount, double interval,
			 const char *stamp, const struct ctl_rates *r);

#endif
