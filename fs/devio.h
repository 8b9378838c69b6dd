/*
 * devio: the daemon's reads and writes of /dev/fuse, taken over from
 * libfuse (fuse_session_custom_io) for one purpose: libfuse 3.14 cannot
 * ask the kernel for FUSE_DIRECT_IO_ALLOW_MMAP (protocol 7.39, Linux
 * 6.6; asked for from 7.40, Linux 6.9, see devio.c), without which mmap(MAP_SHARED) of a file opened with FUSE direct
 * I/O, as shared-mode files are, fails with ENODEV. Where the kernel's
 * INIT request offers the flag, its reply asks for it; the kernel then
 * keeps a mapped file's pages coherent with direct reads and writes
 * (writing the mapping back before them, dropping its pages after a
 * write). Every other request and reply passes as it is, with read(2)
 * and writev(2), as libfuse does without splice (the daemon takes
 * write data in its own buffers).
 *
 * Locking: the INIT request is read and answered by one worker thread
 * before the kernel sends any other; the state is atomic.
 */
#ifndef SAMEPAGE_FS_DEVIO_H
#define SAMEPAGE_FS_DEVIO_H

#include "fs.h"

/* After fuse_session_mount(): 0 or -errno. */
int devio_attach(struct fuse_session *se);

#endif
