"""Faults below the mount: a full backing disk, backing read and write
errors (failpoints), a tiny cache under many writers, a state directory
that cannot be written and a store quota far too small.

The contract under test (cache.h): a backing error reaches the caller as
its errno, at the latest on the next fsync/close of the file, and is never
silently dropped; the daemon keeps serving every other file; once the
cause is gone (space freed, failpoint off) the same mount works again and
the data reaches the disk.
"""

import errno
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4096


def describe_diff(got, want, older=None):
    """Which pages differ, and whether they hold zeros or older data."""
    if len(got) != len(want):
        return f'length {len(got)}, want {len(want)}'
    bad = [p for p in range(0, len(want), PAGE)
           if got[p:p + PAGE] != want[p:p + PAGE]]
    if not bad:
        return 'equal'
    p = bad[0]
    g = got[p:p + PAGE]
    w = want[p:p + PAGE]
    kind = ('zeros' if g == bytes(len(g)) else
            'the older content' if older and g == older[p:p + PAGE] else
            'zeros in place of the bytes not written last'
            if all(g[i] == 0 for i in range(len(g)) if g[i] != w[i]) else
            'other data')
    d = next(i for i in range(len(g)) if g[i] != want[p + i])
    return (f'{len(bad)} pages differ, first page {p // PAGE} from byte '
            f'{p + d} holds {kind}')


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def with_deadline(tc, m, seconds, fn, what):
    """fn() in a thread; a daemon that does not answer within seconds is
    killed (so that nothing stays blocked in D state) and the test fails."""
    box = {}

    def run():
        try:
            box['ret'] = fn()
        except BaseException as e:  # handed to the test thread
            box['exc'] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        m.kill9()
        t.join(10)
        tc.fail(f'{what}: no answer within {seconds} s (daemon killed)')
    if 'exc' in box:
        raise box['exc']
    return box.get('ret')


class SmallDisk:
    """An XFS image with a filler file so that only free_mb remain free;
    backing is a directory on it. mkfs.xfs refuses images under 300 MB,
    so the space is taken away instead."""

    def __init__(self, free_mb):
        self.free_mb = free_mb
        self.xfs = sp.XfsImage(sp.XfsImage.MIN_MB)

    def __enter__(self):
        self.xfs.__enter__()
        try:
            self.backing = os.path.join(self.xfs.dir, 'backing')
            os.mkdir(self.backing)
            fill = free_bytes(self.xfs.dir) - self.free_mb * MiB
            fd = os.open(os.path.join(self.xfs.dir, 'filler'),
                         os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, fill)
            finally:
                os.close(fd)
        except BaseException:
            self.xfs.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        return self.xfs.__exit__(*exc)

    def free(self):
        return free_bytes(self.xfs.dir)


