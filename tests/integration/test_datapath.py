"""Data path on a real mount: sparse files, holes, truncate, append, files
larger than the cache, memory bounds and many writers under a tiny cache.

Every test compares what the mount returns with what was written (a
bytearray model or a checksum) and, after unmounting, with the backing file:
the cache must never lose, reorder or invent data.
"""

import ctypes
import errno
import hashlib
import mmap
import os
import random
import struct
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
PAGE = 4096


def assert_bytes_equal(tc, got, want, what):
    if got != want:
        d = sp.first_diff(got, want)
        tc.fail(f'{what}: len got {len(got)} want {len(want)}, first '
                f'difference at byte {d} (page {d // PAGE}): got '
                f'{bytes(got[d:d + 16]).hex()} want '
                f'{bytes(want[d:d + 16]).hex()}')


def stats_with_timeout(m, seconds):
    """The daemon's stats, or a note if it cannot even answer them (a
    wedged daemon would block the caller in getxattr for ever)."""
    box = {}

    def get():
        try:
            box['st'] = m.stats()
        except OSError as e:
            box['st'] = f'stats failed: {e}'
    t = threading.Thread(target=get, daemon=True)
    t.start()
    t.join(seconds)
    return box.get('st', f'no answer to stats within {seconds} s')


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                       ctypes.c_int, ctypes.c_int, ctypes.c_int64]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
MAP_FAILED = ctypes.c_void_p(-1).value


