/*
 * ctl_help: help text. See ctl_help.h.
 */
#include "ctl_help.h"

#include <stddef.h>
#include <string.h>

const char ctl_help_main[] =
	"Usage: samepagectl [--timeout S] COMMAND [OPTIONS] ARGS\n"
	"Show what a samepage file system caches and shares, and tune its daemon.\n"
	"\n"
	"Commands:\n"
	"  stats [--json|--prometheus] MOUNTPOINT\n"
	"                          memory used and saved, dedup ratio, hit rate,\n"
	"                          then every counter\n"
	"  histogram MOUNTPOINT    frames by number of pages that map them\n"
	"  file PATH...            a file's cached pages and the files it shares\n"
	"                          them with\n"
	"  watch [-n S] [--count N] MOUNTPOINT\n"
	"                          rates per second, refreshed\n"
	"  get MOUNTPOINT [KEY]    show run-time settings\n"
	"  set MOUNTPOINT KEY=VALUE...\n"
	"                          change run-time settings\n"
	"  scan [--wait] MOUNTPOINT\n"
	"                          start a full dedup scan\n"
	"  store STATE_DIR         statistics of the store of an unmounted file\n"
	"                          system\n"
	"  help [COMMAND]          help on a command\n"
	"\n"
	"Options:\n"
	"  --timeout S    give up on a daemon that does not answer within S\n"
	"                 seconds (default 5); also accepted after COMMAND\n"
	"  -h, --help     show this help\n"
	"  -V, --version  show the version\n"
	"\n"
	"Exit status: 0 success, 1 error, 2 usage error. See samepagectl(1).\n";

static const struct help {
	const char *command;
	const char *usage;
	const char *text;
} helps[] = {
	{ "stats", "stats [--json|--prometheus] [--timeout S] MOUNTPOINT",
	  "Show the counters of a samepage mount. The default view leads with\n"
	  "memory used (cache_bytes), memory saved ((pages_sharing + zero_pages)\n"
	  "x 4 KiB), the dedup ratio (pages mapped per resident frame), the hit\n"
	  "rate and backing I/O, then lists every counter.\n"
	  "\n"
	  "  --json        one JSON object; the keys are the counter names\n"
	  "  --prometheus  Prometheus text format for node_exporter's textfile\n"
	  "                collector: samepage_<counter>{mountpoint=\"...\"}\n"
	  "  --timeout S   seconds to wait for the daemon (default 5)\n"
	  "\n"
	  "Example: samepagectl stats --prometheus /mnt/images \\\n"
	  "           > /var/lib/node_exporter/textfile/samepage.prom\n" },
	{ "histogram", "histogram [--timeout S] MOUNTPOINT",
	  "Show resident frames by the number of pages that map them, like\n"
	  "zdb -DD: for each range of mapper counts, the frames, the bytes the\n"
	  "files reference through them and the bytes they occupy, then totals.\n" },
	{ "file", "file [--timeout S] PATH...",
	  "Show what a file on a samepage mount holds in the cache: resident,\n"
	  "shared, zero, reflinked and dirty pages, and the other files it\n"
	  "shares pages with (paths relative to the mount root).\n" },
	{ "watch", "watch [-n SECONDS] [--count N] [--timeout S] MOUNTPOINT",
	  "Show rates per second, refreshed every interval: reads (hits and\n"
	  "misses), backing read and write MiB/s, merges (content, store and\n"
	  "reflink), COW breaks, full scans, memory used and saved. On a\n"
	  "terminal the screen is redrawn; otherwise one line is printed per\n"
	  "interval.\n"
	  "Stops on Ctrl-C or after N updates.\n"
	  "\n"
	  "  -n, --interval SECONDS  time between updates (default 1)\n"
	  "  --count N               stop after N updates\n" },
	{ "get", "get [--timeout S] MOUNTPOINT [KEY]",
	  "Show the daemon's run-time settings, or only the value of KEY.\n"
	  "Settings: run, pages_to_scan, sleep_millisecs, max_page_sharing,\n"
	  "use_zero_pages, smart_scan, cache_size.\n" },
	{ "set", "set [--timeout S] MOUNTPOINT KEY=VALUE...",
	  "Change run-time settings; only root or the user who mounted may.\n"
	  "cache_size takes K, M, G or T suffixes (powers of 1024); run,\n"
	  "use_zero_pages and smart_scan take 0/1, on/off, yes/no, true/false.\n"
	  "Settings are applied in order; the first that fails stops the rest.\n"
	  "\n"
	  "Example: samepagectl set /mnt/images cache_size=2G pages_to_scan=1000\n" },
	{ "scan", "scan [--wait] [--timeout S] MOUNTPOINT",
	  "Start a full scan of the resident frames for identical pages.\n"
	  "\n"
	  "  --wait  show progress and return when the scan has finished\n"
	  "          (full_scans has gone up)\n" },
	{ "store", "store STATE_DIR | MOUNTPOINT",
	  "Show statistics of the LMDB store in STATE_DIR (the state_dir mount\n"
	  "option), or of the store of the file system mounted at MOUNTPOINT\n"
	  "(its daemon says where that is; root or the user who mounted): file\n"
	  "and map size, the last transaction, readers, and entries and pages\n"
	  "of every database in it. Opens the store read-only.\n" },
	{ "help", "help [COMMAND]",
	  "Show the overview, or the help of COMMAND (same as COMMAND --help).\n" },
};

static const struct help *find(const char *command)
{
	size_t i;

	for (i = 0; i < sizeof(helps) / sizeof(helps[0]); i++)
		if (!strcmp(helps[i].command, command))
			return &helps[i];
	return NULL;
}

const char *ctl_help_usage(const char *command)
{
	const struct help *h = find(command);

	return h ? h->usage : NULL;
}

const char *ctl_help_text(const char *command)
{
	const struct help *h = find(command);

	return h ? h->text : NULL;
}
