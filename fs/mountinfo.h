/*
 * mountinfo: what /proc/self/mountinfo says is mounted at a path. The
 * option checks use it to refuse a mount over a live FUSE file system,
 * bdi.c to find the mount's device. No state, no locks.
 */
#ifndef SAMEPAGE_FS_MOUNTINFO_H
#define SAMEPAGE_FS_MOUNTINFO_H

#include <stddef.h>

struct mount_entry {
	char dev[32];        /* "MAJ:MIN" */
	char fstype[256];    /* "fuse.samepagefs", "xfs", ... */
};

/* The topmost mount at path (a canonical path): 0, -ENOENT if nothing is
 * mounted there, or -errno if mountinfo cannot be read. */
int mountinfo_top(const char *path, struct mount_entry *out);

#endif
