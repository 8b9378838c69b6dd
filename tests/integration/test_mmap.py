"""Memory maps through the mount.

Shared-mode files are opened direct_io, so the kernel keeps no second copy
of what is read, and shared maps of them fail with ENODEV. The kernel's
FUSE_DIRECT_IO_ALLOW_MMAP would allow them, but a write() then goes to the
daemon while the map's pages stay in the kernel: a page faulted in
between the kernel's invalidation and the write's arrival, then dirtied
through the map, is written back over the write (check_map_and_writes_
coherent, run so in shared mode, failed in 2 of 3 runs). Private maps (exec,
read-only loaders) work everywhere. The allow_mmap option drops direct
I/O; cache_mode=kernel gives shared maps without a second copy.
"""

import errno
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


def check_map_and_writes_coherent(t):
    """One process stores into a shared map of a sparse file while another
    pwrite()s other bytes of the same pages (xfstests generic/346, holetest
    -w): neither may lose the other's bytes."""
    p = t.m.path('hole')
    npages = 1024
    with open(p, 'wb') as f:
        f.truncate(npages * PAGE)
    for rnd in range(6):
        a = (rnd * 2 + 1).to_bytes(8, 'little')
        b = (rnd * 2 + 2).to_bytes(8, 'little')
        fd = os.open(p, os.O_RDWR)
        try:
            m = mmap.mmap(fd, npages * PAGE, mmap.MAP_SHARED)
            pid = os.fork()
            if pid == 0:
                try:
                    for i in range(npages):
                        os.pwrite(fd, a, i * PAGE + 1024)
                finally:
                    os._exit(0)
            for i in range(npages):
                m[i * PAGE + 3072:i * PAGE + 3080] = b
            os.waitpid(pid, 0)
            for i in range(npages):
                t.assertEqual((m[i * PAGE + 1024:i * PAGE + 1032],
                               m[i * PAGE + 3072:i * PAGE + 3080]), (a, b),
                              f'round {rnd}, page {i}')
            m.close()
        finally:
            os.close(fd)
    data = sp.read_file(p)
    t.assertEqual(t.m.stop(), 0)
    t.assertEqual(sp.read_file(t.m.bpath('hole')), data)


class SharedMode(sp.MountTestCase):
    # Direct I/O, so that the kernel keeps no second copy: shared maps are
    # refused (see the module's comment), private ones work.
    mount_opts = ('cache_size=64M', 'cache_mode=shared')

    def test_shared_map_enodev_private_map_reads_file(self):
        p = self.m.path('f')
        sp.write_file(p, b'abcdef' * 1000)
        fd = os.open(p, os.O_RDWR)
        try:
            with self.assertRaises(OSError) as cm:
                mmap.mmap(fd, 6000, mmap.MAP_SHARED)
            self.assertEqual(cm.exception.errno, errno.ENODEV)
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

    def test_map_and_writes_to_the_same_pages_lose_nothing(self):
        check_map_and_writes_coherent(self)


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
