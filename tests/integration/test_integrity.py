"""The shared cache never serves another moment's bytes.

Each test drives one race or sequence into the interleaving that used to
serve stale data, with the daemon's pause points (builds with
-Dfailpoints=true; skipped elsewhere) instead of sleeps:

* a clone made through the mount whose block identity was carried by a
  frame that never held the block (merged by content), after the block
  was rewritten in place;
* writeback that made a page evictable before the file's identity and
  extent map followed the disk: the page is evicted and refilled from a
  clone's frame of the old block;
* fsync racing a pass of the writeback thread: fsync returns only once
  the thread's writes are on disk;
* a file truncated behind the mount: a read past its new end is short;
* a disk that refuses every write under a full cache: the writer gets an
  error after a bounded wait, and the log says why;
* writeback_ms=0 is write-through.
"""

import ctypes
import errno
import fcntl
import os
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4096

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_SHARED = 0x2000


def page_shared(path, index):
    """Does FIEMAP call page index of path shared (reflinked)?"""
    head = struct.pack('=QQIIII', index * PAGE, PAGE, FIEMAP_FLAG_SYNC, 0, 1,
                       0)
    buf = bytearray(head + bytes(56))
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
    finally:
        os.close(fd)
    mapped = struct.unpack_from('=I', buf, 20)[0]
    if not mapped:
        return False
    flags = struct.unpack_from('=I', buf, 32 + 40)[0]
    return bool(flags & FIEMAP_EXTENT_SHARED)


def wait_unshared(path, index, fsdir):
    """XFS frees an unlinked inode's blocks in the background; statfs
    pushes that work on. Bounded: the kernel's work, not ours."""
    for _ in range(10000):
        if not page_shared(path, index):
            return
        os.statvfs(fsdir)
        time.sleep(0.001)
    raise AssertionError(f'{path} page {index} still shared')


class Paused:
    """Arm a pause point; wait() until a thread stopped there; always
    released on exit."""

    def __init__(self, m, name):
        self.m = m
        self.key = 'pause_' + name

    def __enter__(self):
        self.m.set(self.key, '1')
        return self

    def wait(self):
        self.m.set(self.key, 'wait')

    def release(self):
        self.m.set(self.key, '0')

    def __exit__(self, *exc):
        self.release()
        return False


class XfsMountCase(unittest.TestCase):
    """A mount over a fresh reflink-capable XFS."""

    mount_opts = ('cache_size=1M', 'writeback_ms=50')

    def setUp(self):
        sp.require_env()
        self.xfs = sp.XfsImage()
        self.xfs.__enter__()
        self.addCleanup(self.xfs.__exit__)
        self.backing = os.path.join(self.xfs.dir, 'b')
        os.mkdir(self.backing)

    def mount(self):
        self.m = sp.Mount(opts=self.mount_opts, backing=self.backing)
        self.m.start()
        self.addCleanup(self.m.cleanup)
        sp.require_failpoints(self.m, 'pause_wb_before_io')
        return self.m

    def write_backing(self, name, data):
        with open(os.path.join(self.backing, name), 'wb') as f:
            f.write(data)
            os.fsync(f.fileno())


