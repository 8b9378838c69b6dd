/* opts: command line parsing and pre-mount checks; see opts.h. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "config.h"
#include "mountinfo.h"
#include "opts.h"
#include "pressure.h"

#define OPTS_MIN_CACHE   (1ull << 20)
#define OPTS_MAX_DEFAULT (4ull << 30)
#define OPTS_MAX_WB_MS   3600000u
/* The kernel's readahead for the mount: 4 MiB (4 FUSE requests of 1 MiB
 * in flight) streamed a cold file two to three times faster than its
 * default of 128 KiB here; at most 1 GiB. */
#define OPTS_DEFAULT_RA_KB 4096u
#define OPTS_MAX_RA_KB   (1u << 20)

enum {
	KEY_HELP,
	KEY_VERSION,
	KEY_FOREGROUND,
	KEY_DEBUG,
	KEY_RO,
	KEY_RW,
	KEY_FSNAME,
	KEY_SUBTYPE,
	KEY_CACHE_SIZE,
	KEY_STATE_DIR,
	KEY_WRITEBACK,
	KEY_READAHEAD,
	KEY_SCAN,
	KEY_SCOPE,
	KEY_QUOTA,
	KEY_REBUILD,
	KEY_MMAP,
	KEY_MODE,
	KEY_DISCARD,
	KEY_REMOUNT,
	KEY_NOATIME,
	KEY_ATIME,
};

static const struct fuse_opt opts_spec[] = {
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_KEY("-f", KEY_FOREGROUND),
	FUSE_OPT_KEY("-d", KEY_DEBUG),
	FUSE_OPT_KEY("debug", KEY_DEBUG),
	FUSE_OPT_KEY("ro", KEY_RO),
	FUSE_OPT_KEY("rw", KEY_RW),
	FUSE_OPT_KEY("fsname=", KEY_FSNAME),
	FUSE_OPT_KEY("subtype=", KEY_SUBTYPE),
	FUSE_OPT_KEY("cache_size=", KEY_CACHE_SIZE),
	FUSE_OPT_KEY("state_dir=", KEY_STATE_DIR),
	FUSE_OPT_KEY("writeback_ms=", KEY_WRITEBACK),
	FUSE_OPT_KEY("read_ahead_kb=", KEY_READAHEAD),
	FUSE_OPT_KEY("scan=", KEY_SCAN),
	FUSE_OPT_KEY("dedup_scope=", KEY_SCOPE),
	FUSE_OPT_KEY("store_quota=", KEY_QUOTA),
	FUSE_OPT_KEY("rebuild_state", KEY_REBUILD),
	FUSE_OPT_KEY("allow_mmap", KEY_MMAP),
	FUSE_OPT_KEY("cache_mode=", KEY_MODE),
	FUSE_OPT_KEY("remount", KEY_REMOUNT),
	FUSE_OPT_KEY("noatime", KEY_NOATIME),
	FUSE_OPT_KEY("atime", KEY_ATIME),
	/* fstab words that mean nothing to a FUSE mount. */
	FUSE_OPT_KEY("defaults", KEY_DISCARD),
	FUSE_OPT_KEY("auto", KEY_DISCARD),
	FUSE_OPT_KEY("noauto", KEY_DISCARD),
	FUSE_OPT_KEY("nofail", KEY_DISCARD),
	FUSE_OPT_KEY("_netdev", KEY_DISCARD),
	FUSE_OPT_KEY("user", KEY_DISCARD),
	FUSE_OPT_KEY("users", KEY_DISCARD),
	FUSE_OPT_KEY("nouser", KEY_DISCARD),
	FUSE_OPT_KEY("owner", KEY_DISCARD),
	FUSE_OPT_END
};

