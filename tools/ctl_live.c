/*
 * ctl_live: the commands that follow the daemon over time. See ctl_live.h.
 */
#include "ctl_live.h"
#include "ctl_call.h"
#include "ctl_cli.h"
#include "ctl_report.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/*
 * What both commands do first: parse cmd's options, take the one mount
 * point operand, let Ctrl-C end the loop that follows, and check that the
 * mount answers. Returns -1 to go on with *mount, or an exit code.
 */
static int live_start(const char *cmd, int argc, char **argv,
		      const char *shortopts, const struct option *opts,
		      int (*handle)(int opt, const char *arg),
		      const char **mount)
{
	int ret;

	ret = ctl_parse_options(cmd, argc, argv, shortopts, opts, handle);
	if (ret >= 0)
		return ret;
	if (!ctl_want_args(cmd, argc, argv, 1, 1))
		return CTL_EXIT_USAGE;
	*mount = argv[optind];
	ctl_catch_sigint();
	ret = ctl_open_mount(*mount, NULL);
	return ret ? ret : -1;
}

/* ---- watch ------------------------------------------------------------- */

static double watch_interval = 1;
static long watch_count = -1;

static int watch_option(int opt, const char *arg)
{
	char *end;

	errno = 0;
	if (opt == 'n') {
		watch_interval = strtod(arg, &end);
		if (errno || end == arg || *end || !(watch_interval >= 0.1) ||
		    watch_interval > 86400) {
			ctl_usage_error("watch", "invalid interval '%s' (seconds, "
					">= 0.1)", arg);
			return 1;
		}
		return 0;
	}
	watch_count = strtol(arg, &end, 10);
	if (errno || end == arg || *end || watch_count < 1) {
		ctl_usage_error("watch", "invalid count '%s' (>= 1)", arg);
		return 1;
	}
	return 0;
}

int ctl_cmd_watch(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "interval", required_argument, NULL, 'n' },
		{ "count", required_argument, NULL, CTL_OPT_COUNT },
		{ 0 },
	};
	struct ctl_kvlist prev, cur;
	bool tty = isatty(STDOUT_FILENO);
	const char *mount;
	double t_prev, t_cur;
	long shown = 0;
	int ret;

	ret = live_start("watch", argc, argv, "n:", opts, watch_option, &mount);
	if (ret >= 0)
		return ret;
	ret = ctl_fetch_kv(mount, CTL_XA_STATS, true, &prev);
	if (ret)
		return ret;
	t_prev = ctl_now_s();
	if (!tty)
		ctl_fmt_watch_header(stdout);
	while (watch_count < 0 || shown < watch_count) {
		struct ctl_rates r;
		char stamp[16];
		time_t now;

		ctl_nap(watch_interval);
		if (ctl_stop_requested)
			break;
		ret = ctl_fetch_kv(mount, CTL_XA_STATS, true, &cur);
		if (ret) {
			if (ctl_stop_requested)
				ret = CTL_EXIT_OK;   /* Ctrl-C during the call */
			break;
		}
		t_cur = ctl_now_s();
		ctl_compute_rates(&prev, &cur, t_cur - t_prev, &r);
		now = time(NULL);
		strftime(stamp, sizeof(stamp), "%H:%M:%S", localtime(&now));
		if (tty) {
			fputs("\033[H\033[2J", stdout);
			ctl_fmt_watch_screen(stdout, mount, watch_interval,
					     stamp, &r);
		} else {
			ctl_fmt_watch_row(stdout, stamp, &r);
		}
		if (ctl_finish_output()) {
			ctl_kvlist_free(&cur);
			ret = CTL_EXIT_ERROR;
			break;
		}
		ctl_kvlist_free(&prev);
		prev = cur;
		t_prev = t_cur;
		shown++;
	}
	ctl_kvlist_free(&prev);
	return ret;
}

/* ---- scan -------------------------------------------------------------- */

static bool scan_wait;

static int scan_option(int opt, const char *arg)
{
	scan_wait = true;
	return 0;
}

/* A bar on a terminal: a real fraction when the daemon counts scanned
 * pages, otherwise a block that moves to show we are alive. */
static void scan_bar(double elapsed, double fraction, int64_t merged)
{
	char bar[33];
	int i, w = (int)(sizeof(bar) - 1);

	if (fraction >= 0) {
		int fill = (int)(fraction * w);

		for (i = 0; i < w; i++)
			bar[i] = i < fill ? '#' : '.';
	} else {
		int pos = (int)(elapsed * 8) % (2 * (w - 4));

		if (pos >= w - 4)
			pos = 2 * (w - 4) - pos;
		for (i = 0; i < w; i++)
			bar[i] = i >= pos && i < pos + 4 ? '#' : '.';
	}
	bar[w] = '\0';
	if (fraction >= 0)
		printf("\r[%s] %3.0f %%  %6.1f s  %" PRId64 " merged", bar,
		       fraction * 100, elapsed, merged);
	else
		printf("\r[%s]  %6.1f s  %" PRId64 " merged", bar, elapsed,
		       merged);
	fflush(stdout);
}

