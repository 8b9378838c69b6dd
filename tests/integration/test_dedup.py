"""Content merging: identical pages of different files share one frame.

Copies are made behind the mount with `cp --reflink=never` (real copies:
only their content is the same) and then read through the mount. The tests
check the saving (cache_bytes, pages_sharing, daemon Pss_Anon), copy-on-write
isolation of shared pages, re-merging after a page is written back to its
old content, the zero page, truncate/unlink of one copy, readers of shared
pages racing a verifying writer, and the max_page_sharing limit.
"""

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4096
NCOPIES = 8
LETTERS = 'ABCDEFGH'


def make_copies(m, size, prefix='copy', data=None):
    """An original of size random bytes and NCOPIES real copies of it in
    the backing directory; returns (names, data)."""
    if data is None:
        data = os.urandom(size)
    orig = m.bpath(f'{prefix}.orig')
    with open(orig, 'wb') as f:
        f.write(data)
    names = []
    for c in LETTERS[:NCOPIES]:
        name = f'{prefix}{c}'
        subprocess.run(['cp', '--reflink=never', orig, m.bpath(name)],
                       check=True)
        names.append(name)
    os.unlink(orig)
    return names, data


class DedupCase(sp.MountTestCase):
    mount_opts = ('cache_size=256M',)

    def assert_same(self, got, want, what):
        if got != want:
            d = sp.first_diff(got, want)
            self.fail(f'{what}: len got {len(got)} want {len(want)}, first '
                      f'difference at byte {d} (page {d // PAGE})')

    def read_through(self, names):
        for n in names:
            with open(self.m.path(n), 'rb', buffering=0) as f:
                while f.read(MiB):
                    pass

    def fast_scanner(self):
        self.m.set('pages_to_scan', 1 << 20)
        self.m.set('sleep_millisecs', 1)


class EightCopies(DedupCase):
    def test_8_copies_of_32m_cache_holds_one_copy(self):
        size = 32 * MiB
        npages = size // PAGE
        names, data = make_copies(self.m, size)
        want = hashlib.sha1(data).hexdigest()
        rss0 = self.m.anon_bytes()
        max_rss = rss0
        for n in names:
            self.assertEqual(sp.sha1_path(self.m.path(n)), want,
                             f'{n} content')
            max_rss = max(max_rss, self.m.anon_bytes())
        st = self.m.stats()
        self.assertLessEqual(st['cache_bytes'], 1.15 * size + 2 * MiB, st)
        self.assertGreaterEqual(st['pages_sharing'],
                                0.95 * (NCOPIES - 1) * npages, st)
        self.assertGreater(st['content_merges'], 0, st)
        if not sp.SANITIZED:  # ASan's own memory is not the daemon's
            self.assertLessEqual(max_rss - rss0, 1.15 * size + 8 * MiB,
                                 f'Pss_Anon grew {rss0 >> 20} -> {max_rss >> 20} MiB')
            self.assertLessEqual(max_rss, 1.15 * size + 32 * MiB,
                                 f'daemon Pss_Anon {max_rss >> 20} MiB')
        # A second pass is served from the merged frames, still correct.
        for n in names:
            self.assertEqual(sp.sha1_path(self.m.path(n)), want, f'{n} again')
        st2 = self.m.stats()
        self.assertLessEqual(st2['cache_bytes'], 1.15 * size + 2 * MiB, st2)


# (offset, size) of the writes into copy A: page-aligned, unaligned,
# crossing boundaries, single bytes at both ends of a page, whole pages,
# the last byte and past EOF.
COW_WRITES = [
    (0, 1), (PAGE - 1, 1), (PAGE, 1), (2 * PAGE - 1, 1),
    (3 * PAGE, PAGE), (8 * PAGE, 4 * PAGE),
    (123, 456), (5 * PAGE - 10, 20), (12 * PAGE - 100, PAGE + 200),
    (20 * PAGE + 7, 3 * PAGE + 5), (40 * PAGE + 2000, 100),
    (100 * PAGE, 64 * KiB), (300 * PAGE + 1, 2 * PAGE - 2),
    (511 * PAGE, PAGE), (512 * PAGE - 1, 1), (512 * PAGE - 10, 100),
]