def resident_bytes(path):
    """Bytes of path in the kernel's page cache (mincore over a private
    read-only mapping, which does not fault anything in), or None if the
    file cannot be mapped."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
        if addr in (None, MAP_FAILED):
            return None
        try:
            vec = ctypes.create_string_buffer((size + PAGE - 1) // PAGE)
            if _libc.mincore(addr, size, vec) != 0:
                return None
            return sum(b & 1 for b in vec.raw) * PAGE
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def stamped_block(base, first_page, npages):
    """base (npages pages) with each page's first 8 bytes set to its global
    index, so no two pages of a big file are equal (no dedup help)."""
    for p in range(npages):
        struct.pack_into('<Q', base, p * PAGE, first_page + p)
    return base


class SparseAndHoles(sp.MountTestCase):
    # Large writeback delay: the punches below hit dirty pages too.
    mount_opts = ('cache_size=64M', 'writeback_ms=60000')

    def test_sparse_2tib_writes_at_0_1tib_end_holes_zero_seek_data_hole(self):
        size = 2 * TiB
        p = self.m.path('sparse')
        writes = [(0, os.urandom(2 * PAGE)),
                  (1 * TiB, os.urandom(3 * PAGE)),
                  # unaligned, crosses the last page boundary, ends 1000
                  # bytes before EOF
                  (size - 5000, os.urandom(4000))]
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, size)
            self.assertEqual(os.fstat(fd).st_size, size)
            for off, data in writes:
                self.assertEqual(os.pwrite(fd, data, off), len(data))
            self.assertEqual(os.fstat(fd).st_size, size)
            for off, data in writes:
                assert_bytes_equal(self, sp.pread_all(fd, len(data), off),
                                   data, f'read back at {off}')
            zeros = bytes(3 * PAGE)
            for off in (2 * PAGE, 1 * MiB, 512 * GiB + 123,
                        1 * TiB - 3 * PAGE, 1 * TiB + 3 * PAGE,
                        size - 5000 - 3 * PAGE):
                assert_bytes_equal(self, sp.pread_all(fd, len(zeros), off),
                                   zeros, f'hole at {off}')
            tail = sp.pread_all(fd, 10000, size - 10000)
            assert_bytes_equal(self, tail, bytes(5000) + writes[2][1]
                               + bytes(1000), 'last 10000 bytes')
            self.assertEqual(os.pread(fd, 100, size), b'', 'read at EOF')

            # SEEK_DATA / SEEK_HOLE while the pages are still dirty.
            self._check_seek(fd, size)
            os.fsync(fd)
            self._check_seek(fd, size)
        finally:
            os.close(fd)
        # The mount's view again after close and reopen, then the disk's.
        with open(p, 'rb') as f:
            for off, data in writes:
                f.seek(off)
                self.assertEqual(f.read(len(data)), data)
        self.assertEqual(self.m.stop(), 0)
        bfd = os.open(self.m.bpath('sparse'), os.O_RDONLY)
        try:
            self.assertEqual(os.fstat(bfd).st_size, size)
            for off, data in writes:
                self.assertEqual(sp.pread_all(bfd, len(data), off), data,
                                 f'backing file at {off}')
        finally:
            os.close(bfd)

    def _check_seek(self, fd, size):
        self.assertEqual(os.lseek(fd, 0, os.SEEK_DATA), 0)
        h = os.lseek(fd, 0, os.SEEK_HOLE)
        self.assertTrue(2 * PAGE <= h < 64 * MiB,
                        f'SEEK_HOLE from 0 = {h}: the first hole must start '
                        'after the first 8 KiB of data and long before 1 TiB')
        d = os.lseek(fd, h, os.SEEK_DATA)
        self.assertTrue(1 * TiB - 64 * MiB <= d <= 1 * TiB,
                        f'SEEK_DATA from {h} = {d}, want the data at 1 TiB')
        h2 = os.lseek(fd, 1 * TiB, os.SEEK_HOLE)
        self.assertTrue(1 * TiB + 3 * PAGE <= h2 <= 1 * TiB + 64 * MiB,
                        f'SEEK_HOLE from 1 TiB = {h2}')
        d2 = os.lseek(fd, h2, os.SEEK_DATA)
        self.assertTrue(size - 64 * MiB <= d2 <= size - 5000,
                        f'SEEK_DATA from {h2} = {d2}, want the data near '
                        'the end')
        h3 = os.lseek(fd, size - 4000, os.SEEK_HOLE)
        self.assertTrue(size - 1000 <= h3 <= size,
                        f'SEEK_HOLE from size-4000 = {h3}')
        with self.assertRaises(OSError) as cm:
            os.lseek(fd, size, os.SEEK_DATA)
        self.assertEqual(cm.exception.errno, errno.ENXIO)

    def test_punch_hole_aligned_unaligned_clean_and_dirty_cached_pages(self):
        size = 1 * MiB + 777
        p = self.m.path('punch')
        punches = [(0, PAGE),                     # first page, aligned
                   (8 * KiB, 16 * KiB),           # aligned, several pages
                   (5000, 3000),                  # inside one page
                   (12345, 20000),                # unaligned, crosses pages
                   (40 * KiB + 1, 1),             # one byte
                   (64 * KiB, 256 * KiB),         # large, aligned
                   (400 * KiB - 100, PAGE + 200),  # crosses two boundaries
                   (size - 100, 100),             # the tail of the file
                   (size - 10, 5000)]             # past EOF: size is kept
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for dirty in (False, True):
                model = bytearray(os.urandom(size))
                self.assertEqual(os.pwrite(fd, model, 0), size)
                if not dirty:
                    os.fsync(fd)
                # cached before the punch
                assert_bytes_equal(self, sp.pread_all(fd, size + 10, 0), model,
                                   'before punching')
                for off, length in punches:
                    sp.punch_hole(fd, off, length)
                    end = min(off + length, len(model))
                    model[off:end] = bytes(end - off)
                    self.assertEqual(os.fstat(fd).st_size, size)
                    assert_bytes_equal(
                        self, sp.pread_all(fd, size + 10, 0), model,
                        f'after punch {off}+{length} (dirty={dirty})')
                # a write into the holes afterwards
                patch = os.urandom(10000)
                os.pwrite(fd, patch, 6000)
                model[6000:16000] = patch
                assert_bytes_equal(self, sp.pread_all(fd, size + 10, 0), model,
                                   f'write over holes (dirty={dirty})')
            os.fsync(fd)
            assert_bytes_equal(self, sp.pread_all(fd, size + 10, 0), model,
                               'after fsync')
        finally:
            os.close(fd)
        self.assertEqual(self.m.stop(), 0)
        assert_bytes_equal(self, sp.read_file(self.m.bpath('punch')), model,
                           'backing file after unmount')


class LargerThanCache(sp.MountTestCase):
    mount_opts = ('cache_size=16M',)
    budget = 16 * MiB

    def test_64m_file_through_16m_cache_evicts_and_reads_back(self):
        p = self.m.path('big')
        h = hashlib.sha1()
        max_rss = 0
        with open(p, 'wb', buffering=0) as f:
            for i in range(64):
                blk = os.urandom(MiB)
                h.update(blk)
                self.assertEqual(f.write(blk), MiB)
                if i % 8 == 7:
                    max_rss = max(max_rss, self.m.anon_bytes())
            os.fsync(f.fileno())
        want = h.hexdigest()
        h = hashlib.sha1()
        with open(p, 'rb', buffering=0) as f:
            for i in range(64):
                h.update(f.read(MiB))
                if i % 8 == 7:
                    max_rss = max(max_rss, self.m.anon_bytes())
            self.assertEqual(f.read(1), b'')
        self.assertEqual(h.hexdigest(), want, '64 MiB file read back')
        st = self.m.stats()
        self.assertGreater(st['evictions'], 0, st)
        self.assertLessEqual(st['cache_bytes'], self.budget, st)
        if not sp.SANITIZED:  # ASan's own memory is not the daemon's
            self.assertLessEqual(max_rss, self.budget + 32 * MiB,
                                 f'daemon Pss_Anon {max_rss} over budget + 32 MiB')
        # And once more after unmount, from the disk.
        self.assertEqual(self.m.stop(), 0)
        self.assertEqual(sp.sha1_path(self.m.bpath('big')), want)


class DirtyUnmount(sp.MountTestCase):
    # Writeback far in the future: only unmount/close can save the data.
    mount_opts = ('cache_size=64M', 'writeback_ms=600000')

    def test_unmount_with_20m_dirty_loses_nothing(self):
        rng = random.Random(1)
        want = {}
        for n in range(4):
            name = f'dirty{n}'
            model = bytearray()
            with open(self.m.path(name), 'wb', buffering=0) as f:
                # 5 MiB per file in unaligned pieces
                while len(model) < 5 * MiB:
                    piece = os.urandom(rng.randint(1, 300 * KiB))
                    f.write(piece)
                    model += piece
                # and a few overwrites in the middle
                for _ in range(20):
                    off = rng.randrange(len(model))
                    piece = os.urandom(rng.randint(1, 3 * PAGE))
                    os.pwrite(f.fileno(), piece, off)
                    end = off + len(piece)
                    if end > len(model):
                        model += bytes(end - len(model))
                    model[off:end] = piece
            want[name] = bytes(model)
        for name, data in want.items():
            assert_bytes_equal(self, sp.read_file(self.m.path(name)), data,
                               f'{name} through the mount')
        self.assertEqual(self.m.stop(), 0, self.m.log())
        for name, data in want.items():
            assert_bytes_equal(self, sp.read_file(self.m.bpath(name)), data,
                               f'backing {name} after unmount')


class TruncateCached(sp.MountTestCase):
    mount_opts = ('cache_size=64M', 'writeback_ms=60000')

    def _trunc(self, fd, path, size, by_path):
        if by_path:
            os.truncate(path, size)
        else:
            os.ftruncate(fd, size)

    def test_truncate_down_up_zeroes_tail_and_reextension(self):
        final = {}
        for case, (dirty, by_path) in enumerate([(False, False), (True, False),
                                                 (False, True), (True, True)]):
            name = f't{case}'
            p = self.m.path(name)
            what = f'{name} dirty={dirty} by_path={by_path}'
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                model = bytearray(os.urandom(3 * PAGE + 100))
                os.pwrite(fd, model, 0)
                if not dirty:
                    os.fsync(fd)
                assert_bytes_equal(self, sp.pread_all(fd, 5 * PAGE, 0), model,
                                   what)
                # down into the middle of page 1, up again past page 3
                self._trunc(fd, p, 5000, by_path)
                del model[5000:]
                self.assertEqual(os.fstat(fd).st_size, 5000, what)
                assert_bytes_equal(self, sp.pread_all(fd, 5 * PAGE, 0), model,
                                   what + ' after truncate to 5000')
                self._trunc(fd, p, 3 * PAGE + 100, by_path)
                model += bytes(3 * PAGE + 100 - 5000)
                assert_bytes_equal(self, sp.pread_all(fd, PAGE, PAGE),
                                   model[PAGE:2 * PAGE],
                                   what + ': tail of page 1 after '
                                   're-extension')
                assert_bytes_equal(self, sp.pread_all(fd, 5 * PAGE, 0), model,
                                   what + ' after re-extension')
                # down to a page boundary, then extend by writing past EOF
                self._trunc(fd, p, 2 * PAGE, by_path)
                del model[2 * PAGE:]
                os.pwrite(fd, b'x' * 10, 4 * PAGE + 5)
                model += bytes(2 * PAGE + 5) + b'x' * 10
                assert_bytes_equal(self, sp.pread_all(fd, 6 * PAGE, 0), model,
                                   what + ' after extend by write')
                # to zero and back up: all zeros
                self._trunc(fd, p, 0, by_path)
                self.assertEqual(sp.pread_all(fd, PAGE, 0), b'', what)
                self._trunc(fd, p, 2 * PAGE + 1, by_path)
                model = bytearray(2 * PAGE + 1)
                assert_bytes_equal(self, sp.pread_all(fd, 4 * PAGE, 0), model,
                                   what + ' after truncate 0 and extend')
                tail = os.urandom(777)
                os.pwrite(fd, tail, PAGE - 300)
                model[PAGE - 300:PAGE + 477] = tail
                assert_bytes_equal(self, sp.pread_all(fd, 4 * PAGE, 0), model,
                                   what + ' final')
            finally:
                os.close(fd)
            final[name] = bytes(model)
        self.assertEqual(self.m.stop(), 0)
        for name, data in final.items():
            assert_bytes_equal(self, sp.read_file(self.m.bpath(name)), data,
                               f'backing {name}')


class RenameOverDirty(unittest.TestCase):
    # Found by test_model, with the default writeback delay: the punch
    # writes back part of the file while the tail page may stay dirty.
    # Whether it goes wrong depends on the daemon's threads, and tends to
    # stick to one mount, so the scenario runs on several fresh mounts.
    mounts = 10
    rounds = 3

    def test_rename_dirty_punched_over_existing_fresh_open_reads_all(self):
        size = 20 * PAGE + 123          # a partial last page
        for n in range(self.mounts):
            with sp.Mount(opts=('cache_size=64M',)) as m:
                want = {}
                for i in range(self.rounds):
                    a, b = f'a{i}', f'b{i}'
                    what = f'mount {n} round {i}'
                    data = bytearray(os.urandom(size))
                    with open(m.path(b), 'wb') as f:
                        f.write(b'x' * 5000)
                    fa = os.open(m.path(a), os.O_RDWR | os.O_CREAT, 0o644)
                    try:
                        os.pwrite(fa, data, 0)
                        sp.punch_hole(fa, 3 * PAGE + 5, 100)
                        data[3 * PAGE + 5:3 * PAGE + 105] = bytes(100)
                        os.rename(m.path(a), m.path(b))
                        assert_bytes_equal(self, sp.read_file(m.path(b)), data,
                                           f'{what}: renamed file, fresh fd')
                        assert_bytes_equal(self, sp.pread_all(fa, size + 1, 0),
                                           data, f'{what}: renamed file, '
                                           'old fd')
                    finally:
                        os.close(fa)
                    want[b] = bytes(data)
                self.assertEqual(m.stop(), 0, m.log())
                for b, data in want.items():
                    assert_bytes_equal(self, sp.read_file(m.bpath(b)), data,
                                       f'mount {n}: backing {b}')


RECLEN = 1021   # unaligned: records straddle page boundaries


def _record(writer, seq):
    head = b'%c%07d|' % (ord('A') + writer, seq)
    body = bytes([(writer * 31 + seq + i) & 0xff
                  for i in range(RECLEN - len(head) - 1)])
    return head + body + b'\n'


class Append(sp.MountTestCase):
    def test_o_append_two_processes_and_two_fds_lose_nothing(self):
        p = self.m.path('log')
        open(p, 'wb').close()
        n = 400

        def appender(writer, count):
            fd = os.open(p, os.O_WRONLY | os.O_APPEND)
            try:
                for s in range(count):
                    rec = _record(writer, s)
                    if os.write(fd, rec) != len(rec):
                        return 1
            finally:
                os.close(fd)
            return 0

        pids = []
        for w in (0, 1):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = appender(w, n)
                finally:
                    os._exit(code)
            pids.append(pid)
        # meanwhile two fds of this process, interleaved
        fds = [os.open(p, os.O_WRONLY | os.O_APPEND) for _ in range(2)]
        try:
            for s in range(n):
                for i, fd in enumerate(fds):
                    rec = _record(2 + i, s)
                    self.assertEqual(os.write(fd, rec), len(rec))
        finally:
            for fd in fds:
                os.close(fd)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            self.assertEqual(os.waitstatus_to_exitcode(status), 0)

        def check(data, where):
            self.assertEqual(len(data), 4 * n * RECLEN,
                             f'{where}: size {len(data)}, want '
                             f'{4 * n * RECLEN} (lost or overlapping appends)')
            seen = set()
            last = [-1] * 4
            for i in range(0, len(data), RECLEN):
                rec = data[i:i + RECLEN]
                w = rec[0] - ord('A')
                self.assertTrue(0 <= w < 4, f'{where}: garbage at {i}')
                s = int(rec[1:8])
                self.assertEqual(rec, _record(w, s),
                                 f'{where}: torn record at {i}')
                self.assertGreater(s, last[w], f'{where}: writer {w} '
                                   'records out of order')
                last[w] = s
                seen.add((w, s))
            self.assertEqual(len(seen), 4 * n, where)

        check(sp.read_file(p), 'mount')
        self.assertEqual(self.m.stop(), 0)
        check(sp.read_file(self.m.bpath('log')), 'backing')


class OneGiBRead(sp.MountTestCase):
    mount_opts = ('cache_size=512M',)
    budget = 512 * MiB
    size = 1 * GiB

    def test_read_1g_file_memory_bounded_by_budget_not_doubled(self):
        bp = self.m.bpath('big1g')
        h = hashlib.sha1()
        base = bytearray(os.urandom(MiB))
        pages_per_mib = MiB // PAGE
        # Real data, written behind the mount before its first lookup.
        with open(bp, 'wb', buffering=0) as f:
            for i in range(self.size // MiB):
                blk = stamped_block(base, i * pages_per_mib, pages_per_mib)
                f.write(blk)
                h.update(blk)
            os.fsync(f.fileno())
        want = h.hexdigest()
        sp.drop_caches()
        rss0 = self.m.anon_bytes()
        pc0 = sp.page_cache_bytes()
        max_rss = rss0
        h = hashlib.sha1()
        with open(self.m.path('big1g'), 'rb', buffering=0) as f:
            buf = bytearray(MiB)
            for i in range(self.size // MiB):
                n = f.readinto(buf)
                self.assertEqual(n, MiB, f'short read at {i} MiB')
                h.update(buf)
                if i % 32 == 31:
                    max_rss = max(max_rss, self.m.anon_bytes())
            self.assertEqual(f.readinto(buf), 0)
        rss1 = self.m.anon_bytes()
        pc1 = sp.page_cache_bytes()
        max_rss = max(max_rss, rss1)
        self.assertEqual(h.hexdigest(), want, '1 GiB file read back')
        grew = (rss1 - rss0) + (pc1 - pc0)
        # Cached is machine-wide; the page cache of the two files involved
        # says whether the growth is ours.
        fuse_pc = resident_bytes(self.m.path('big1g'))
        backing_pc = resident_bytes(bp)
        msg = (f'daemon Pss_Anon {rss0 >> 20} -> {rss1 >> 20} MiB (max '
               f'{max_rss >> 20}), kernel Cached {pc0 >> 20} -> '
               f'{pc1 >> 20} MiB, of it the mounted file {fuse_pc} and the '
               f'backing file {backing_pc} bytes, stats {self.m.stats()}')
        if not sp.SANITIZED:  # ASan's own memory is not the daemon's
            self.assertLessEqual(grew, 1.1 * self.size, msg)
            self.assertLessEqual(max_rss, self.budget + 32 * MiB, msg)
        # The cache is the only cache: no copy in the kernel's page cache,
        # neither of the mounted file (direct_io) nor of the backing file
        # (O_DIRECT).
        if fuse_pc is not None:
            self.assertLessEqual(fuse_pc, 0.01 * self.size, msg)
        self.assertLessEqual(backing_pc, 0.01 * self.size, msg)


class TinyCacheManyThreads(sp.MountTestCase):
    mount_opts = ('cache_size=1M', 'writeback_ms=50')
    deadline_s = 60

    def test_1m_cache_8_threads_read_write_make_progress_and_verify(self):
        nthreads = 8
        fsize = 768 * KiB
        models = [None] * nthreads
        errors = []
        done = [0] * nthreads

        def worker(t):
            rng = random.Random(1000 + t)
            p = self.m.path(f'w{t}')
            model = bytearray(os.urandom(fsize))
            models[t] = model
            try:
                fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    os.pwrite(fd, model, 0)
                    for i in range(150):
                        op = rng.random()
                        if op < 0.45:
                            off = rng.randrange(fsize)
                            n = min(rng.choice([1, 100, PAGE, 3 * PAGE + 17,
                                                64 * KiB, 200 * KiB]),
                                    fsize - off)
                            data = os.urandom(n)
                            if os.pwrite(fd, data, off) != n:
                                raise AssertionError('short write')
                            model[off:off + n] = data
                        elif op < 0.9:
                            off = rng.randrange(fsize)
                            n = rng.choice([1, PAGE, 5000, 128 * KiB,
                                            1 * MiB])
                            got = sp.pread_all(fd, n, off)
                            if got != model[off:off + n]:
                                raise AssertionError(
                                    f'thread {t} op {i}: read {off}+{n} '
                                    'differs from what was written')
                        elif op < 0.95:
                            os.fsync(fd)
                        else:
                            got = sp.pread_all(fd, fsize + 1, 0)
                            if got != model:
                                raise AssertionError(
                                    f'thread {t} op {i}: whole-file read '
                                    'differs')
                        done[t] = i + 1
                finally:
                    os.close(fd)
            except BaseException as e:
                errors.append((t, e))

        stuck = sp.run_threads(worker, nthreads, self.deadline_s)
        if stuck:
            # Unblock the stuck threads before failing, so that the test
            # leaves no mount and no thread in D state behind.
            progress = list(done)
            st = stats_with_timeout(self.m, 5)
            self.m.kill9()
            self.fail(f'threads {stuck} made no progress within '
                      f'{self.deadline_s} s (ops done per thread {progress}),'
                      f' stats {st}')
        if errors:
            t, e = errors[0]
            raise AssertionError(f'thread {t}: {e!r}') from e
        st = self.m.stats()
        self.assertLessEqual(st['cache_bytes'], 1 * MiB, st)
        self.assertGreater(st['evictions'], 0, st)
        self.assertEqual(self.m.stop(), 0)
        for t in range(nthreads):
            assert_bytes_equal(self, sp.read_file(self.m.bpath(f'w{t}')),
                               models[t], f'backing w{t}')


if __name__ == '__main__':
    sp.main()
