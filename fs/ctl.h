/*
 * ctl: the control interface of a mount, as virtual extended attributes.
 *
 * Owns the names under "samepage.": they are answered here, never passed to
 * the backing file system and never listed by listxattr. samepagectl uses
 * exactly these:
 *
 *   on the mount root
 *     get samepage.version    "samepage <version>\n"
 *     get samepage.stats      "name value\n" per counter (cache + dedup)
 *     get samepage.knobs      "name value\n" per run-time knob
 *     get samepage.histogram  "lo hi frames mappings\n" per non-empty
 *                             bucket of frames by number of mappers
 *     get samepage.state_dir  the absolute path of the state directory
 *                             (the store's; state_dir=), then "\n"; uid 0
 *                             or the uid that mounted only (EPERM)
 *     set samepage.set        "key=value": cache_size, or a dedup knob
 *     set samepage.scan       "start" or "wait" (for the end of a full scan)
 *   on a regular file
 *     get samepage.file       resident_pages, shared_pages, zero_pages,
 *                             reflink_pages, dirty_pages, then one
 *                             "sharer <pages> <path>" line per other file
 *                             sharing pages with it, the path relative to
 *                             the mount root ("(deleted)" if it has none);
 *                             newline and backslash in a path are written
 *                             as \012 and \134.
 *
 * Setting needs uid 0 or the uid that mounted. Values are text, without a
 * trailing NUL; a trailing newline in a set value is ignored.
 *
 * Locking: the file report holds itab->lock around cfile_share_report(),
 * which takes the cache's locks inside it (the order of inode.h), and pins
 * the sharers' inodes to read their names after.
 *
 * Errors: 0 or -errno. ENODATA for a name this inode does not answer,
 * EOPNOTSUPP for setting a name that cannot be set there, EINVAL for a bad
 * value or an unknown key, EPERM for a caller who may not tune the mount.
 */
#ifndef SAMEPAGE_FS_CTL_H
#define SAMEPAGE_FS_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct spfs;
struct inode;

#define CTL_PREFIX "samepage."

static inline bool ctl_owns(const char *name)
{
	return __builtin_strncmp(name, CTL_PREFIX, sizeof(CTL_PREFIX) - 1) == 0;
}

/* The value of name on in: *out is malloc'ed, *len bytes long. *slack is
 * what a size query should add, as counters may grow longer in between. */
int ctl_get(struct spfs *fs, struct inode *in, const char *name,
	    char **out, size_t *len, size_t *slack, uid_t caller);
int ctl_set(struct spfs *fs, struct inode *in, const char *name,
	    const char *value, size_t size, uid_t caller);

#endif
