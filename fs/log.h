/*
 * log: where the daemon's messages go.
 *
 * Owns the choice of sink: stderr while the daemon runs in the foreground
 * (and before it daemonises, so that mount errors reach the user), syslog
 * once it has detached. libfuse's own messages are routed through the same
 * sink. Debug messages are dropped unless the mount asked for -o debug.
 *
 * Locking: log_setup() and log_use_syslog() run before the worker threads
 * start; log_msg() may then be called from any thread (stdio and syslog
 * serialise their writers themselves).
 *
 * Errors: none; a message that cannot be written is lost.
 */
#ifndef SAMEPAGE_FS_LOG_H
#define SAMEPAGE_FS_LOG_H

#include <stdbool.h>
#include <syslog.h>

void log_setup(bool debug);
/* Switch to syslog; called once the daemon has detached from its terminal. */
void log_use_syslog(void);
bool log_debug_enabled(void);
void log_msg(int prio, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define log_err(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) do { if (log_debug_enabled()) \
		log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
