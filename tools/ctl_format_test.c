/*
 * Unit test of ctl_format and ctl_report: canned daemon replies in, the
 * views samepagectl prints out. No mount, no daemon.
 */
#include "ctl_format.h"
#include "ctl_report.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond)                                                        \
	do {                                                               \
		if (!(cond)) {                                             \
			fprintf(stderr, "%s:%d: check failed: %s\n",       \
				__FILE__, __LINE__, #cond);                \
			failures++;                                        \
		}                                                          \
	} while (0)

#define CHECK_STR(got, want)                                               \
	do {                                                               \
		if (strcmp((got), (want))) {                               \
			fprintf(stderr, "%s:%d: got\n%s\nwant\n%s\n",      \
				__FILE__, __LINE__, (got), (want));        \
			failures++;                                        \
		}                                                          \
	} while (0)

/* A stream that collects what a formatter writes. */
struct capture {
	FILE  *f;
	char  *buf;
	size_t len;
};

static void capture_start(struct capture *c)
{
	c->buf = NULL;
	c->len = 0;
	c->f = open_memstream(&c->buf, &c->len);
	if (!c->f) {
		perror("open_memstream");
		exit(1);
	}
}

static char *capture_end(struct capture *c)
{
	fclose(c->f);
	return c->buf;
}

static const char stats_text[] =
	"pages_shared 512\n"
	"pages_sharing 3584\n"
	"full_scans 2\n"
	"cache_bytes 2097152\n"
	"cache_limit_bytes 536870912\n"
	"zero_pages 0\n"
	"hits 900\n"
	"misses 100\n"
	"general_profit -1234\n"
	"backing_read_bytes 4194304\n";

static void test_parse_kv(void)
{
	struct ctl_kvlist l;
	unsigned bad = 0;
	int64_t v;

	CHECK(ctl_parse_kv("a 1\r\n\n  b   -2  \nc x y\n", false, &l, &bad) == 0);
	CHECK(l.n == 3);
	CHECK(ctl_kv_int(&l, "a", &v) && v == 1);
	CHECK(ctl_kv_int(&l, "b", &v) && v == -2);
	CHECK(!ctl_kv_int(&l, "c", &v));
	CHECK(ctl_kv_find(&l, "c") && !strcmp(ctl_kv_find(&l, "c")->str, "x y"));
	CHECK(!ctl_kv_find(&l, "d"));
	ctl_kvlist_free(&l);

	CHECK(ctl_parse_kv("a 1\nb x\n", true, &l, &bad) == -EINVAL);
	CHECK(bad == 2);
	CHECK(ctl_parse_kv("a 1\nlonely\n", false, &l, &bad) == -EINVAL);
	CHECK(bad == 2);
	CHECK(ctl_parse_kv("a 99999999999999999999\n", true, &l, &bad) ==
	      -EINVAL);
	CHECK(ctl_parse_kv("", true, &l, &bad) == 0 && l.n == 0);
	ctl_kvlist_free(&l);
}

static void test_units(void)
{
	char b[32];
	uint64_t v;

	ctl_fmt_bytes(b, sizeof(b), 0);
	CHECK_STR(b, "0 B");
	ctl_fmt_bytes(b, sizeof(b), 1023);
	CHECK_STR(b, "1023 B");
	ctl_fmt_bytes(b, sizeof(b), 1536);
	CHECK_STR(b, "1.5 KiB");
	ctl_fmt_bytes(b, sizeof(b), 1048575);
	CHECK_STR(b, "1.0 MiB");
	ctl_fmt_bytes(b, sizeof(b), 3.0 * (1 << 30));
	CHECK_STR(b, "3.0 GiB");
	ctl_fmt_bytes(b, sizeof(b), -2048);
	CHECK_STR(b, "-2.0 KiB");

	CHECK(ctl_parse_size("4096", &v) == 0 && v == 4096);
	CHECK(ctl_parse_size("512M", &v) == 0 && v == 512ull << 20);
	CHECK(ctl_parse_size("2g", &v) == 0 && v == 2ull << 30);
	CHECK(ctl_parse_size("1.5GiB", &v) == 0 && v == 3ull << 29);
	CHECK(ctl_parse_size("64KB", &v) == 0 && v == 64ull << 10);
	CHECK(ctl_parse_size("100B", &v) == 0 && v == 100);
	CHECK(ctl_parse_size("1T", &v) == 0 && v == 1ull << 40);
	CHECK(ctl_parse_size("", &v) == -EINVAL);
	CHECK(ctl_parse_size("-1", &v) == -EINVAL);
	CHECK(ctl_parse_size("12Q", &v) == -EINVAL);
	CHECK(ctl_parse_size("M", &v) == -EINVAL);
	CHECK(ctl_parse_size("99999999999T", &v) == -EINVAL);
	CHECK(ctl_parse_size("1 G", &v) == -EINVAL);
}

static void test_stats_views(void)
{
	struct ctl_kvlist st;
	struct capture c;
	char *out;

	CHECK(ctl_parse_kv(stats_text, true, &st, NULL) == 0);

	capture_start(&c);
	CHECK(ctl_fmt_stats_json(c.f, &st) == 0);
	out = capture_end(&c);
	CHECK_STR(out, "{\n  \"pages_shared\": 512,\n  \"pages_sharing\": 3584,\n"
		  "  \"full_scans\": 2,\n  \"cache_bytes\": 2097152,\n"
		  "  \"cache_limit_bytes\": 536870912,\n  \"zero_pages\": 0,\n"
		  "  \"hits\": 900,\n  \"misses\": 100,\n"
		  "  \"general_profit\": -1234,\n"
		  "  \"backing_read_bytes\": 4194304\n}\n");
	free(out);

	/* 512 resident frames, 3584 more mappings: 8 pages per frame. */
	capture_start(&c);
	CHECK(ctl_fmt_stats_human(c.f, "/mnt/x", "samepage 0.1.0", &st) == 0);
	out = capture_end(&c);
	CHECK(strstr(out, "samepage 0.1.0 on /mnt/x\n"));
	CHECK(strstr(out, "memory used        2.0 MiB   of 512.0 MiB limit"));
	CHECK(strstr(out, "memory saved      14.0 MiB"));
	CHECK(strstr(out, "dedup ratio          8.00x"));
	CHECK(strstr(out, "hit rate            90.0 %"));
	CHECK(strstr(out, "\n  general_profit         -1234\n"));
	CHECK(strstr(out, "  cache_bytes          2097152  (2.0 MiB)\n"));
	free(out);

	capture_start(&c);
	CHECK(ctl_fmt_stats_prometheus(c.f, "/mnt/a \"b\"\\c\nd", &st) == 0);
	out = capture_end(&c);
	CHECK(strstr(out, "# HELP samepage_pages_sharing Page mappings"));
	CHECK(strstr(out, "# TYPE samepage_pages_sharing gauge\n"));
	CHECK(strstr(out, "# TYPE samepage_full_scans counter\n"));
	CHECK(strstr(out, "# TYPE samepage_hits counter\n"));
	CHECK(strstr(out, "# TYPE samepage_general_profit gauge\n"));
	CHECK(strstr(out, "samepage_full_scans{mountpoint=\"/mnt/a \\\"b\\\"\\\\c"
		      "\\nd\"} 2\n"));
	CHECK(strstr(out, "samepage_general_profit{mountpoint=") &&
	      strstr(out, "} -1234\n"));
	free(out);
	ctl_kvlist_free(&st);

	/* A counter this tool does not know still gets HELP and TYPE. */
	CHECK(ctl_parse_kv("new-thing 5\n", true, &st, NULL) == 0);
	capture_start(&c);
	ctl_fmt_stats_prometheus(c.f, "/m", &st);
	out = capture_end(&c);
	CHECK_STR(out, "# HELP samepage_new_thing samepage counter new-thing\n"
		  "# TYPE samepage_new_thing counter\n"
		  "samepage_new_thing{mountpoint=\"/m\"} 5\n");
	free(out);
	ctl_kvlist_free(&st);
}

static void test_histogram(void)
{
	struct ctl_hist_row *rows;
	struct capture c;
	unsigned bad = 0;
	size_t n;
	char *out;

	CHECK(ctl_parse_histogram("1 1 10 10\n2 2 0 0\n5 8 512 4096\n", &rows,
				  &n, &bad) == 0);
	CHECK(n == 3 && rows[2].lo == 5 && rows[2].mappings == 4096);
	capture_start(&c);
	CHECK(ctl_fmt_histogram(c.f, rows, n) == 0);
	out = capture_end(&c);
	CHECK(strstr(out, "            1           10     40.0 KiB     40.0 KiB\n"));
	CHECK(!strstr(out, "\n            2 "));   /* empty buckets left out */
	CHECK(strstr(out, "          5-8          512     16.0 MiB      2.0 MiB\n"));
	CHECK(strstr(out, "        total          522     16.0 MiB      2.0 MiB\n"));
	CHECK(strstr(out, "dedup ratio 7.87x"));
	free(out);
	free(rows);

	CHECK(ctl_parse_histogram("1 1 1 1\n4 2 1 1\n", &rows, &n, &bad) ==
	      -EINVAL && bad == 2);
	CHECK(ctl_parse_histogram("1 1 1\n", &rows, &n, &bad) == -EINVAL);
	CHECK(ctl_parse_histogram("1 1 1 1 1\n", &rows, &n, &bad) == -EINVAL);
}

static void test_file(void)
{
	struct ctl_file_report r;
	struct capture c;
	unsigned bad = 0;
	char *out;

	CHECK(ctl_parse_file("resident_pages 100\nshared_pages 50\n"
			     "zero_pages 2\nreflink_pages 10\ndirty_pages 1\n"
			     "future_key 7\n"
			     "sharer 5 a b.img\nsharer 50 dir/c.img\n", &r,
			     &bad) == 0);
	CHECK(r.resident_pages == 100 && r.shared_pages == 50 &&
	      r.dirty_pages == 1);
	CHECK(r.nsharers == 2);
	CHECK(r.sharers[0].pages == 50 && !strcmp(r.sharers[0].path, "dir/c.img"));
	CHECK(!strcmp(r.sharers[1].path, "a b.img"));
	capture_start(&c);
	CHECK(ctl_fmt_file(c.f, "/m/f", &r) == 0);
	out = capture_end(&c);
	CHECK(strstr(out, "  shared               50 pages   200.0 KiB   50.0 %\n"));
	CHECK(strstr(out, "shares pages with 2 other files:\n"));
	CHECK(strstr(out, "      5 pages    20.0 KiB  a b.img\n"));
	free(out);
	ctl_file_report_free(&r);

	/* The caching mode and what a kernel-mode file's reads found. */
	CHECK(ctl_parse_file("resident_pages 0\ncache_mode kernel\n"
			     "sharing_found 3\n", &r, &bad) == 0);
	CHECK(!strcmp(r.mode, "kernel") && r.sharing_found == 3);
	capture_start(&c);
	CHECK(ctl_fmt_file(c.f, "/m/k", &r) == 0);
	out = capture_end(&c);
	CHECK(strstr(out, "cached by the kernel (cache_mode kernel); its reads "
			  "found its pages in other files\n"));
	free(out);
	ctl_file_report_free(&r);
	CHECK(ctl_parse_file("cache_mode\n", &r, &bad) == -EINVAL && bad == 1);
	CHECK(ctl_parse_file("cache_mode a-word-far-too-long\n", &r, &bad) ==
	      -EINVAL && bad == 1);

	CHECK(ctl_parse_file("resident_pages x\n", &r, &bad) == -EINVAL &&
	      bad == 1);
	CHECK(ctl_parse_file("resident_pages 1\nsharer 5\n", &r, &bad) ==
	      -EINVAL && bad == 2);
}

static void test_rates(void)
{
	struct ctl_kvlist a, b;
	struct ctl_rates r;
	struct capture c;
	char *out;

	CHECK(ctl_parse_kv("hits 100\nmisses 10\nbacking_read_bytes 0\n"
			   "content_merges 5\nreflink_merges 1\ncow_breaks 9\n"
			   "store_merges 2\n", true, &a, NULL) == 0);
	CHECK(ctl_parse_kv("hits 300\nmisses 30\nbacking_read_bytes 4194304\n"
			   "content_merges 15\nreflink_merges 3\ncow_breaks 1\n"
			   "store_merges 6\n"
			   "full_scans 4\ncache_bytes 8192\npages_sharing 2\n"
			   "zero_pages 1\n", true, &b, NULL) == 0);
	ctl_compute_rates(&a, &b, 2.0, &r);
	CHECK(r.hits == 100 && r.misses == 10 && r.reads == 110);
	CHECK(r.read_mib == 2.0 && r.write_mib == 0);
	CHECK(r.merges == 8);
	CHECK(r.cow_breaks == 0);   /* went down: a restarted daemon */
	CHECK(r.full_scans == 4 && r.used_bytes == 8192);
	CHECK(r.saved_bytes == 3 * 4096);
	capture_start(&c);
	ctl_fmt_watch_header(c.f);
	ctl_fmt_watch_row(c.f, "12:00:00", &r);
	out = capture_end(&c);
	CHECK(strstr(out, "12:00:00       110       100      10.0      2.0"));
	free(out);
	ctl_kvlist_free(&a);
	ctl_kvlist_free(&b);
}

int main(void)
{
	test_parse_kv();
	test_units();
	test_stats_views();
	test_histogram();
	test_file();
	test_rates();
	if (failures) {
		fprintf(stderr, "%d checks failed\n", failures);
		return 1;
	}
	printf("ok\n");
	return 0;
}
