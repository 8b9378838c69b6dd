"""Reflinked files on an XFS backing directory share frames by extent.

Each test backs a mount with a fresh reflink-capable XFS on a loop device.
Clones (`cp --reflink=always`) share physical extents, which the daemon
recognises with FIEMAP: the second and later clones of a page map the
resident frame without reading or hashing it. The tests check the saving,
COW isolation between clones, clones made through the mount, that extent
changes behind the mount never serve stale frames, and a file that is half
reflinked and half copied.
"""

import hashlib
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4096


class ReflinkCase(sp.MountTestCase):
    """sp.MountTestCase (its tearDown too) with the mount's backing on a
    fresh XFS image."""

    mount_opts = ('cache_size=256M',)
    image_mb = 512

    def setUp(self):
        sp.require_env()
        if not os.path.exists('/dev/loop-control'):
            self.skipTest('no loop devices')
        if not shutil.which('cp'):
            self.skipTest('cp is missing')
        self.img = sp.XfsImage(self.image_mb)
        self.img.__enter__()
        self.addCleanup(self.img.__exit__, None, None, None)
        self.start_mount(backing=self.img.dir)

    def assert_same(self, got, want, what):
        if got != want:
            d = sp.first_diff(got, want)
            self.fail(f'{what}: len got {len(got)} want {len(want)}, first '
                      f'difference at byte {d} (page {d // PAGE}): got '
                      f'{got[d:d + 8].hex()} want {want[d:d + 8].hex()}')

    def clones(self, size, n, prefix='c'):
        """prefix0 with random data and n-1 reflinked clones of it, made in
        the backing directory; returns (names, data)."""
        data = os.urandom(size)
        names = [f'{prefix}{i}' for i in range(n)]
        sp.write_synced(self.m.bpath(names[0]), data)
        for name in names[1:]:
            sp.reflink(self.m.bpath(names[0]), self.m.bpath(name))
        return names, data


class EightClones(ReflinkCase):
    def test_8_reflinked_64m_clones_one_copy_cached_hashed_once(self):
        size = 64 * MiB
        npages = size // PAGE
        names, data = self.clones(size, 8)
        want = hashlib.sha1(data).hexdigest()
        del data
        rss0 = self.m.anon_bytes()
        for n in names:
            self.assertEqual(sp.sha1_path(self.m.path(n)), want, n)
        rss1 = self.m.anon_bytes()
        st = self.m.stats()
        self.assertLessEqual(st['cache_bytes'], 1.15 * size + 2 * MiB, st)
        self.assertGreaterEqual(st['reflink_merges'], 0.95 * 7 * npages, st)
        self.assertLessEqual(st['hashes_computed'], 1.1 * npages, st)
        self.assertGreaterEqual(st['pages_sharing'], 0.95 * 7 * npages, st)
        if not sp.SANITIZED:  # ASan's own memory is not the daemon's
            self.assertLessEqual(rss1 - rss0, 1.15 * size + 8 * MiB,
                                 f'Pss_Anon {rss0 >> 20} -> {rss1 >> 20} MiB')
        # The clones were recognised by extent: the disk was read once.
        self.assertLessEqual(st['backing_read_bytes'], 1.15 * size, st)


class CloneIsolation(ReflinkCase):
    mount_opts = ('cache_size=256M', 'writeback_ms=60000')

    def test_write_to_one_clone_never_shows_in_another(self):
        size = 8 * MiB
        names, data = self.clones(size, 4)
        for n in names:
            self.assert_same(sp.read_file(self.m.path(n)), data, n)
        model = bytearray(data)
        writes = [(0, 1), (PAGE - 1, 2), (5 * PAGE, PAGE),
                  (MiB + 100, 3 * PAGE), (size - 1, 1)]
        with open(self.m.path(names[1]), 'r+b', buffering=0) as f:
            for off, length in writes:
                piece = os.urandom(length)
                os.pwrite(f.fileno(), piece, off)
                model[off:off + length] = piece
                lo, hi = max(0, off - PAGE), off + length + PAGE
                for n in names[:1] + names[2:]:
                    with open(self.m.path(n), 'rb') as g:
                        g.seek(lo)
                        self.assert_same(
                            g.read(hi - lo), data[lo:hi],
                            f'{n} after write {off}+{length} to {names[1]}')
        self.assert_same(sp.read_file(self.m.path(names[1])), bytes(model),
                         names[1])
        st = self.m.stats()
        self.assertGreater(st['cow_breaks'], 0, st)
        self.assertEqual(self.m.stop(), 0)
        self.assert_same(sp.read_file(self.m.bpath(names[1])), bytes(model),
                         f'backing {names[1]}')
        for n in names[:1] + names[2:]:
            self.assert_same(sp.read_file(self.m.bpath(n)), data,
                             f'backing {n}')


