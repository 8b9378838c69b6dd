/*
 * bdi: the kernel's settings for the mount as a whole that the FUSE
 * protocol cannot carry. Its readahead for the files it caches (kernel
 * mode) starts at min(128 KiB, max_readahead) when the mount is made, and
 * only sysfs raises it (/sys/class/bdi/MAJ:MIN/read_ahead_kb, root only).
 * No state, no locks.
 */
#ifndef SAMEPAGE_FS_BDI_H
#define SAMEPAGE_FS_BDI_H

/* Set the readahead, in KiB, of the FUSE mount at mountpoint (a canonical
 * path); its device number is taken from /proc/self/mountinfo. Call it
 * once the kernel has the INIT reply (it sets the value then). Returns 0
 * or -errno (-ENOENT: no such mount). */
int bdi_set_read_ahead(const char *mountpoint, unsigned kb);

#endif
