/* log: stderr in the foreground, syslog when daemonised; see log.h. */
#define FUSE_USE_VERSION 312
#include <fuse_log.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

static bool log_syslog;
static bool log_debug_on;

bool log_debug_enabled(void)
{
	return log_debug_on;
}

static void log_vmsg(int prio, const char *fmt, va_list ap)
{
	char line[1024];
	size_t n;

	if (prio == LOG_DEBUG && !log_debug_on)
		return;
	if (log_syslog) {
		vsyslog(prio, fmt, ap);
		return;
	}
	/* One fprintf per message keeps lines of concurrent threads whole. */
	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	fprintf(stderr, "samepagefs: %s%s", line,
		n && line[n - 1] == '\n' ? "" : "\n");
}

void log_msg(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(prio, fmt, ap);
	va_end(ap);
}

/* fuse_log levels use the syslog numbering (FUSE_LOG_EMERG == LOG_EMERG). */
static void log_from_fuse(enum fuse_log_level level, const char *fmt,
			  va_list ap)
{
	int prio = (int)level;

	/* libfuse's request trace (-o debug) is printed at FUSE_LOG_DEBUG and
	 * already formatted for a terminal: keep it verbatim on stderr. */
	if (!log_syslog) {
		vfprintf(stderr, fmt, ap);
		return;
	}
	if (prio == LOG_DEBUG && !log_debug_on)
		return;
	vsyslog(prio, fmt, ap);
}

void log_setup(bool debug)
{
	log_debug_on = debug;
	fuse_set_log_func(log_from_fuse);
}

void log_use_syslog(void)
{
	openlog("samepagefs", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	log_syslog = true;
}