static int64_t merges_of(const struct ctl_kvlist *st)
{
	int64_t a = 0, b = 0;

	ctl_kv_int(st, "content_merges", &a);
	ctl_kv_int(st, "reflink_merges", &b);
	return a + b;
}

static int scan_progress(const char *mount, const struct ctl_kvlist *start)
{
	bool tty = isatty(STDOUT_FILENO);
	int64_t scans0 = 0, scans, scanned0 = -1, scanned, cache = 0;
	double t0 = ctl_now_s(), last_line = t0, elapsed;
	struct ctl_kvlist st;
	int ret;

	ctl_kv_int(start, "full_scans", &scans0);
	if (!ctl_kv_int(start, "pages_scanned", &scanned0))
		scanned0 = -1;
	for (;;) {
		double fraction = -1;

		ctl_nap(tty ? 0.2 : 0.5);
		if (ctl_stop_requested)
			goto out_interrupted;
		ret = ctl_fetch_kv(mount, CTL_XA_STATS, true, &st);
		if (ret && ctl_stop_requested)
			goto out_interrupted;
		if (ret)
			return ret;
		elapsed = ctl_now_s() - t0;
		if (!ctl_kv_int(&st, "full_scans", &scans)) {
			fprintf(stderr, "%s: %s: the daemon does not report "
				"full_scans\n", ctl_prog, mount);
			ctl_kvlist_free(&st);
			return CTL_EXIT_ERROR;
		}
		ctl_kv_int(&st, "cache_bytes", &cache);
		if (scanned0 >= 0 && cache > 0 &&
		    ctl_kv_int(&st, "pages_scanned", &scanned)) {
			fraction = (double)(scanned - scanned0) /
				   ((double)cache / CTL_PAGE_SIZE);
			fraction = fraction < 0 ? 0 : fraction > 1 ? 1 : fraction;
		}
		if (scans > scans0) {
			if (tty)
				scan_bar(elapsed, 1, merges_of(&st) -
					 merges_of(start));
			printf("%sfull scan finished on %s in %.1f s: "
			       "%" PRId64 " pages merged, full_scans %" PRId64
			       "\n", tty ? "\n" : "", mount, elapsed,
			       merges_of(&st) - merges_of(start), scans);
			ctl_kvlist_free(&st);
			return ctl_finish_output();
		}
		if (tty) {
			scan_bar(elapsed, fraction, merges_of(&st) -
				 merges_of(start));
		} else if (ctl_now_s() - last_line >= 1) {
			printf("scanning %s: %.0f s, %" PRId64 " pages merged\n",
			       mount, elapsed, merges_of(&st) - merges_of(start));
			fflush(stdout);
			last_line = ctl_now_s();
		}
		ctl_kvlist_free(&st);
	}

out_interrupted:
	fprintf(stderr, "%s%s: %s: interrupted; the scan goes on in the "
		"daemon\n", tty ? "\n" : "", ctl_prog, mount);
	return CTL_EXIT_ERROR;
}

int ctl_cmd_scan(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "wait", no_argument, NULL, CTL_OPT_WAIT },
		{ 0 },
	};
	struct ctl_kvlist start = { 0 };
	const char *mount;
	int ret;

	ret = live_start("scan", argc, argv, "", opts, scan_option, &mount);
	if (ret >= 0)
		return ret;
	if (scan_wait) {
		ret = ctl_fetch_kv(mount, CTL_XA_STATS, true, &start);
		if (ret)
			return ret;
	}
	ret = ctl_setxattr(mount, CTL_XA_SCAN, "start", ctl_timeout_ms());
	if (ret == -EPERM || ret == -EACCES) {
		fprintf(stderr, "%s: %s: permission denied: only root or the "
			"user who mounted may start a scan\n", ctl_prog, mount);
		ret = CTL_EXIT_ERROR;
	} else if (ret == -EINVAL) {
		fprintf(stderr, "%s: %s: the daemon cannot scan: deduplication "
			"is off on this mount\n", ctl_prog, mount);
		ret = CTL_EXIT_ERROR;
	} else if (ret) {
		ret = ctl_call_failed(mount, ret);
	} else if (!scan_wait) {
		printf("full scan started on %s\n", mount);
		ret = ctl_finish_output();
	} else {
		if (!isatty(STDOUT_FILENO)) {
			printf("full scan started on %s\n", mount);
			fflush(stdout);
		}
		ret = scan_progress(mount, &start);
	}
	ctl_kvlist_free(&start);
	return ret;
}
