/*
 * opts: the command line of samepagefs and the checks made before mounting.
 *
 * Owns struct opts: our own -o options (cache_size, state_dir, writeback_ms,
 * scan, dedup_scope), the two paths, and the argument vector handed on to
 * fuse_session_new() with the standard FUSE options (ro, allow_other,
 * fsname=, ...), to which it adds default_permissions and, unless given,
 * fsname=samepage:BACKING and subtype=samepagefs.
 *
 * Both the interactive order (samepagefs -o opts BACKING MNT) and the order
 * mount.fuse3 uses (samepagefs BACKING MNT -o opts) are accepted.
 *
 * Invariants after opts_check() returned 0: backing and mountpoint are
 * absolute canonical paths of existing directories, backing is readable,
 * the mount point is not inside the backing directory nor a live FUSE mount,
 * and every value is in range.
 *
 * Locking: none; used by the main thread before the session starts and read
 * only afterwards.
 *
 * Errors: opts_parse() and opts_check() print one message naming the option
 * or path and the reason, and return -1; the caller exits with status 1.
 */
#ifndef SAMEPAGE_FS_OPTS_H
#define SAMEPAGE_FS_OPTS_H

#define FUSE_USE_VERSION 312
#include <fuse_opt.h>
#include <stdbool.h>
#include <stdint.h>

/* In the order of their names in opts.c. */
enum opts_scope {
	OPTS_SCOPE_GLOBAL,
	OPTS_SCOPE_UID,
	OPTS_SCOPE_NONE,
};

/* Who caches a file's pages (fs/ops_file.c): samepage's shared cache, the
 * kernel, or the choice at each open; in the order of their names in
 * opts.c. */
enum opts_cache_mode {
	OPTS_MODE_SHARED,
	OPTS_MODE_KERNEL,
	OPTS_MODE_AUTO,
};

struct opts {
	char *backing_arg;       /* as given */
	char *mount_arg;
	char *backing;           /* canonical, set by opts_check() */
	char *mountpoint;
	char *state_dir;         /* absolute */
	char *state_parent;      /* canonical parent of state_dir, or NULL */
	const char *state_name;  /* last component of state_dir */

	bool foreground;
	bool debug;
	bool readonly;
	bool noatime;            /* -o noatime: reads leave atime alone */
	bool help;
	bool version;
	bool remount;            /* -o remount: remount_mounted(), no daemon */

	uint64_t cache_size;
	unsigned writeback_ms;
	unsigned read_ahead_kb;   /* the kernel's readahead for the mount */
	bool scan;
	enum opts_scope dedup_scope;
	uint64_t store_quota;
	bool rebuild_state;
	bool allow_mmap;
	enum opts_cache_mode cache_mode;

	/* Raw values, validated by opts_check(). */
	char *cache_size_arg;
	char *state_dir_arg;
	char *writeback_arg;
	char *readahead_arg;
	char *scan_arg;
	char *scope_arg;
	char *quota_arg;
	char *mode_arg;
	bool has_fsname;
	bool has_subtype;

	struct fuse_args args;   /* for fuse_session_new() */
};

int opts_parse(int argc, char *argv[], struct opts *o);
int opts_check(struct opts *o);
void opts_free(struct opts *o);
void opts_usage(const char *prog);

/* "512M", "2G", "1048576": binary suffixes K, M, G, T (either case, an
 * optional trailing "B" or "iB"). Returns 0 or -EINVAL / -ERANGE. */
int opts_parse_size(const char *s, uint64_t *out);
const char *opts_scope_name(enum opts_scope scope);

#endif