class DiskFull(unittest.TestCase):
    FREE_MB = 24

    def test_enospc_reaches_fsync_daemon_serves_on_delete_frees_space(self):
        sp.require_env()
        disk = SmallDisk(self.FREE_MB)
        with disk:
            keep = os.urandom(2 * MiB)
            cold = os.urandom(1 * MiB + 123)
            sp.write_file(os.path.join(disk.backing, 'cold'), cold)
            # Cache larger than the free space: every write is accepted into
            # the cache and the disk runs full in writeback.
            m = sp.Mount(opts=('cache_size=128M', 'writeback_ms=200'),
                         backing=disk.backing)
            with m:
                sp.write_file(m.path('keep'), keep)
                fd = os.open(m.path('keep'), os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
                self._fill_and_check(m, disk, keep, cold)

    def _fill_and_check(self, m, disk, keep, cold):
        chunk = 1 * MiB
        limit = (self.FREE_MB + 16) * chunk
        synced = hashlib.sha1()
        pending = []
        written = 0
        where = None
        err = None
        fd = os.open(m.path('fill'), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while written < limit:
                blk = os.urandom(chunk)
                try:
                    os.write(fd, blk)
                    written += chunk
                    pending.append(blk)
                    if len(pending) == 4:
                        os.fsync(fd)
                        for b in pending:
                            synced.update(b)
                        pending = []
                except OSError as e:
                    err, where = e, 'write' if len(pending) < 4 else 'fsync'
                    break
            if err is None:
                try:
                    os.fsync(fd)
                except OSError as e:
                    err, where = e, 'final fsync'
        finally:
            try:
                os.close(fd)
            except OSError as e:
                if err is None:
                    err, where = e, 'close'
        synced_bytes = written - len(pending) * chunk
        self.assertIsNotNone(err, f'{written >> 20} MiB written into '
                             f'{self.FREE_MB} MiB of free space and no '
                             'write, fsync or close reported an error: the '
                             'data was silently dropped')
        self.assertEqual(err.errno, errno.ENOSPC, f'{where}: {err}')
        self.assertNotEqual(where, 'close', 'ENOSPC reached close only: '
                            'fsync returned success for data that could '
                            'not be written')
        self.assertLessEqual(synced_bytes, self.FREE_MB * MiB,
                             'fsync succeeded for more than the disk holds')

        # The daemon still serves: stats, a cached file, a file never read.
        st = with_deadline(self, m, 20, m.stats, 'stats after ENOSPC')
        self.assertIn('cache_bytes', st)
        self.assertEqual(sp.sha1(sp.read_file(m.path('keep'))), sp.sha1(keep))
        self.assertEqual(sp.sha1(sp.read_file(m.path('cold'))), sp.sha1(cold))
        # What fsync acknowledged is there, through the mount.
        fd = os.open(m.path('fill'), os.O_RDONLY)
        try:
            got = sp.pread_all(fd, synced_bytes, 0)
        finally:
            os.close(fd)
        self.assertEqual(sp.sha1(got), synced.hexdigest(),
                         'data acknowledged by fsync before the disk was '
                         'full reads back wrong')

        # Deleting the file gives its space back (also the space its
        # unwritable dirty pages would have needed) ...
        before = disk.free()
        os.unlink(m.path('fill'))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if disk.free() >= before + 8 * MiB:
                break
            time.sleep(0.1)
        fds = os.listdir(f'/proc/{m.pid}/fd')
        held = [os.readlink(f'/proc/{m.pid}/fd/{f}') for f in fds
                if f.isdigit()]
        held = [h for h in held if h.endswith('(deleted)')]
        self.assertGreaterEqual(
            disk.free(), before + 8 * MiB,
            f'free space {before >> 20} -> {disk.free() >> 20} MiB 10 s '
            f'after deleting a {written >> 20} MiB file through the mount; '
            f'the daemon still holds {held}; stats {m.stats()}')

        # ... and writes work again, up to the disk.
        data = os.urandom(4 * MiB)
        fd = os.open(m.path('after'), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.assertEqual(sp.sha1(sp.read_file(m.path('after'))), sp.sha1(data))
        self.assertEqual(m.stop(), 0, m.log()[-3000:])
        self.assertEqual(sp.sha1(sp.read_file(m.bpath('after'))),
                         sp.sha1(data))
        self.assertEqual(sp.sha1(sp.read_file(m.bpath('keep'))), sp.sha1(keep))


class FailpointCase(sp.MountTestCase):
    """The tests arm the failpoint `failpoint`; it is always disarmed at
    the end (skipped without failpoints)."""

    failpoint = 'fail_read'

    def setUp(self):
        super().setUp()
        sp.require_failpoints(self.m)
        self.addCleanup(self._off)

    def _off(self):
        if self.m.proc is not None:
            self.m.set(self.failpoint, '0')


class FailRead(FailpointCase):
    mount_opts = ('cache_size=64M',)

    def _read_errno(self, path):
        fd = os.open(path, os.O_RDONLY)
        try:
            sp.pread_all(fd, 1 * MiB, 0)
        except OSError as e:
            return e.errno
        finally:
            os.close(fd)
        return 0

    def test_fail_read_persistent_eio_then_off_reads_correct(self):
        cached = os.urandom(256 * KiB)
        sp.write_file(self.m.path('cached'), cached)
        self.assertEqual(sp.read_file(self.m.path('cached')), cached)
        cold = os.urandom(512 * KiB + 77)
        sp.write_file(self.m.bpath('cold'), cold)

        self.m.set('fail_read', '5')
        self.assertEqual(self._read_errno(self.m.path('cold')), errno.EIO,
                         'read of an uncached page with fail_read=5')
        self.assertEqual(self._read_errno(self.m.path('cold')), errno.EIO,
                         'fail_read=5 is persistent: second read')
        # Resident pages need no disk.
        self.assertEqual(sp.read_file(self.m.path('cached')), cached)
        self.assertIn('backing_reads', self.m.stats())

        self.m.set('fail_read', '0')
        self.assertEqual(sp.sha1(sp.read_file(self.m.path('cold'))),
                         sp.sha1(cold),
                         'first read after the failpoint is off')

    def test_fail_read_once_fails_one_read_next_is_correct(self):
        cold = os.urandom(300 * KiB)
        sp.write_file(self.m.bpath('once'), cold)
        self.m.set('fail_read', '5:once')
        self.assertEqual(self._read_errno(self.m.path('once')), errno.EIO)
        self.assertEqual(sp.sha1(sp.read_file(self.m.path('once'))),
                         sp.sha1(cold))

    def test_fail_read_dropped_by_remount_page_fails_then_reads(self):
        data = os.urandom(1 * MiB)
        sp.write_file(self.m.path('f'), data)
        self.assertEqual(sp.read_file(self.m.path('f')), data)
        self.m.remount()
        self.m.set('fail_read', '5')
        self.assertEqual(self._read_errno(self.m.path('f')), errno.EIO,
                         'a page cached before the remount is gone')
        self.m.set('fail_read', '0')
        self.assertEqual(sp.sha1(sp.read_file(self.m.path('f'))),
                         sp.sha1(data))


class FailWrite(FailpointCase):
    # Writeback only when asked: each fsync is the one that fails.
    mount_opts = ('cache_size=64M', 'writeback_ms=600000')
    failpoint = 'fail_write'

    def test_fail_write_fsync_eio_data_readable_retry_reaches_disk(self):
        data = os.urandom(1 * MiB + 100)
        p = self.m.path('w')
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            self.m.set('fail_write', '5')
            with self.assertRaises(OSError) as cm:
                os.fsync(fd)
            self.assertEqual(cm.exception.errno, errno.EIO)
            # A second fsync while the disk still fails must fail too: the
            # pages are still not on disk.
            with self.assertRaises(OSError) as cm:
                os.fsync(fd)
            self.assertEqual(cm.exception.errno, errno.EIO,
                             'second fsync with the failpoint still on')
            self.assertEqual(sp.sha1(sp.pread_all(fd, len(data) + 1, 0)),
                             sp.sha1(data), 'data after the failed fsync')
            self.assertEqual(sp.sha1(sp.read_file(p)), sp.sha1(data))
            self.assertGreater(self.m.stats()['writeback_errors'], 0)
            self.m.set('fail_write', '0')
            os.fsync(fd)
        finally:
            os.close(fd)
        self.assertEqual(sp.sha1(sp.read_file(self.m.bpath('w'))),
                         sp.sha1(data),
                         'backing file after the retried fsync')

    def test_fail_write_once_at_close_then_unmount_writes_it(self):
        data = os.urandom(200 * KiB)
        fd = os.open(self.m.path('c'), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        self.m.set('fail_write', '5:once')
        with self.assertRaises(OSError) as cm:
            os.close(fd)
        self.assertEqual(cm.exception.errno, errno.EIO,
                         'close of the last writer reports the failure')
        self.assertEqual(sp.read_file(self.m.path('c')), data)
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        self.assertEqual(sp.sha1(sp.read_file(self.m.bpath('c'))),
                         sp.sha1(data),
                         'the pages that failed once reach the disk at '
                         'unmount')


class FailWriteBackground(FailpointCase):
    mount_opts = ('cache_size=64M', 'writeback_ms=100')
    failpoint = 'fail_write'

    def test_background_writeback_eio_is_reported_by_next_fsync(self):
        data = os.urandom(64 * KiB)
        fd = os.open(self.m.path('bg'), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            self.m.set('fail_write', '5')
            os.write(fd, data)
            deadline = time.monotonic() + 10
            while (self.m.stats()['writeback_errors'] == 0
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            self.assertGreater(self.m.stats()['writeback_errors'], 0,
                               'background writeback never ran')
            with self.assertRaises(OSError) as cm:
                os.fsync(fd)
            self.assertEqual(cm.exception.errno, errno.EIO)
            self.m.set('fail_write', '0')
            os.fsync(fd)
        finally:
            os.close(fd)
        self.assertEqual(sp.read_file(self.m.bpath('bg')), data)


class TinyCacheWriters(sp.MountTestCase):
    mount_opts = ('cache_size=1M',)
    deadline_s = 60
    rounds = 3

    def test_1m_cache_8_writer_threads_progress_and_verify(self):
        """Each writer streams a file twice the cache, then patches it with
        partial-page writes while the stream is still being written back
        and evicted: a patched page must keep the rest of its data."""
        nthreads, fsize = 8, 2 * MiB
        models = {}
        errors = []

        def writer(t):
            rng = random.Random(t)
            try:
                for r in range(self.rounds):
                    name = f'w{t}.{r}'
                    model = bytearray(os.urandom(fsize))
                    first = bytes(model)
                    models[name] = model
                    fd = os.open(self.m.path(name),
                                 os.O_RDWR | os.O_CREAT, 0o644)
                    try:
                        for off in range(0, fsize, 64 * KiB):
                            os.pwrite(fd, model[off:off + 64 * KiB], off)
                        for i in range(40):
                            off = rng.randrange(fsize)
                            n = min(rng.choice([1, 700, PAGE, 3 * PAGE + 5,
                                                48 * KiB]), fsize - off)
                            piece = os.urandom(n)
                            os.pwrite(fd, piece, off)
                            model[off:off + n] = piece
                            if i % 20 == 19:
                                os.fsync(fd)
                        got = sp.pread_all(fd, fsize + 1, 0)
                        if got != model:
                            raise AssertionError(
                                f'{name}: read back differs: '
                                f'{describe_diff(got, model, first)}')
                    finally:
                        os.close(fd)
            except BaseException as e:
                errors.append((t, e))

        stuck = sp.run_threads(writer, nthreads, self.deadline_s)
        if stuck:
            self.m.kill9()
            self.fail(f'writers {stuck} still running after '
                      f'{self.deadline_s} s with a 1 MiB cache')
        if errors:
            t, e = errors[0]
            raise AssertionError(f'writer {t}: {e}') from e
        st = self.m.stats()
        self.assertLessEqual(st['cache_bytes'], 1 * MiB, st)
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        for name, model in sorted(models.items()):
            self.assertEqual(sp.sha1(sp.read_file(self.m.bpath(name))),
                             sp.sha1(model), f'backing {name}')


def _run(cmd):
    subprocess.run(cmd, check=True, capture_output=True)


class ReadOnlyState(unittest.TestCase):
    """A state directory the daemon cannot write costs persistence only."""

    def setUp(self):
        sp.require_env()
        self.tmp = tempfile.mkdtemp(prefix='h-rostate-')
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        for target in reversed(sp.mounts_under(self.tmp)):
            subprocess.run(['umount', '-l', target],
                           stderr=subprocess.DEVNULL)
        if not sp.mounts_under(self.tmp):
            subprocess.run(['rm', '-rf', self.tmp])

    def _copies(self, m, n=4, size=1 * MiB):
        data = os.urandom(size)
        for i in range(n):
            sp.write_file(m.bpath(f'c{i}'), data)
        return data

    def _check_serves(self, m, data, n=4):
        for i in range(n):
            self.assertEqual(sp.sha1(sp.read_file(m.path(f'c{i}'))),
                             sp.sha1(data))
        new = os.urandom(300 * KiB)
        sp.write_file(m.path('new'), new)
        self.assertEqual(sp.read_file(m.path('new')), new)
        self.assertIn('pages_sharing', m.stats())
        self.assertEqual(m.stop(), 0, m.log()[-3000:])
        self.assertEqual(sp.read_file(m.bpath('new')), new)

    def test_state_dir_on_readonly_tmpfs_mount_serves_with_warning(self):
        state = os.path.join(self.tmp, 'state')
        os.mkdir(state)
        _run(['mount', '-t', 'tmpfs', '-o', 'size=4m,mode=0700', 'tmpfs',
              state])
        _run(['mount', '-o', 'remount,ro', state])
        m = sp.Mount(opts=('cache_size=64M', f'state_dir={state}'))
        self.addCleanup(m.cleanup)
        data = self._copies(m)
        m.start()
        self._check_serves(m, data)
        self.assertIn(state, m.log(), 'no warning names the read-only '
                      'state directory')
        self.assertEqual(os.listdir(state), [])

    def test_existing_store_bind_mounted_readonly_serves_with_warning(self):
        state = os.path.join(self.tmp, 'store')
        m = sp.Mount(opts=('cache_size=64M', f'state_dir={state}'))
        self.addCleanup(m.cleanup)
        data = self._copies(m)
        m.start()
        for i in range(4):
            sp.read_file(m.path(f'c{i}'))
        self.assertEqual(m.stop(), 0, m.log()[-3000:])
        self.assertIn('data.mdb', os.listdir(state))
        _run(['mount', '--bind', state, state])
        _run(['mount', '-o', 'remount,bind,ro', state])
        before = sp.read_file(os.path.join(state, 'data.mdb'))
        m.start()
        self._check_serves(m, data)
        self.assertIn(state, m.log(), 'no warning names the read-only '
                      'state directory')
        self.assertEqual(sp.read_file(os.path.join(state, 'data.mdb')),
                         before)


class TinyStoreQuota(sp.MountTestCase):
    mount_opts = ('cache_size=256M', 'store_quota=1M')

    def test_store_quota_1m_many_shared_pages_mount_keeps_working(self):
        data = os.urandom(1 * MiB) * 8
        names = []
        for i in range(12):
            names.append(f'c{i}')
            sp.write_file(self.m.bpath(names[-1]), data)
        for i in range(3):
            names.append(f'z{i}')
            with open(self.m.bpath(names[-1]), 'wb') as f:
                f.truncate(48 * MiB)
        want = {n: sp.sha1(data) for n in names if n.startswith('c')}
        want.update({n: sp.sha1(bytes(48 * MiB)) for n in names
                     if n.startswith('z')})
        for n in names:
            self.assertEqual(sp.sha1(sp.read_file(self.m.path(n))), want[n], n)
        st = self.m.stats()
        self.assertGreater(st['pages_sharing'], 10 * 2048, st)
        # Writes still work and reach the disk; the store stays in bounds.
        new = os.urandom(512 * KiB)
        sp.write_file(self.m.path('new'), new)
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        self.assertEqual(sp.read_file(self.m.bpath('new')), new)
        mdb = self.m.bpath('.samepage', 'data.mdb')
        # Quotas under 4 MiB are raised to 4 MiB (store.h).
        self.assertLessEqual(os.path.getsize(mdb), 4 * MiB + 64 * KiB)
        # And the next mount still opens it and serves the same data.
        self.m.start()
        for n in names:
            self.assertEqual(sp.sha1(sp.read_file(self.m.path(n))), want[n], n)


if __name__ == '__main__':
    sp.main()