static void opts_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void opts_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("samepagefs: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* Keep the last value of an option given twice, as mount(8) does. */
static int opts_set_str(char **dst, const char *arg)
{
	const char *eq = strchr(arg, '=');
	char *v = strdup(eq ? eq + 1 : arg);

	if (!v)
		return -1;
	free(*dst);
	*dst = v;
	return 0;
}

static int opts_proc(void *data, const char *arg, int key,
		     struct fuse_args *outargs)
{
	struct opts *o = data;

	switch (key) {
	case KEY_HELP:
		o->help = true;
		return 0;
	case KEY_VERSION:
		o->version = true;
		return 0;
	case KEY_FOREGROUND:
		o->foreground = true;
		return 0;
	case KEY_DEBUG:
		/* Kept: libfuse prints the request trace for it. */
		o->debug = true;
		o->foreground = true;
		return 1;
	case KEY_RO:
		o->readonly = true;
		return 1;
	case KEY_RW:
		o->readonly = false;
		return 1;
	case KEY_NOATIME:
	case KEY_ATIME:
		/* The kernel's flag, and the daemon's reads of backing files. */
		o->noatime = key == KEY_NOATIME;
		return 1;
	case KEY_REMOUNT:
		o->remount = true;
		return 0;
	case KEY_FSNAME:
		o->has_fsname = true;
		return 1;
	case KEY_SUBTYPE:
		o->has_subtype = true;
		return 1;
	case KEY_CACHE_SIZE:
		return opts_set_str(&o->cache_size_arg, arg);
	case KEY_STATE_DIR:
		return opts_set_str(&o->state_dir_arg, arg);
	case KEY_WRITEBACK:
		return opts_set_str(&o->writeback_arg, arg);
	case KEY_READAHEAD:
		return opts_set_str(&o->readahead_arg, arg);
	case KEY_SCAN:
		return opts_set_str(&o->scan_arg, arg);
	case KEY_SCOPE:
		return opts_set_str(&o->scope_arg, arg);
	case KEY_QUOTA:
		return opts_set_str(&o->quota_arg, arg);
	case KEY_REBUILD:
		o->rebuild_state = true;
		return 0;
	case KEY_MMAP:
		o->allow_mmap = true;
		return 0;
	case KEY_MODE:
		return opts_set_str(&o->mode_arg, arg);
	case KEY_DISCARD:
		return 0;
	case FUSE_OPT_KEY_NONOPT:
		/* A path is taken whole: it may hold '='. */
		if (!o->backing_arg)
			return (o->backing_arg = strdup(arg)) ? 0 : -1;
		if (!o->mount_arg)
			return (o->mount_arg = strdup(arg)) ? 0 : -1;
		opts_error("unexpected argument '%s' (the mount point is '%s')",
			   arg, o->mount_arg);
		return -1;
	case FUSE_OPT_KEY_OPT:
		/* fstab's x-systemd.*, comment=... are for other programs. */
		if (!strncmp(arg, "x-", 2) || !strncmp(arg, "comment=", 8))
			return 0;
		return 1;
	default:
		return 1;
	}
}

int opts_parse(int argc, char *argv[], struct opts *o)
{
	memset(o, 0, sizeof(*o));
	o->args = (struct fuse_args)FUSE_ARGS_INIT(argc, argv);
	o->writeback_ms = 5000;
	o->scan = true;
	o->dedup_scope = OPTS_SCOPE_GLOBAL;
	o->cache_mode = OPTS_MODE_AUTO;
	o->read_ahead_kb = OPTS_DEFAULT_RA_KB;
	if (fuse_opt_parse(&o->args, o, opts_spec, opts_proc) == -1)
		return -1;
	return 0;
}

int opts_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -ERANGE;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	}
	if (shift && (!strcmp(end, "B") || !strcmp(end, "iB")))
		end += strlen(end);
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

const char *opts_scope_name(enum opts_scope scope)
{
	switch (scope) {
	case OPTS_SCOPE_UID:
		return "uid";
	case OPTS_SCOPE_NONE:
		return "none";
	default:
		return "global";
	}
}

/* A container's memory limit (the daemon's cgroup, v1 or v2) counts as
 * the machine's size. */
static uint64_t opts_memory_bytes(void)
{
	long pages = sysconf(_SC_PHYS_PAGES);
	long psz = sysconf(_SC_PAGESIZE);
	uint64_t mem = pages > 0 && psz > 0 ? (uint64_t)pages * psz : 0;
	uint64_t lim = memcg_limit_bytes();

	return lim && lim < mem ? lim : mem;
}

/* The position of arg among the n words (an enum's values in order), or
 * -1 if it is none of them. */
static int opts_word(const char *arg, const char *const *words, int n)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(arg, words[i]))
			return i;
	return -1;
}

