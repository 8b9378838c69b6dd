/*
 * ctl_format: parse what the daemon says and print it for people and for
 * programs.
 *
 * Owns the text side of the control protocol that every reply shares:
 * the "name value" lines of samepage.stats and samepage.knobs, the line
 * helpers other parsers build on, sizes in binary units, what each counter
 * means, and the three views of the counters (an aligned summary with
 * units, JSON, Prometheus text exposition). The other replies are
 * ctl_report's.
 *
 * Invariants: these functions are pure. They take text and return
 * structures, or take structures and write to a FILE; they never talk to
 * the daemon, read the clock or look at the terminal, so they can be fed
 * canned text (see ctl_format_test.c). Counter names are whatever the
 * daemon sends: unknown names are kept and printed, never dropped, so a
 * newer daemon works with an older tool.
 *
 * Locking: none (single-threaded tool).
 *
 * Errors: parsers return 0, -EINVAL for a malformed line (*bad_line says
 * which, counting from 1) or -ENOMEM. Formatters return 0 or -EIO when
 * the stream reports an error.
 */
#ifndef SAMEPAGE_CTL_FORMAT_H
#define SAMEPAGE_CTL_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CTL_PAGE_SIZE 4096u

/* One "name value" line; name and str point into the list's own text. */
struct ctl_kv {
	const char *name;
	const char *str;     /* the value as sent */
	int64_t     value;   /* valid when is_int */
	bool        is_int;
};

struct ctl_kvlist {
	char          *text;   /* owned copy the entries point into */
	struct ctl_kv *v;
	size_t         n;
};

/* Parse "name value\n" lines; require_int makes a non-integer an error.
 * Blank lines are skipped. */
int ctl_parse_kv(const char *text, bool require_int, struct ctl_kvlist *out,
		 unsigned *bad_line);
void ctl_kvlist_free(struct ctl_kvlist *l);
const struct ctl_kv *ctl_kv_find(const struct ctl_kvlist *l, const char *name);
/* The integer value of name, or false if it is absent or not an integer. */
bool ctl_kv_int(const struct ctl_kvlist *l, const char *name, int64_t *v);

/* Line helpers for the parsers of every reply. ctl_next_line() cuts the
 * next line out of *p in place (trimmed; NULL at the end of the text);
 * ctl_split_word() ends the first word of line and returns the rest,
 * blanks skipped (maybe empty); ctl_count_lines() bounds the number of
 * entries a reply can hold. */
char *ctl_next_line(char **p);
char *ctl_split_word(char *line);
size_t ctl_count_lines(const char *text);
/* A plain unsigned decimal, nothing around it. */
bool ctl_parse_u64(const char *s, uint64_t *v);

/* Human sizes in binary units: "0 B", "512 B", "1.5 KiB", "12.0 MiB". */
void ctl_fmt_bytes(char *buf, size_t len, double bytes);
/* "512M", "2G", "1.5GiB", "4096" -> bytes. 0 or -EINVAL (also overflow). */
int ctl_parse_size(const char *s, uint64_t *out);

/* Whether a counter is a gauge (goes up and down) or monotonic. */
bool ctl_counter_is_gauge(const char *name);
/* One-line description of a counter, or NULL if it is not one we know. */
const char *ctl_counter_help(const char *name);

/* stats: the summary that matters first, then every counter. */
int ctl_fmt_stats_human(FILE *f, const char *mount, const char *version,
			const struct ctl_kvlist *st);
/* One JSON object whose keys are exactly the counter names. */
int ctl_fmt_stats_json(FILE *f, const struct ctl_kvlist *st);
/* Prometheus text exposition (node_exporter textfile collector). */
int ctl_fmt_stats_prometheus(FILE *f, const char *mount,
			     const struct ctl_kvlist *st);

#endif
