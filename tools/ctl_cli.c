/*
 * ctl_cli: options, errors and daemon steps shared by every command. See
 * ctl_cli.h.
 */
#include "ctl_cli.h"
#include "ctl_call.h"
#include "ctl_help.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const ctl_prog = "samepagectl";
double ctl_timeout_s = 5;
volatile sig_atomic_t ctl_stop_requested;

void ctl_usage_error(const char *cmd, const char *fmt, const char *arg)
{
	fprintf(stderr, "%s: %s%s", ctl_prog, cmd ? cmd : "", cmd ? ": " : "");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry '%s %s%s--help'.\n", ctl_prog, cmd ? cmd : "",
		cmd ? " " : "");
}

int ctl_show_help(const char *cmd)
{
	if (!cmd)
		fputs(ctl_help_main, stdout);
	else
		printf("Usage: %s %s\n\n%s", ctl_prog, ctl_help_usage(cmd),
		       ctl_help_text(cmd));
	return CTL_EXIT_OK;
}

const char *ctl_bad_option(char **argv, char *buf)
{
	if (optopt > 0 && optopt < 256) {
		buf[0] = '-';
		buf[1] = (char)optopt;
		buf[2] = '\0';
		return buf;
	}
	return argv[optind - 1];
}

/* ---- options shared by every command ----------------------------------- */

int ctl_timeout_ms(void)
{
	return (int)(ctl_timeout_s * 1000 + 0.5);
}

bool ctl_set_timeout(const char *cmd, const char *arg)
{
	char *end;
	double t;

	errno = 0;
	t = strtod(arg, &end);
	if (errno || end == arg || *end || !(t > 0) || t > 86400) {
		ctl_usage_error(cmd, "invalid timeout '%s' (seconds, > 0)", arg);
		return false;
	}
	ctl_timeout_s = t;
	return true;
}

int ctl_parse_options(const char *cmd, int argc, char **argv,
		      const char *shortopts, const struct option *extra,
		      int (*handle)(int opt, const char *arg))
{
	struct option opts[16] = {
		{ "help", no_argument, NULL, 'h' },
		{ "timeout", required_argument, NULL, CTL_OPT_TIMEOUT },
	};
	char optstring[32], buf[3];
	int n = 2, opt;

	for (; extra && extra->name && n < 15; extra++)
		opts[n++] = *extra;
	/* Leading ':' tells a missing value from an unknown option. */
	snprintf(optstring, sizeof(optstring), ":h%s", shortopts);
	optind = 0;   /* glibc: rescan from argv[1], argv[0] is the command */
	opterr = 0;
	while ((opt = getopt_long(argc, argv, optstring, opts, NULL)) != -1) {
		if (opt == 'h')
			return ctl_show_help(cmd);
		if (opt == CTL_OPT_TIMEOUT) {
			if (!ctl_set_timeout(cmd, optarg))
				return CTL_EXIT_USAGE;
			continue;
		}
		if (opt == ':') {
			ctl_usage_error(cmd, "option '%s' needs a value",
					argv[optind - 1]);
			return CTL_EXIT_USAGE;
		}
		if (opt == '?') {
			ctl_usage_error(cmd, "unknown option '%s'",
					ctl_bad_option(argv, buf));
			return CTL_EXIT_USAGE;
		}
		if (!handle || handle(opt, optarg))
			return CTL_EXIT_USAGE;
	}
	return -1;
}

bool ctl_want_args(const char *cmd, int argc, char **argv, int min, int max)
{
	int n = argc - optind;

	if (n < min) {
		ctl_usage_error(cmd, "missing operand (%s)",
				ctl_help_usage(cmd));
		return false;
	}
	if (max >= 0 && n > max) {
		ctl_usage_error(cmd, "unexpected argument '%s'",
				argv[optind + max]);
		return false;
	}
	return true;
}

/* ---- talking to the daemon --------------------------------------------- */

bool ctl_not_samepage(int err)
{
	return err == -ENODATA || err == -ENOTSUP || err == -EOPNOTSUPP;
}

int ctl_call_failed(const char *path, int err)
{
	if (err == -ETIMEDOUT)
		fprintf(stderr, "%s: %s: daemon does not answer (timed out "
			"after %g s)\n", ctl_prog, path, ctl_timeout_s);
	else if (err == -EINTR)
		;   /* Ctrl-C: the command says what it means, if anything */
	else if (err == -E2BIG)
		fprintf(stderr, "%s: %s: the daemon's reply is larger than the "
			"kernel allows for an extended attribute (64 KiB)\n",
			ctl_prog, path);
	else if (ctl_not_samepage(err))
		fprintf(stderr, "%s: %s: not a samepage mount\n", ctl_prog, path);
	else
		fprintf(stderr, "%s: %s: %s\n", ctl_prog, path, strerror(-err));
	return CTL_EXIT_ERROR;
}

int ctl_open_mount(const char *mount, char **version)
{
	char *v = NULL;
	size_t len;
	int ret;

	ret = ctl_getxattr(mount, CTL_XA_VERSION, ctl_timeout_ms(), &v, &len);
	if (ret)
		return ctl_call_failed(mount, ret);
	while (len && (v[len - 1] == '\n' || v[len - 1] == '\0'))
		v[--len] = '\0';
	if (strncmp(v, "samepage ", 9)) {
		free(v);
		return ctl_call_failed(mount, -ENODATA);
	}
	if (version)
		*version = v;
	else
		free(v);
	return CTL_EXIT_OK;
}

int ctl_fetch_kv(const char *mount, const char *name, bool require_int,
		 struct ctl_kvlist *kv)
{
	unsigned bad = 0;
	char *text;
	int ret;

	ret = ctl_getxattr(mount, name, ctl_timeout_ms(), &text, NULL);
	if (ret)
		return ctl_call_failed(mount, ret);
	ret = ctl_parse_kv(text, require_int, kv, &bad);
	free(text);
	if (ret == -EINVAL) {
		fprintf(stderr, "%s: %s: malformed reply from the daemon (%s, "
			"line %u)\n", ctl_prog, mount, name, bad);
		return CTL_EXIT_ERROR;
	}
	if (ret)
		return ctl_call_failed(mount, ret);
	return CTL_EXIT_OK;
}

int ctl_finish_output(void)
{
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "%s: standard output: %s\n", ctl_prog,
			strerror(errno));
		return CTL_EXIT_ERROR;
	}
	return CTL_EXIT_OK;
}

static void on_sigint(int sig)
{
	ctl_stop_requested = 1;
}

/* Ctrl-C ends a waiting loop cleanly instead of killing us mid-line. */
void ctl_catch_sigint(void)
{
	struct sigaction sa = { .sa_handler = on_sigint };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	ctl_call_set_interrupt_flag(&ctl_stop_requested);
}

void ctl_nap(double seconds)
{
	struct timespec ts = {
		.tv_sec = (time_t)seconds,
		.tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9),
	};
	sigset_t block, old;

	/* ppoll() unblocks SIGINT atomically, so a Ctrl-C between the check
	 * and the sleep cannot be missed. */
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &old);
	if (!ctl_stop_requested)
		ppoll(NULL, 0, &ts, &old);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

double ctl_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
