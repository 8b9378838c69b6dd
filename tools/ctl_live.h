/*
 * ctl_live: the commands that follow a running daemon over time.
 *
 * Owns "watch" (rates per second between samples of samepage.stats,
 * redrawn on a terminal, one line per sample otherwise) and "scan"
 * (start a full scan; with --wait, follow full_scans until it goes up,
 * with a bar on a terminal and plain lines otherwise).
 *
 * Invariants: every sample is a ctl_call with the --timeout limit, so a
 * daemon that stops answering ends the command with an error instead of
 * freezing the screen. Ctrl-C ends watch with success and a waiting scan
 * with an error (the scan itself goes on in the daemon).
 *
 * Locking: none (single-threaded tool).
 *
 * Errors: both return a CTL_EXIT_* code after printing why.
 */
#ifndef SAMEPAGE_CTL_LIVE_H
#define SAMEPAGE_CTL_LIVE_H

/* argv[0] is the command name, as for every command. */
int ctl_cmd_watch(int argc, char **argv);
int ctl_cmd_scan(int argc, char **argv);

#endif
