/*
 * remount: `mount -o remount,ro|rw MOUNTPOINT` of a running mount. mount(8)
 * hands a remount of a fuse.samepagefs entry to us, as it hands the first
 * mount; this turns it into mount(2) with MS_REMOUNT on the mount point,
 * keeping its other flags (nosuid, nodev, noexec, atime), and exits. No
 * daemon is started and the running one is not told: a mount made with
 * -o ro stays read-only in the daemon whatever the kernel's flag says.
 */
#ifndef SAMEPAGE_FS_REMOUNT_H
#define SAMEPAGE_FS_REMOUNT_H

#include <stdbool.h>

/* 0, or -errno after saying what is wrong on stderr. */
int remount_mounted(const char *mount_arg, bool readonly);

#endif