/* A whole number 0..max for option name, in unit; -1 (said) if not. */
static int opts_unsigned(const char *name, const char *arg, const char *unit,
			 unsigned max, unsigned *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(arg, &end, 10);
	if (errno || *end || end == arg || *arg == '-' || v > max) {
		opts_error("invalid value for option %s: '%s' "
			   "(expected %s, 0 to %u)", name, arg, unit, max);
		return -1;
	}
	*out = (unsigned)v;
	return 0;
}

static int opts_check_values(struct opts *o)
{
	int ret;

	if (o->cache_size_arg) {
		ret = opts_parse_size(o->cache_size_arg, &o->cache_size);
		if (ret == 0 && o->cache_size < OPTS_MIN_CACHE)
			ret = -EINVAL;
		if (ret) {
			opts_error("invalid value for option cache_size: '%s' "
				   "(expected a size such as 512M or 2G, at least 1M)",
				   o->cache_size_arg);
			return -1;
		}
	} else {
		uint64_t mem = opts_memory_bytes() / 4;

		o->cache_size = mem > OPTS_MAX_DEFAULT ? OPTS_MAX_DEFAULT : mem;
		if (o->cache_size < OPTS_MIN_CACHE)
			o->cache_size = OPTS_MIN_CACHE;
	}

	if (o->writeback_arg &&
	    opts_unsigned("writeback_ms", o->writeback_arg, "milliseconds",
			  OPTS_MAX_WB_MS, &o->writeback_ms))
		return -1;
	if (o->readahead_arg &&
	    opts_unsigned("read_ahead_kb", o->readahead_arg, "KiB",
			  OPTS_MAX_RA_KB, &o->read_ahead_kb))
		return -1;

	if (o->scan_arg) {
		if (!strcmp(o->scan_arg, "1")) {
			o->scan = true;
		} else if (!strcmp(o->scan_arg, "0")) {
			o->scan = false;
		} else {
			opts_error("invalid value for option scan: '%s' "
				   "(expected 0 or 1)", o->scan_arg);
			return -1;
		}
	}

	o->store_quota = 1ull << 30;
	if (o->quota_arg) {
		ret = opts_parse_size(o->quota_arg, &o->store_quota);
		if (ret == 0 && o->store_quota < (1ull << 20))
			ret = -EINVAL;
		if (ret) {
			opts_error("invalid value for option store_quota: '%s' "
				   "(expected a size such as 256M or 1G, at least 1M)",
				   o->quota_arg);
			return -1;
		}
	}

	if (o->scope_arg) {
		static const char *const scopes[] = { "global", "uid", "none" };
		int k = opts_word(o->scope_arg, scopes, 3);

		if (k < 0) {
			opts_error("invalid value for option dedup_scope: '%s' "
				   "(expected global, uid or none)",
				   o->scope_arg);
			return -1;
		}
		o->dedup_scope = (enum opts_scope)k;
	}
	if (o->mode_arg) {
		static const char *const modes[] = { "shared", "kernel", "auto" };
		int k = opts_word(o->mode_arg, modes, 3);

		if (k < 0) {
			opts_error("invalid value for option cache_mode: '%s' "
				   "(expected shared, kernel or auto)",
				   o->mode_arg);
			return -1;
		}
		o->cache_mode = (enum opts_cache_mode)k;
	}
	return 0;
}