class TestBlockIdentity(XfsMountCase):
    mount_opts = ('cache_size=64M',)

    def test_identity_merged_by_content_is_not_trusted_after_rewrite(self):
        data = os.urandom(16 * PAGE)
        self.write_backing('a', data)
        self.write_backing('r', data)
        m = self.mount()
        self.assertEqual(sp.read_file(m.path('r')), data)
        fa = os.open(m.path('a'), os.O_RDWR)
        self.addCleanup(os.close, fa)
        fb = os.open(m.path('b'), os.O_RDWR | os.O_CREAT, 0o644)
        self.assertEqual(os.copy_file_range(fa, fb, len(data), 0, 0),
                         len(data))
        os.close(fb)
        self.assertEqual(sp.read_file(m.path('b')), data)
        os.unlink(m.path('b'))
        wait_unshared(os.path.join(self.backing, 'a'), 0, self.xfs.dir)
        new = b'\xd7' * PAGE
        os.pwrite(fa, new, 0)
        os.fsync(fa)
        # A's pages go: its mtime moves behind the mount, then an open
        # revalidates it.
        st = os.stat(os.path.join(self.backing, 'a'))
        os.utime(os.path.join(self.backing, 'a'),
                 ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
        fa2 = os.open(m.path('a'), os.O_RDWR)
        self.addCleanup(os.close, fa2)
        fc = os.open(m.path('c'), os.O_RDWR | os.O_CREAT, 0o644)
        self.addCleanup(os.close, fc)
        self.assertEqual(os.copy_file_range(fa2, fc, len(data), 0, 0),
                         len(data))
        self.assertEqual(os.pread(fc, PAGE, 0), new, 'clone C, page 0')
        self.assertEqual(os.pread(fa2, PAGE, 0), new, 'A, page 0')
        self.assertEqual(sp.read_file(m.path('r')), data, 'R unchanged')


class TestWritebackOrder(XfsMountCase):

    def test_page_refilled_after_writeback_reads_new_block(self):
        old = os.urandom(16 * PAGE)
        self.write_backing('a', old)
        sp.reflink(os.path.join(self.backing, 'a'),
                   os.path.join(self.backing, 'b'))
        self.write_backing('z', os.urandom(4 * MiB))
        m = self.mount()
        fa = os.open(m.path('a'), os.O_RDWR)
        self.addCleanup(os.close, fa)
        fb = os.open(m.path('b'), os.O_RDONLY)
        self.addCleanup(os.close, fb)
        self.assertEqual(sp.pread_all(fa, len(old), 0), old)
        self.assertEqual(sp.pread_all(fb, len(old), 0), old)
        new = b'\x5a' * PAGE
        with Paused(m, 'wb_batch_done') as p:
            os.pwrite(fa, new, 0)   # the writeback thread takes it
            p.wait()                # written, evictable, thread held
            # Everything clean leaves the 1 MiB cache.
            self.assertEqual(len(sp.read_file(m.path('z'))), 4 * MiB)
            # B's page 0 comes back from the old block...
            self.assertEqual(os.pread(fb, PAGE, 0), old[:PAGE])
            # ...and A's must not be taken for it.
            self.assertEqual(os.pread(fa, PAGE, 0), new, 'A, page 0')
        self.assertEqual(os.pread(fa, PAGE, 0), new)
        self.assertEqual(os.pread(fb, PAGE, 0), old[:PAGE])

    def test_fsync_waits_for_the_writeback_threads_pass(self):
        self.write_backing('a', os.urandom(16 * PAGE))
        m = self.mount()
        fa = os.open(m.path('a'), os.O_RDWR)
        self.addCleanup(os.close, fa)
        new = b'\xa5' * PAGE
        box = {}

        def do_fsync():
            os.fsync(fa)
            # What fsync promised, read from the disk at once.
            with open(os.path.join(self.backing, 'a'), 'rb') as f:
                box['disk'] = f.read(PAGE)

        with Paused(m, 'wb_before_io') as p:
            os.pwrite(fa, new, 0)
            p.wait()     # the thread took the page, its write not issued
            t = threading.Thread(target=do_fsync)
            t.start()
            t.join(1.0)  # a correct fsync is still waiting here
        t.join(30)
        self.assertFalse(t.is_alive(), 'fsync never returned')
        self.assertEqual(box.get('disk'), new,
                         'fsync returned before the data was on disk')


class TestShortRead(sp.MountTestCase):
    mount_opts = ('cache_size=64M',)

    def test_read_past_eof_of_file_truncated_behind_is_short(self):
        data = os.urandom(64 * PAGE)
        sp.write_file(os.path.join(self.m.backing, 'f'), data)
        fd = os.open(self.m.path('f'), os.O_RDONLY)
        try:
            # Opened and read (its last page: no readahead streams from
            # there), then cut short behind the mount.
            self.assertEqual(os.pread(fd, PAGE, 63 * PAGE), data[-PAGE:])
            os.truncate(os.path.join(self.m.backing, 'f'), 10 * PAGE + 100)
            got = os.pread(fd, 32 * PAGE, 8 * PAGE)
            self.assertEqual(got, data[8 * PAGE:10 * PAGE + 100])
            self.assertEqual(os.pread(fd, 8 * PAGE, 20 * PAGE), b'')
        finally:
            os.close(fd)


class TestFullCacheFailingDisk(sp.MountTestCase):
    mount_opts = ('cache_size=1M', 'writeback_ms=50')

    def test_writer_gets_error_after_bounded_wait(self):
        sp.require_failpoints(self.m, 'pause_wb_before_io')
        fd = os.open(self.m.path('f'), os.O_RDWR | os.O_CREAT, 0o644)
        chunk = os.urandom(256 * KiB)
        err = None
        try:
            self.m.set('fail_write', '5')
            start = time.monotonic()
            for i in range(16):          # 4 MiB into a 1 MiB cache
                try:
                    os.pwrite(fd, chunk, i * len(chunk))
                except OSError as e:
                    err = e
                    break
            waited = time.monotonic() - start
            self.m.set('fail_write', '0')
            self.assertIsNotNone(err, 'every write succeeded')
            self.assertEqual(err.errno, errno.EIO)
            self.assertLess(waited, 60)
            self.assertIn('no cache frame could be freed', self.m.log())
            # The disk works again: the error is reported once, then what
            # was taken reaches the disk.
            try:
                os.fsync(fd)
            except OSError as e:
                self.assertEqual(e.errno, errno.EIO)
                os.fsync(fd)
            n = i * len(chunk)
            self.assertEqual(sp.pread_all(fd, n, 0), chunk * i)
        finally:
            self.m.set('fail_write', '0')
            os.close(fd)
        with open(os.path.join(self.m.backing, 'f'), 'rb') as f:
            self.assertEqual(f.read(n), chunk * i)


class TestWriteThrough(sp.MountTestCase):
    mount_opts = ('cache_size=64M', 'writeback_ms=0')

    def test_write_is_on_the_backing_file_when_it_returns(self):
        fd = os.open(self.m.path('w'), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for i in range(8):
                data = os.urandom(3 * PAGE + 17)
                os.pwrite(fd, data, i * 5000)
                with open(os.path.join(self.m.backing, 'w'), 'rb') as f:
                    f.seek(i * 5000)
                    self.assertEqual(f.read(len(data)), data, i)
        finally:
            os.close(fd)
        self.assertEqual(self.m.stats()['frames_dirty'], 0)


if __name__ == '__main__':
    sp.main()
