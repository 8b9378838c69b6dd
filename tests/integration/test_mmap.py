"""Memory maps through the mount.

Files are opened direct_io, so the kernel keeps no second copy. libfuse 3.14
cannot ask for FUSE_DIRECT_IO_ALLOW_MMAP, so a shared writable map fails with
ENODEV then, while private maps (exec, read-only loaders) work. The
allow_mmap option trades the second copy for shared maps; cache_mode=kernel
gives them without one.
"""

import errno
import mmap
import os
import unittest

import sp


class DefaultDirectIO(sp.MountTestCase):
    def test_shared_map_enodev_private_map_reads_file(self):
        p = self.m.path('f')
        sp.write_file(p, b'abcdef' * 1000)
        fd = os.open(p, os.O_RDWR)
        try:
            with self.assertRaises(OSError) as cm:
                mmap.mmap(fd, 6000, mmap.MAP_SHARED)
            self.assertEqual(cm.exception.errno, errno.ENODEV)
            m = mmap.mmap(fd, 6000, mmap.MAP_PRIVATE)
            self.assertEqual(m[:12], b'abcdefabcdef')
            m.close()
        finally:
            os.close(fd)


class AllowMmap(sp.MountTestCase):
    mount_opts = ('allow_mmap',)

    def test_shared_map_writes_reach_file_and_backing(self):
        p = self.m.path('f')
        sp.write_file(p, b'x' * 8192)
        fd = os.open(p, os.O_RDWR)
        try:
            m = mmap.mmap(fd, 8192, mmap.MAP_SHARED)
            m[4096:4101] = b'hello'
            m.flush()
            m.close()
        finally:
            os.close(fd)
        self.assertEqual(sp.read_file(p)[4096:4101], b'hello')
        self.assertEqual(self.m.stop(), 0)
        self.assertEqual(sp.read_file(self.m.bpath('f'))[4094:4103],
                         b'xxhelloxx')


class KernelCacheMode(AllowMmap):
    # The kernel caches the files and samepage keeps no copy: shared maps
    # work as with allow_mmap, without the second copy.
    mount_opts = ('cache_mode=kernel',)


if __name__ == '__main__':
    sp.main()
