"""Memory maps through the mount.

Shared-mode files are opened direct_io, so the kernel keeps no second copy
of what is read. libfuse 3.14 cannot ask for FUSE_DIRECT_IO_ALLOW_MMAP;
samepagefs asks for it itself (fs/devio.c) where the kernel offers it
(Linux >= 6.9), and shared maps then work, kept coherent with reads and
writes by the kernel; elsewhere they fail with ENODEV. Private maps (exec,
read-only loaders) work everywhere. The allow_mmap option drops direct
I/O; cache_mode=kernel gives shared maps without a second copy.
"""

import mmap
import os
import time
import unittest

import sp

PAGE = 4096


def check_map_of_append_handle(t):
    """The kernel writes a mapping back through any handle of the file;
    one opened with O_APPEND must not turn those writes into appends."""
    p = t.m.path('ap')
    sp.write_file(p, b'a' * (2 * PAGE))
    fd = os.open(p, os.O_RDWR | os.O_APPEND)
    try:
        m = mmap.mmap(fd, 2 * PAGE, mmap.MAP_SHARED)
        m[0:4] = b'MMAP'
        m.flush()
        m.close()
    finally:
        os.close(fd)
    want = b'MMAP' + b'a' * (2 * PAGE - 4)
    t.assertEqual(sp.read_file(p), want)
    t.assertEqual(t.m.stop(), 0)
    t.assertEqual(sp.read_file(t.m.bpath('ap')), want)


class SharedMode(sp.MountTestCase):
    mount_opts = ('cache_size=64M', 'cache_mode=shared')

    def setUp(self):
        super().setUp()
        if not sp.kernel_allows_direct_mmap():
            self.skipTest('this kernel has no FUSE_DIRECT_IO_ALLOW_MMAP')

    def test_shared_map_is_coherent_with_reads_and_writes(self):
        p = self.m.path('f')
        sp.write_file(p, b'x' * (3 * PAGE))
        fd = os.open(p, os.O_RDWR)
        other = os.open(p, os.O_RDWR)
        try:
            m = mmap.mmap(fd, 3 * PAGE, mmap.MAP_SHARED)
            try:
                m[PAGE:PAGE + 5] = b'hello'
                # No msync: a read through another handle sees it.
                self.assertEqual(os.pread(other, 9, PAGE - 2), b'xxhelloxx')
                # A write through another handle shows in the map.
                os.pwrite(other, b'WRITE', 2 * PAGE)
                self.assertEqual(m[2 * PAGE:2 * PAGE + 6], b'WRITEx')
            finally:
                m.close()
        finally:
            os.close(other)
            os.close(fd)
        self.assertEqual(self.m.stop(), 0)
        data = sp.read_file(self.m.bpath('f'))
        self.assertEqual(data[PAGE - 2:PAGE + 7], b'xxhelloxx')
        self.assertEqual(data[2 * PAGE:2 * PAGE + 6], b'WRITEx')

    def test_write_through_map_leaves_the_merged_copy(self):
        data = os.urandom(16 * PAGE)
        for n in ('a', 'b'):
            sp.write_file(self.m.path(n), data)
        self.m.stop()
        self.m.start()
        for n in ('a', 'b'):
            self.assertEqual(sp.read_file(self.m.path(n)), data)
        self.m.scan()
        self.assertGreaterEqual(self.m.stats()['pages_sharing'], 16)
        fd = os.open(self.m.path('a'), os.O_RDWR)
        try:
            m = mmap.mmap(fd, len(data), mmap.MAP_SHARED)
            m[3 * PAGE:3 * PAGE + 4] = b'MMAP'
            m.flush()
            m.close()
        finally:
            os.close(fd)
        want = data[:3 * PAGE] + b'MMAP' + data[3 * PAGE + 4:]
        self.assertEqual(sp.read_file(self.m.path('a')), want)
        self.assertEqual(sp.read_file(self.m.path('b')), data)
        self.assertEqual(self.m.stop(), 0)
        self.assertEqual(sp.read_file(self.m.bpath('a')), want)
        self.assertEqual(sp.read_file(self.m.bpath('b')), data)

    def test_map_of_append_handle_writes_in_place(self):
        check_map_of_append_handle(self)

    def test_private_map_reads_file(self):
        p = self.m.path('f')
        sp.write_file(p, b'abcdef' * 1000)
        fd = os.open(p, os.O_RDONLY)
        try:
            m = mmap.mmap(fd, 6000, mmap.MAP_PRIVATE, mmap.PROT_READ)
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


    def test_map_of_append_handle_writes_in_place(self):
        check_map_of_append_handle(self)


class KernelCacheMode(AllowMmap):
    # The kernel caches the files and samepage keeps no copy: shared maps
    # work as with allow_mmap, without the second copy.
    mount_opts = ('cache_mode=kernel',)

    def test_map_of_direct_handle_is_written_back(self):
        # The kernel writes the mapping back through the O_DIRECT handle;
        # the daemon must not ask it to drop pages it holds under
        # writeback until the reply (that waited forever).
        p = self.m.path('d')
        sp.write_file(p, b'a' * (16 * PAGE))

        def child():
            fd = os.open(p, os.O_RDWR | os.O_DIRECT)
            m = mmap.mmap(fd, 16 * PAGE, mmap.MAP_SHARED)
            for r in range(20):
                m[0:PAGE] = bytes([65 + r]) * PAGE
                m[2 * PAGE:2 * PAGE + 100] = b'z' * 100
                m.flush()
            m.close()
            os.close(fd)
            return 'ok'

        pid, r = sp.fork_json(child)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            time.sleep(0.05)
        else:
            sp.abort_fuse_connection(self.m.mnt)
            os.waitpid(pid, 0)
            sp.read_json(r, b'null')
            self.fail('msync of a map of an O_DIRECT handle hung')
        self.assertEqual(sp.read_json(r, b'null'), 'ok')
        want = b'T' * PAGE + b'a' * PAGE + b'z' * 100 + b'a' * (14 * PAGE - 100)
        self.assertEqual(sp.read_file(p), want)
        self.assertEqual(self.m.stop(), 0)
        self.assertEqual(sp.read_file(self.m.bpath('d')), want)


if __name__ == '__main__':
    sp.main()