static int opts_check_backing(struct opts *o)
{
	struct stat st;
	int fd;

	if (stat(o->backing_arg, &st) == -1) {
		opts_error("backing directory '%s': %s", o->backing_arg,
			   strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		opts_error("backing directory '%s': %s", o->backing_arg,
			   strerror(ENOTDIR));
		return -1;
	}
	fd = open(o->backing_arg, O_RDONLY | O_DIRECTORY);
	if (fd == -1) {
		opts_error("backing directory '%s': %s", o->backing_arg,
			   strerror(errno));
		return -1;
	}
	close(fd);
	o->backing = realpath(o->backing_arg, NULL);
	if (!o->backing) {
		opts_error("backing directory '%s': %s", o->backing_arg,
			   strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * The topmost mount on path, if it is a FUSE mount, is a live file system
 * (ours or another's): mounting over it would hide it. Other mounts are fine
 * to cover (mounting over the backing directory itself is allowed). Returns
 * the mount's type in type (empty if none).
 */
static void opts_fuse_mount_at(const char *path, char *type, size_t len)
{
	struct mount_entry m;

	type[0] = '\0';
	if (!mountinfo_top(path, &m) && !strncmp(m.fstype, "fuse", 4))
		snprintf(type, len, "%s", m.fstype);
}

static int opts_check_mountpoint(struct opts *o)
{
	struct stat st;
	char type[256];
	size_t blen;

	if (stat(o->mount_arg, &st) == -1) {
		if (errno == ENOTCONN)
			opts_error("mount point '%s': %s (a file system that "
				   "died is still mounted there: fusermount3 -u it)",
				   o->mount_arg, strerror(errno));
		else
			opts_error("mount point '%s': %s", o->mount_arg,
				   strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		opts_error("mount point '%s': %s", o->mount_arg,
			   strerror(ENOTDIR));
		return -1;
	}
	o->mountpoint = realpath(o->mount_arg, NULL);
	if (!o->mountpoint) {
		opts_error("mount point '%s': %s", o->mount_arg,
			   strerror(errno));
		return -1;
	}
	opts_fuse_mount_at(o->mountpoint, type, sizeof(type));
	if (type[0]) {
		opts_error("mount point '%s': %s (%s is mounted there)",
			   o->mount_arg, strerror(EBUSY), type);
		return -1;
	}
	/* Our own lookups would walk into the mount and call ourselves. */
	blen = strlen(o->backing);
	if (!strcmp(o->backing, "/") ? strcmp(o->mountpoint, "/") != 0 :
	    !strncmp(o->mountpoint, o->backing, blen) &&
	    o->mountpoint[blen] == '/') {
		opts_error("mount point '%s': %s (it is inside the backing "
			   "directory '%s')", o->mount_arg, strerror(EINVAL),
			   o->backing);
		return -1;
	}
	return 0;
}

/* state_dir defaults to BACKING/.samepage. When it lies inside the backing
 * directory the mount hides it; remember its parent and name for that. */
static int opts_check_state_dir(struct opts *o)
{
	char *slash, *parent;
	const char *base;
	size_t blen = strlen(o->backing);

	if (o->state_dir_arg && !o->state_dir_arg[0]) {
		opts_error("invalid value for option state_dir: '' "
			   "(expected a directory)");
		return -1;
	}
	if (!o->state_dir_arg) {
		if (asprintf(&o->state_dir, "%s/.samepage",
			     strcmp(o->backing, "/") ? o->backing : "") < 0)
			goto out_nomem;
	} else if (o->state_dir_arg[0] == '/') {
		o->state_dir = strdup(o->state_dir_arg);
	} else {
		char *cwd = getcwd(NULL, 0);

		if (!cwd || asprintf(&o->state_dir, "%s/%s", cwd,
				     o->state_dir_arg) < 0) {
			free(cwd);
			goto out_nomem;
		}
		free(cwd);
	}
	if (!o->state_dir)
		goto out_nomem;

	/* Drop trailing slashes, then split off the last component. */
	for (size_t n = strlen(o->state_dir); n > 1 && o->state_dir[n - 1] == '/'; n--)
		o->state_dir[n - 1] = '\0';
	slash = strrchr(o->state_dir, '/');
	base = slash + 1;
	if (!*base || !strcmp(base, ".") || !strcmp(base, ".."))
		return 0;
	parent = strndup(o->state_dir, slash == o->state_dir ? 1 :
			 (size_t)(slash - o->state_dir));
	if (!parent)
		goto out_nomem;
	o->state_parent = realpath(parent, NULL);
	free(parent);
	o->state_name = base;
	if (o->state_parent && strcmp(o->state_parent, o->backing) &&
	    !(strcmp(o->backing, "/") == 0 ||
	      (!strncmp(o->state_parent, o->backing, blen) &&
	       o->state_parent[blen] == '/'))) {
		/* Outside the backing directory: nothing to hide. */
		free(o->state_parent);
		o->state_parent = NULL;
	}
	return 0;

out_nomem:
	opts_error("%s", strerror(ENOMEM));
	return -1;
}

/* Options we always pass, and the defaults of fsname and subtype. */
static int opts_add_fuse_args(struct opts *o)
{
	char *fsname = NULL, *escaped = NULL;
	int ret = -1;

	if (fuse_opt_add_arg(&o->args, "-odefault_permissions"))
		goto out;
	if (!o->has_subtype && fuse_opt_add_arg(&o->args, "-osubtype=samepagefs"))
		goto out;
	if (!o->has_fsname) {
		if (asprintf(&fsname, "fsname=samepage:%s", o->backing) < 0) {
			fsname = NULL;
			goto out;
		}
		if (fuse_opt_add_opt_escaped(&escaped, fsname) ||
		    fuse_opt_add_arg(&o->args, "-o") ||
		    fuse_opt_add_arg(&o->args, escaped))
			goto out;
	}
	ret = 0;
out:
	if (ret)
		opts_error("%s", strerror(ENOMEM));
	free(fsname);
	free(escaped);
	return ret;
}

int opts_check(struct opts *o)
{
	if (!o->backing_arg) {
		opts_error("missing backing directory and mount point "
			   "(try --help)");
		return -1;
	}
	if (!o->mount_arg) {
		opts_error("missing mount point (try --help)");
		return -1;
	}
	if (opts_check_values(o))
		return -1;
	if (opts_check_backing(o))
		return -1;
	if (opts_check_mountpoint(o))
		return -1;
	if (opts_check_state_dir(o))
		return -1;
	return opts_add_fuse_args(o);
}

void opts_free(struct opts *o)
{
	fuse_opt_free_args(&o->args);
	free(o->backing_arg);
	free(o->mount_arg);
	free(o->backing);
	free(o->mountpoint);
	free(o->state_dir);
	free(o->state_parent);
	free(o->cache_size_arg);
	free(o->state_dir_arg);
	free(o->writeback_arg);
	free(o->readahead_arg);
	free(o->scan_arg);
	free(o->scope_arg);
	free(o->quota_arg);
	free(o->mode_arg);
}

void opts_usage(const char *prog)
{
	printf("usage: %s [-f] [-d] [-o opt[,opt...]] BACKING_DIR MOUNTPOINT\n"
	       "\n"
	       "Mounts BACKING_DIR on MOUNTPOINT and serves every file from one\n"
	       "page cache in which identical 4 KiB pages are stored once.\n"
	       "\n"
	       "    -h, --help             print this help and exit\n"
	       "    -V, --version          print the version and exit\n"
	       "    -f                     stay in the foreground\n"
	       "    -d, -o debug           foreground, trace every request\n"
	       "    -o cache_size=SIZE     memory for cached pages (K, M, G, T;\n"
	       "                           default 1/4 of RAM, at most 4G)\n"
	       "    -o state_dir=DIR       fingerprint store (default\n"
	       "                           BACKING_DIR/.samepage, hidden)\n"
	       "    -o writeback_ms=N      dirty data reaches the disk within N ms\n"
	       "                           (default 5000)\n"
	       "    -o read_ahead_kb=N     the kernel's readahead for files it\n"
	       "                           caches (default 4096; 0: the kernel's)\n"
	       "    -o scan=0|1            run the duplicate page scanner (default 1)\n"
	       "    -o dedup_scope=global|uid|none\n"
	       "                           which files may share pages (default global)\n"
	       "    -o store_quota=SIZE    most the store may use (default 1G)\n"
	       "    -o rebuild_state       start afresh from a store that cannot be\n"
	       "                           used (another version, corrupt)\n"
	       "    -o allow_mmap          let the kernel cache files too, so that\n"
	       "                           shared mmap works (costs a second copy)\n"
	       "    -o cache_mode=shared|kernel|auto\n"
	       "                           who caches a file: samepage, merged,\n"
	       "                           the kernel, or per file at open: the\n"
	       "                           kernel unless it shares (default auto)\n"
	       "    -o ro                  read-only mount\n"
	       "    -o noatime             reads leave files' access times alone\n"
	       "    -o remount,ro|rw       set or clear the read-only flag of\n"
	       "                           the mount at MOUNTPOINT (as mount(8)\n"
	       "                           -o remount does), then exit\n"
	       "\n"
	       "FUSE options:\n", prog);
	fflush(stdout);
	fuse_lowlevel_help();
}