class CowIsolation(DedupCase):
    mount_opts = ('cache_size=256M', 'writeback_ms=60000')

    def test_cow_write_into_merged_copy_a_other_copies_unchanged(self):
        size = 2 * MiB            # 512 pages
        names, data = make_copies(self.m, size)
        self.read_through(names)
        sharing0 = self.m.stats()['pages_sharing']
        model = bytearray(data)
        fds = {n: os.open(self.m.path(n), os.O_RDWR if n == names[0]
                          else os.O_RDONLY) for n in names}
        try:
            a = fds[names[0]]
            for off, length in COW_WRITES:
                piece = os.urandom(length)
                self.assertEqual(os.pwrite(a, piece, off), length)
                end = off + length
                if end > len(model):
                    model += bytes(end - len(model))
                model[off:end] = piece
                lo = max(0, (off // PAGE - 1) * PAGE)
                hi = (end // PAGE + 2) * PAGE
                what = f'after write {off}+{length} into {names[0]}'
                self.assert_same(sp.pread_all(a, hi - lo, lo),
                                 bytes(model[lo:hi]), what + ': copy A')
                for n in names[1:]:
                    self.assert_same(sp.pread_all(fds[n], hi - lo, lo),
                                     data[lo:hi], what + f': {n}')
            st = self.m.stats()
            for n in names[1:]:
                self.assert_same(sp.pread_all(fds[n], size + 1, 0), data,
                                 f'{n} whole file')
            self.assert_same(sp.pread_all(a, len(model) + 1, 0), bytes(model),
                             'copy A whole file')
        finally:
            for fd in fds.values():
                os.close(fd)
        self.assertGreater(sharing0, 0, 'copies were not merged before the '
                           'writes, COW was not exercised')
        self.assertGreater(st['cow_breaks'], 0, st)
        self.assertEqual(self.m.stop(), 0)
        self.assert_same(sp.read_file(self.m.bpath(names[0])), bytes(model),
                         f'backing {names[0]}')
        for n in names[1:]:
            self.assert_same(sp.read_file(self.m.bpath(n)), data,
                             f'backing {n}')

    def test_cow_write_through_second_mapping_of_same_copy(self):
        """Two fds of copy A and a read-only fd of copy B: a write through
        one fd of A is seen through the other, never through B."""
        names, data = make_copies(self.m, 256 * KiB)
        self.read_through(names)
        a1 = os.open(self.m.path(names[0]), os.O_RDWR)
        a2 = os.open(self.m.path(names[0]), os.O_RDONLY)
        b = os.open(self.m.path(names[1]), os.O_RDONLY)
        try:
            piece = os.urandom(3 * PAGE)
            os.pwrite(a1, piece, 10 * PAGE + 17)
            self.assertEqual(sp.pread_all(a2, len(piece), 10 * PAGE + 17),
                             piece)
            self.assert_same(sp.pread_all(b, len(data) + 1, 0), data, 'copy B')
        finally:
            for fd in (a1, a2, b):
                os.close(fd)


class ReMerge(DedupCase):
    def test_page_written_back_to_original_content_merges_again(self):
        size = 4 * MiB
        names, data = make_copies(self.m, size)
        self.fast_scanner()
        self.read_through(names)
        self.m.scan(wait=True)
        sharing0 = self.m.stats()['pages_sharing']
        self.assertGreaterEqual(sharing0,
                                0.95 * (NCOPIES - 1) * size // PAGE)
        pages = [0, 333, size // PAGE - 1]
        with open(self.m.path(names[0]), 'r+b', buffering=0) as f:
            for p in pages:
                os.pwrite(f.fileno(), os.urandom(PAGE), p * PAGE)
            os.fsync(f.fileno())
            st = self.m.stats()
            self.assertLessEqual(st['pages_sharing'], sharing0 - len(pages),
                                 f'before {sharing0}, after writes {st}')
            for p in pages:
                os.pwrite(f.fileno(), data[p * PAGE:(p + 1) * PAGE], p * PAGE)
            os.fsync(f.fileno())
        self.m.scan(wait=True)
        self.m.scan(wait=True)
        st = self.m.stats()
        self.assertGreaterEqual(st['pages_sharing'], sharing0,
                                f'pages_sharing {sharing0} before the '
                                f'writes, {st}')
        for n in names:
            self.assertEqual(sp.read_file(self.m.path(n)), data, n)


class ZeroPages(DedupCase):
    def test_1000_zero_pages_map_the_zero_frame(self):
        self.m.set('use_zero_pages', 1)
        npages = 1000
        # Written zeros (allocated blocks), not a sparse file.
        with open(self.m.bpath('zeros'), 'wb') as f:
            f.write(bytes(npages * PAGE))
            os.fsync(f.fileno())
        self.assertEqual(sp.read_file(self.m.path('zeros')),
                         bytes(npages * PAGE))
        st = self.m.stats()
        self.assertGreaterEqual(st['zero_pages'], npages, st)
        self.assertLessEqual(st['cache_bytes'], 64 * PAGE, st)
        # A write into one of them breaks only that page off.
        with open(self.m.path('zeros'), 'r+b', buffering=0) as f:
            os.pwrite(f.fileno(), b'\x01', 500 * PAGE + 7)
            got = sp.pread_all(f.fileno(), 3 * PAGE, 499 * PAGE)
        want = bytearray(3 * PAGE)
        want[PAGE + 7] = 1
        self.assertEqual(got, bytes(want))
        want_all = bytearray(npages * PAGE)
        want_all[500 * PAGE + 7] = 1
        self.assert_same(sp.read_file(self.m.path('zeros')), bytes(want_all),
                         'zeros after one write')


class TruncateUnlinkCopy(DedupCase):
    def test_truncate_and_unlink_of_one_copy_leave_others_intact(self):
        size = 4 * MiB
        names, data = make_copies(self.m, size)
        want = hashlib.sha1(data).hexdigest()
        self.read_through(names)
        a, b, c = names[:3]
        os.truncate(self.m.path(a), MiB + 123)
        os.unlink(self.m.path(b))
        with open(self.m.path(c), 'r+b') as f:
            f.truncate(0)
            f.truncate(size)
        for n in names[3:]:
            self.assertEqual(sp.sha1_path(self.m.path(n)), want, n)
        self.assert_same(sp.read_file(self.m.path(a)), data[:MiB + 123], a)
        self.assertFalse(os.path.exists(self.m.path(b)))
        self.assert_same(sp.read_file(self.m.path(c)), bytes(size), c)
        self.assertEqual(self.m.stop(), 0)
        for n in names[3:]:
            self.assertEqual(sp.sha1_path(self.m.bpath(n)), want,
                             f'backing {n}')
        self.assert_same(sp.read_file(self.m.bpath(a)), data[:MiB + 123],
                         f'backing {a}')
        self.assertFalse(os.path.exists(self.m.bpath(b)))


class ConcurrentSharedRW(DedupCase):
    def test_fio_verify_writes_copy_a_while_threads_read_b_to_h(self):
        if not shutil.which('fio'):
            self.skipTest('fio is missing')
        size = 16 * MiB
        names, data = make_copies(self.m, size)
        want = hashlib.sha1(data).hexdigest()
        self.read_through(names)
        sharing0 = self.m.stats()['pages_sharing']
        stop = threading.Event()
        errors = []
        passes = [0]

        def reader(mine):
            rng = random.Random(len(mine))
            try:
                while not stop.is_set():
                    n = rng.choice(mine)
                    got = sp.sha1_path(self.m.path(n), chunk=rng.choice(
                        [PAGE, 64 * KiB, MiB]))
                    if got != want:
                        errors.append(f'{n} changed while {names[0]} was '
                                      'written')
                        return
                    passes[0] += 1
            except BaseException as e:
                errors.append(repr(e))

        others = names[1:]
        threads = [threading.Thread(target=reader, args=(others[i::3],),
                                    daemon=True) for i in range(3)]
        cwd = tempfile.mkdtemp(prefix='sp-fio-')
        self.addCleanup(shutil.rmtree, cwd, ignore_errors=True)
        for t in threads:
            t.start()
        try:
            res = sp.fio(['--name=cow', f'--filename={self.m.path(names[0])}',
                          f'--size={size}', '--rw=randwrite', '--bs=4k',
                          '--ioengine=psync', '--verify=crc32c',
                          '--verify_fatal=1', '--do_verify=1',
                          '--verify_backlog=512', '--verify_state_save=0',
                          '--numjobs=1'], cwd)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        self.assertEqual(res['jobs'][0]['error'], 0)
        self.assertEqual(errors, [])
        self.assertGreater(passes[0], 0)
        self.assertGreater(sharing0, 0, 'copies were not merged before fio '
                           'ran, COW was not exercised')
        st = self.m.stats()
        self.assertGreater(st['cow_breaks'], 0, st)
        for n in others:
            self.assertEqual(sp.sha1_path(self.m.path(n)), want, n)


class MaxPageSharing(DedupCase):
    def test_max_page_sharing_4_eight_copies_make_chains(self):
        self.m.set('max_page_sharing', 4)
        self.assertEqual(self.m.knobs().get('max_page_sharing'), 4)
        size = 256 * KiB
        npages = size // PAGE
        names, data = make_copies(self.m, size)
        self.fast_scanner()
        self.read_through(names)
        self.m.scan(wait=True)
        for n in names:
            self.assertEqual(sp.read_file(self.m.path(n)), data, n)
        st = self.m.stats()
        # At most 4 mappers per frame: each content needs >= 2 frames for 8
        # copies, so at most 6 of its 8 mappings are savings.
        self.assertLessEqual(st['pages_sharing'], 6 * npages, st)
        self.assertGreaterEqual(st['pages_sharing'], 0.95 * 6 * npages, st)
        self.assertGreaterEqual(st['pages_shared'], 2 * npages * 0.95, st)
        if 'stable_chains' in st:
            self.assertGreater(st['stable_chains'], 0, st)


if __name__ == '__main__':
    sp.main()
