/*
 * ctl_cli: what every samepagectl command shares.
 *
 * Owns the tool's global settings (the daemon timeout, the Ctrl-C flag),
 * option parsing with the common --help and --timeout, usage errors, and
 * the steps every command takes with the daemon: check that a path is a
 * samepage mount, fetch a reply and parse it, and say in one line why a
 * call failed.
 *
 * Invariants: every message goes to stderr as "samepagectl: THING:
 * REASON" and names the path, option or value at fault. A helper that
 * returns an exit code has already printed why.
 *
 * Locking: none; single-threaded. ctl_stop_requested is set from a signal
 * handler and only read elsewhere.
 *
 * Errors: helpers return one of the CTL_EXIT_* codes (0 success, 1 error,
 * 2 usage) so commands can pass them straight back to main().
 */
#ifndef SAMEPAGE_CTL_CLI_H
#define SAMEPAGE_CTL_CLI_H

#include "ctl_format.h"

#include <getopt.h>
#include <signal.h>
#include <stdbool.h>

#define CTL_EXIT_OK    0
#define CTL_EXIT_ERROR 1
#define CTL_EXIT_USAGE 2

/* The daemon's control attributes (see fs/ctl.c). */
#define CTL_XA_VERSION   "samepage.version"
#define CTL_XA_STATS     "samepage.stats"
#define CTL_XA_KNOBS     "samepage.knobs"
#define CTL_XA_SET       "samepage.set"
#define CTL_XA_SCAN      "samepage.scan"
#define CTL_XA_HISTOGRAM "samepage.histogram"
#define CTL_XA_FILE      "samepage.file"
#define CTL_XA_STATE_DIR "samepage.state_dir"

/* Long options without a short form. */
enum {
	CTL_OPT_TIMEOUT = 0x100,
	CTL_OPT_JSON,
	CTL_OPT_PROMETHEUS,
	CTL_OPT_WAIT,
	CTL_OPT_COUNT,
};

extern const char *const ctl_prog;
extern double ctl_timeout_s;                     /* --timeout */
extern volatile sig_atomic_t ctl_stop_requested; /* Ctrl-C seen */

/* "samepagectl: CMD: <fmt with arg>" and a pointer to --help. */
void ctl_usage_error(const char *cmd, const char *fmt, const char *arg);
/* Help of cmd (NULL: the overview) on stdout; returns CTL_EXIT_OK. */
int ctl_show_help(const char *cmd);
/* Name the option getopt_long() stopped at ("-x" or "--long"); buf
 * holds at least 3 bytes. */
const char *ctl_bad_option(char **argv, char *buf);
/* Parse and set --timeout; false (after a usage error) if invalid. */
bool ctl_set_timeout(const char *cmd, const char *arg);
int ctl_timeout_ms(void);

/*
 * Parse a command's options (argv[0] is the command): --help and
 * --timeout always, shortopts and extra (ended by a zeroed entry) through
 * handle(), which returns nonzero after a usage error. Returns -1 to go
 * on with the operands at argv[optind], or an exit code.
 */
int ctl_parse_options(const char *cmd, int argc, char **argv,
		      const char *shortopts, const struct option *extra,
		      int (*handle)(int opt, const char *arg));
/* Between min and max (< 0: any) operands left? Usage error if not. */
bool ctl_want_args(const char *cmd, int argc, char **argv, int min, int max);

/* An errno that means "this is not a samepage file system". */
bool ctl_not_samepage(int err);
/* Say why a daemon call on path failed; returns CTL_EXIT_ERROR. */
int ctl_call_failed(const char *path, int err);
/* Check that mount is the root of a samepage mount; *version (may be
 * NULL) gets the daemon's "samepage X.Y.Z", to be freed. */
int ctl_open_mount(const char *mount, char **version);
/* Fetch a "name value" reply (samepage.stats, samepage.knobs). */
int ctl_fetch_kv(const char *mount, const char *name, bool require_int,
		 struct ctl_kvlist *kv);
/* Flush stdout and report a write error (a full disk, a closed pipe). */
int ctl_finish_output(void);

/* Ctrl-C (and SIGTERM) set ctl_stop_requested and end pending calls. */
void ctl_catch_sigint(void);
/* Sleep, waking early for Ctrl-C. */
void ctl_nap(double seconds);
/* Monotonic seconds. */
double ctl_now_s(void);

#endif