class CloneThroughMount(ReflinkCase):
    def settle(self):
        """Give a copy that went through the cache as new pages the time
        to reach the disk and be merged: two full scans, as for any page
        written back."""
        self.m.set('pages_to_scan', 1 << 20)
        self.m.set('sleep_millisecs', 1)
        os.sync()
        self.m.scan(wait=True)
        self.m.scan(wait=True)

    def test_cp_reflink_auto_and_copy_file_range_on_mount_share_frames(self):
        size = 16 * MiB
        npages = size // PAGE
        data = os.urandom(size)
        sp.write_synced(self.m.bpath('src'), data)
        self.assert_same(sp.read_file(self.m.path('src')), data, 'src')
        st0 = self.m.stats()

        subprocess.run(['cp', '--reflink=auto', self.m.path('src'),
                        self.m.path('dst1')], check=True)
        self.assert_same(sp.read_file(self.m.path('dst1')), data, 'dst1 (cp)')
        self.settle()
        st1 = self.m.stats()
        self.assertGreaterEqual(st1['pages_sharing'] - st0['pages_sharing'],
                                0.95 * npages, f'{st0}\n{st1}')
        self.assertLessEqual(st1['cache_bytes'] - st0['cache_bytes'],
                             0.1 * size, f'{st0}\n{st1}')

        fs = os.open(self.m.path('src'), os.O_RDONLY)
        fd = os.open(self.m.path('dst2'), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            done = 0
            while done < size:
                n = os.copy_file_range(fs, fd, size - done, done, done)
                self.assertGreater(n, 0, f'copy_file_range stopped at {done}')
                done += n
        finally:
            os.close(fd)
            os.close(fs)
        self.assert_same(sp.read_file(self.m.path('dst2')), data,
                         'dst2 (copy_file_range)')
        self.settle()
        st2 = self.m.stats()
        self.assertGreaterEqual(st2['pages_sharing'] - st1['pages_sharing'],
                                0.95 * npages, f'{st1}\n{st2}')
        self.assertLessEqual(st2['cache_bytes'] - st0['cache_bytes'],
                             0.1 * size, f'{st0}\n{st2}')

        # The clones are still separate files.
        with open(self.m.path('dst1'), 'r+b') as f:
            f.seek(12345)
            f.write(b'clone one')
        self.assert_same(sp.read_file(self.m.path('src')), data, 'src after '
                         'writing dst1')
        self.assert_same(sp.read_file(self.m.path('dst2')), data, 'dst2 after '
                         'writing dst1')
        self.assertEqual(self.m.stop(), 0)
        for n in ('src', 'dst2'):
            self.assert_same(sp.read_file(self.m.bpath(n)), data,
                             f'backing {n}')
        want1 = bytearray(data)
        want1[12345:12354] = b'clone one'
        self.assert_same(sp.read_file(self.m.bpath('dst1')), bytes(want1),
                         'backing dst1')


class ExtentChanges(ReflinkCase):
    def test_extent_changes_behind_mount_seen_fresh_never_stale(self):
        size = 8 * MiB
        names, data = self.clones(size, 4)
        other = os.urandom(4 * MiB)
        sp.write_synced(self.m.bpath('other'), other)
        for n in names + ['other']:
            self.assert_same(sp.read_file(self.m.path(n)), data if n != 'other'
                             else other, f'{n} first read')
        want = {n: bytearray(data) for n in names}
        want['other'] = bytearray(other)

        def check_all(after):
            for n, w in want.items():
                self.assert_same(sp.read_file(self.m.path(n)), bytes(w),
                                 f'{n} after {after}')
                self.assertEqual(os.stat(self.m.path(n)).st_size, len(w),
                                 f'{n} size after {after}')

        # 1. writes behind the mount into c1 (XFS unshares those extents)
        with open(self.m.bpath('c1'), 'r+b') as f:
            for off, length in [(0, PAGE), (MiB + 100, 3 * PAGE),
                                (size - PAGE, PAGE)]:
                piece = os.urandom(length)
                f.seek(off)
                f.write(piece)
                want['c1'][off:off + length] = piece
            f.flush()
            os.fsync(f.fileno())
        check_all('writing c1 behind the mount')

        # 2. punch holes in c2, aligned and unaligned
        fd = os.open(self.m.bpath('c2'), os.O_RDWR)
        try:
            for off, length in [(2 * MiB, 64 * KiB), (3 * MiB + 5, 10000)]:
                sp.fallocate(fd, sp.FALLOC_FL_PUNCH_HOLE
                             | sp.FALLOC_FL_KEEP_SIZE, off, length)
                want['c2'][off:off + length] = bytes(length)
            os.fsync(fd)
        finally:
            os.close(fd)
        check_all('punching c2 behind the mount')

        # 3. zero a range of c3 and extend it with fallocate
        fd = os.open(self.m.bpath('c3'), os.O_RDWR)
        try:
            sp.fallocate(fd, sp.FALLOC_FL_ZERO_RANGE, 4 * MiB, MiB)
            want['c3'][4 * MiB:5 * MiB] = bytes(MiB)
            sp.fallocate(fd, 0, size, MiB)
            want['c3'] += bytes(MiB)
            os.fsync(fd)
        finally:
            os.close(fd)
        check_all('fallocate on c3 behind the mount')

        # 4. re-clone another file over c0
        sp.reflink(self.m.bpath('other'), self.m.bpath('c0'))
        want['c0'] = bytearray(other)
        check_all('re-cloning other over c0 behind the mount')

        # 5. a cached file deleted behind the mount frees its blocks; a new
        # file is likely to get the same physical addresses, and must not
        # be served the dead file's frames.
        victim = os.urandom(16 * MiB)
        sp.write_synced(self.m.bpath('victim'), victim)
        self.assert_same(sp.read_file(self.m.path('victim')), victim, 'victim')
        os.unlink(self.m.bpath('victim'))
        os.sync()
        fresh = os.urandom(16 * MiB)
        sp.write_synced(self.m.bpath('fresh'), fresh)
        want['fresh'] = bytearray(fresh)
        check_all('deleting victim and writing fresh behind the mount')


class HalfReflinked(ReflinkCase):
    def test_partly_reflinked_partly_copied_file_ends_up_fully_merged(self):
        size = 16 * MiB
        npages = size // PAGE
        data = os.urandom(size)
        sp.write_synced(self.m.bpath('master'), data)
        sp.reflink(self.m.bpath('master'), self.m.bpath('half'))
        # Rewrite the second half with the same bytes: XFS gives it new
        # blocks, so only the first half still shares extents with master.
        with open(self.m.bpath('half'), 'r+b') as f:
            f.seek(size // 2)
            f.write(data[size // 2:])
            f.flush()
            os.fsync(f.fileno())
        self.m.set('pages_to_scan', 1 << 20)
        self.m.set('sleep_millisecs', 1)
        self.assert_same(sp.read_file(self.m.path('master')), data, 'master')
        st0 = self.m.stats()
        self.assert_same(sp.read_file(self.m.path('half')), data, 'half')
        self.m.scan(wait=True)
        self.m.scan(wait=True)
        st1 = self.m.stats()
        diff = {k: st1[k] - st0[k] for k in ('pages_sharing', 'cache_bytes',
                                             'reflink_merges',
                                             'content_merges')}
        msg = f'growth {diff}\nbefore {st0}\nafter {st1}'
        self.assertGreaterEqual(diff['pages_sharing'], 0.98 * npages, msg)
        self.assertLessEqual(diff['cache_bytes'], 0.05 * size, msg)
        self.assertGreaterEqual(diff['reflink_merges'], 0.45 * npages, msg)
        self.assertGreaterEqual(diff['content_merges'], 0.45 * npages, msg)
        self.assert_same(sp.read_file(self.m.path('half')), data, 'half again')


if __name__ == '__main__':
    sp.main()
