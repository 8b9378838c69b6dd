"""Caching modes (-o cache_mode): who caches a file, and switching.

In kernel mode the kernel caches the file (no direct I/O) and samepage keeps
no frames of it; in shared mode samepage caches and merges it. With auto,
each file's mode is chosen at the first open of a period in which it has
handles open: kernel, unless it is known to share (a shared extent, the
store, or what its kernel-mode reads found). Bytes must be right across
every switch, with writers, with changes behind the mount, and in the
kernel's cache kept between opens.
"""

import mmap
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402
import test_reflink  # noqa: E402

MiB = 1 << 20
PAGE = 4096


def mode_of(path):
    return sp.file_report(path)['cache_mode']


def kernel_pages(path):
    """Pages of path in the kernel's page cache (fincore opens it)."""
    r = subprocess.run(['fincore', '-b', '-n', '-o', 'PAGES', path],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


class KernelMode(sp.MountTestCase):
    # Writeback by fsync or the last close only: the tests say when.
    mount_opts = ('cache_size=64M', 'cache_mode=kernel',
                  'writeback_ms=600000')

    def test_hot_reads_stay_in_the_kernel_and_no_frames_are_kept(self):
        data = os.urandom(8 * MiB)
        sp.write_synced(self.m.bpath('u'), data)
        p = self.m.path('u')
        self.assertEqual(sp.read_file(p), data)
        st1 = self.m.stats()
        self.assertEqual(st1['direct_read_pages'], len(data) // PAGE, st1)
        self.assertLess(st1['cache_bytes'], 1 * MiB, st1)
        self.assertEqual(mode_of(p), 'kernel')
        # Read again, through a new open: the kernel kept its pages.
        self.assertEqual(sp.read_file(p), data)
        st2 = self.m.stats()
        self.assertEqual(st2['direct_read_pages'], st1['direct_read_pages'])
        self.assertEqual(st2['backing_read_bytes'], st1['backing_read_bytes'])

    def test_change_behind_the_mount_is_seen_at_next_open(self):
        p, b = self.m.path('f'), self.m.bpath('f')
        sp.write_synced(b, b'a' * (2 * PAGE))
        self.assertEqual(sp.read_file(p), b'a' * (2 * PAGE))
        st = os.stat(b)
        sp.write_synced(b, b'b' * (2 * PAGE))
        # Same size, and the mtime put back: the ctime still moves.
        os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.assertEqual(sp.read_file(p), b'b' * (2 * PAGE))

    def test_writes_reach_the_backing_file_and_other_readers(self):
        p = self.m.path('w')
        sp.write_file(p, b'x' * (3 * PAGE))
        with open(p, 'r+b') as f, open(p, 'rb') as g:
            f.seek(PAGE + 100)
            f.write(b'hello')
            f.flush()
            g.seek(PAGE + 98)
            self.assertEqual(g.read(9), b'xxhelloxx')
        # Written back at the last close; then the cache keeps nothing
        # of the file (the kernel holds its pages).
        self.assertEqual(sp.read_file(self.m.bpath('w'))[PAGE + 100:
                                                        PAGE + 105],
                         b'hello')
        st = self.m.stats()
        self.assertLess(st['cache_bytes'], 1 * MiB, st)
        self.assertEqual(st['frames_dirty'], 0, st)

    def test_written_pages_wait_for_writeback_then_go(self):
        p = self.m.path('d')
        sp.write_file(p, b'x' * (64 * PAGE))
        with open(p, 'r+b') as f:
            f.seek(8 * PAGE)
            f.write(b'y' * (16 * PAGE))
            f.flush()
            # Not written through: the write came back before the disk.
            self.assertGreater(self.m.stats()['frames_dirty'], 0)
            os.fsync(f.fileno())
            st = self.m.stats()
            self.assertEqual(st['frames_dirty'], 0, st)
            self.assertLess(st['cache_bytes'], 1 * MiB, st)
        want = b'x' * (8 * PAGE) + b'y' * (16 * PAGE) + b'x' * (40 * PAGE)
        self.assertEqual(sp.read_file(self.m.bpath('d')), want)
        self.assertEqual(sp.read_file(p), want)

    def test_kernel_readahead_is_raised_at_the_first_open(self):
        sp.write_synced(self.m.bpath('r'), b'r' * PAGE)
        self.assertEqual(sp.read_file(self.m.path('r')), b'r' * PAGE)
        self.assertEqual(bdi_read_ahead_kb(self.m.mnt), 4096)


def bdi_read_ahead_kb(mnt):
    dev = os.stat(mnt).st_dev
    with open('/sys/class/bdi/%d:%d/read_ahead_kb' % (
            os.major(dev), os.minor(dev))) as f:
        return int(f.read())


class KernelReadAheadOff(sp.MountTestCase):
    mount_opts = ('cache_size=64M', 'cache_mode=kernel', 'read_ahead_kb=0')

    def test_read_ahead_kb_0_leaves_the_kernels(self):
        sp.write_synced(self.m.bpath('r'), b'r' * PAGE)
        self.assertEqual(sp.read_file(self.m.path('r')), b'r' * PAGE)
        self.assertLessEqual(bdi_read_ahead_kb(self.m.mnt), 1024)


class AutoMode(sp.MountTestCase):
    mount_opts = ('cache_size=64M', 'cache_mode=auto')

    def test_unique_file_kernel_copies_found_and_moved_to_shared(self):
        data = os.urandom(4 * MiB)
        for n in ('a', 'b'):
            sp.write_synced(self.m.bpath(n), data)
        unique = os.urandom(4 * MiB)
        sp.write_synced(self.m.bpath('u'), unique)
        for n in ('u', 'a', 'b'):
            self.assertEqual(mode_of(self.m.path(n)), 'none')
        self.assertEqual(sp.read_file(self.m.path('u')), unique)
        for n in ('a', 'b'):
            self.assertEqual(sp.read_file(self.m.path(n)), data)
        # Reading b found a's pages (both in kernel mode, nothing
        # resident): both are marked, the unique file is not.
        for n in ('u', 'a', 'b'):
            self.assertEqual(mode_of(self.m.path(n)), 'kernel', n)
        self.assertEqual(sp.file_report(self.m.path('u'))['sharing_found'], 0)
        self.assertGreater(sp.file_report(self.m.path('a'))['sharing_found'],
                           0)
        # Next open: shared, and merged.
        for n in ('a', 'b'):
            self.assertEqual(sp.read_file(self.m.path(n)), data)
            self.assertEqual(mode_of(self.m.path(n)), 'shared', n)
        self.assertEqual(mode_of(self.m.path('u')), 'kernel')
        st = self.m.stats()
        self.assertEqual(st['mode_switches'], 2, st)
        self.assertGreaterEqual(st['pages_sharing'],
                                0.9 * len(data) // PAGE, st)

    def test_switch_to_shared_drops_the_kernels_pages(self):
        data = os.urandom(64 * PAGE)
        for n in ('a', 'b'):
            sp.write_synced(self.m.bpath(n), data)
        pa = self.m.path('a')
        with open(pa, 'rb') as held:  # one kernel-mode period for a
            self.assertEqual(held.read(), data)
            self.assertEqual(sp.read_file(self.m.path('b')), data)
            self.assertEqual(mode_of(pa), 'kernel')
            # fincore's open joins the period: the kernel holds a.
            self.assertEqual(kernel_pages(pa), 64)
        # A new period: found sharing, a moves to shared mode, and that
        # open drops the kernel's pages of it (fincore's open is it).
        self.assertEqual(kernel_pages(pa), 0)
        self.assertEqual(mode_of(pa), 'shared')
        self.assertEqual(sp.read_file(pa), data)

    def test_bytes_right_across_switches_with_writers(self):
        data = os.urandom(64 * PAGE)
        for n in ('a', 'b'):
            sp.write_synced(self.m.bpath(n), data)
        pa = self.m.path('a')
        for n in ('a', 'b'):
            self.assertEqual(sp.read_file(self.m.path(n)), data)
        # a is in the kernel's cache; it moves to shared at this open and
        # is written there, bypassing the kernel's pages of it.
        with open(pa, 'r+b') as f:
            f.seek(5 * PAGE)
            f.write(b'N' * PAGE)
        self.assertEqual(mode_of(pa), 'shared')
        want = data[:5 * PAGE] + b'N' * PAGE + data[6 * PAGE:]
        self.assertEqual(sp.read_file(pa), want)
        self.assertEqual(sp.read_file(self.m.path('b')), data)
        # Written behind the mount while closed: whatever mode comes
        # next, the new bytes are read.
        with open(self.m.bpath('a'), 'r+b') as f:
            f.seek(7 * PAGE)
            f.write(b'Q' * 10)
        want = want[:7 * PAGE] + b'Q' * 10 + want[7 * PAGE + 10:]
        self.assertEqual(sp.read_file(pa), want)
        self.assertEqual(self.m.stop(), 0)
        self.assertEqual(sp.read_file(self.m.bpath('a')), want)

    def test_shared_file_that_stopped_sharing_moves_back(self):
        data = os.urandom(64 * PAGE)
        pa, pb = self.m.path('a'), self.m.path('b')
        for n in ('a', 'b'):
            sp.write_synced(self.m.bpath(n), data)
        for _ in range(2):  # found by the kernel-mode reads, then shared
            for p in (pa, pb):
                self.assertEqual(sp.read_file(p), data)
        self.assertEqual(mode_of(pa), 'shared')
        self.m.scan()
        self.assertGreater(sp.file_report(pa)['shared_pages'], 0)
        # Still sharing after whole scans: it stays.
        self.assertEqual(sp.read_file(pa), data)
        self.assertEqual(mode_of(pa), 'shared')
        # b is rewritten: nothing of a is shared any more. After whole
        # scans a moves back to the kernel at its next open, and stays.
        other = os.urandom(64 * PAGE)
        sp.write_file(pb, other)
        self.m.scan()
        self.assertEqual(sp.file_report(pa)['shared_pages'], 0)
        switches = self.m.stats()['mode_switches']
        for _ in range(2):
            self.assertEqual(sp.read_file(pa), data)
            self.assertEqual(mode_of(pa), 'kernel')
        self.assertEqual(self.m.stats()['mode_switches'], switches + 1)
        self.assertEqual(sp.read_file(pb), other)

    def test_after_restart_only_content_records_mean_sharing(self):
        data = os.urandom(64 * PAGE)
        for n in ('a', 'b'):
            sp.write_synced(self.m.bpath(n), data)
        for _ in range(2):  # found by the kernel-mode reads, then shared
            for n in ('a', 'b'):
                self.assertEqual(sp.read_file(self.m.path(n)), data)
        # A lone file, mostly a hole, written through the mount: its zero
        # pages may be recorded, and say nothing about sharing.
        pu = self.m.path('u')
        with open(pu, 'wb') as f:
            f.truncate(4 * PAGE)
            f.write(b'X' * 100)
        self.assertEqual(sp.read_file(pu), b'X' * 100 + bytes(4 * PAGE - 100))
        self.m.scan()
        self.m.remount()
        self.assertEqual(sp.read_file(self.m.path('a')), data)
        self.assertEqual(mode_of(self.m.path('a')), 'shared')
        # The kernel caches u, so it can be mapped shared and written.
        with open(pu, 'r+b') as f:
            with mmap.mmap(f.fileno(), PAGE) as m:
                m[0:4] = b'mmap'
            self.assertEqual(mode_of(pu), 'kernel')
        self.assertEqual(sp.read_file(pu)[:104], b'mmap' + b'X' * 96 + bytes(4))


class AutoModeReflinks(test_reflink.ReflinkCase):
    mount_opts = ('cache_size=256M', 'cache_mode=auto')

    def test_reflinked_clones_are_shared_at_first_open(self):
        names, data = self.clones(8 * MiB, 4)
        for n in names:
            self.assertEqual(sp.read_file(self.m.path(n)), data, n)
            self.assertEqual(mode_of(self.m.path(n)), 'shared', n)
        st = self.m.stats()
        self.assertEqual(st['mode_switches'], 0, st)
        self.assertEqual(st['direct_read_pages'], 0, st)
        self.assertGreaterEqual(st['reflink_merges'],
                                0.95 * 3 * len(data) // PAGE, st)


if __name__ == '__main__':
    sp.main()
