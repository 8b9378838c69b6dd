"""Persistence through the LMDB store (state_dir): a restarted daemon knows
which pages are identical without reading or hashing them again (trusting
a page it does not read on its SHA-256 only), never trusts a fingerprint
of a file that changed, rebuilds a store of the format without digests
with one line, refuses a damaged store with one clear message, forgets
deleted files and survives being killed.
"""

import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4096


def store_counts(state_dir):
    """Entries per database of the store, from `samepagectl store`.

    Without samepagectl built the test is skipped; a samepagectl that
    cannot read the store the daemon left, or does not list its files
    database, fails it: that is a broken tool, not a missing one.
    """
    if not os.access(sp.SAMEPAGECTL, os.X_OK):
        raise unittest.SkipTest(f'{sp.SAMEPAGECTL} is not built')
    r = subprocess.run([sp.SAMEPAGECTL, 'store', state_dir],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f'samepagectl store {state_dir} failed '
                             f'({r.returncode}): {r.stderr.strip()}')
    out = {}
    for m in re.finditer(r'^(\w+) +(\d+) ', r.stdout, re.M):
        out[m.group(1)] = int(m.group(2))
    if 'files' not in out:
        raise AssertionError('samepagectl store does not list the files '
                             f'database:\n{r.stdout}')
    return out


class PersistCase(sp.MountTestCase):
    mount_opts = ('cache_size=256M',)

    def copies(self, n, size, prefix='copy'):
        data = os.urandom(size)
        names = [f'{prefix}{i}' for i in range(n)]
        for name in names:
            sp.write_file(self.m.bpath(name), data)
        return names, sp.sha1(data)

    def read_all(self, names):
        return {n: sp.sha1_path(self.m.path(n)) for n in names}

    def state(self):
        return self.m.bpath('.samepage')


def io_read_bytes(pid):
    """Bytes the process made the kernel read from disk: the backing
    files (O_DIRECT) and the store's map alike."""
    with open(f'/proc/{pid}/io') as f:
        for line in f:
            if line.startswith('read_bytes:'):
                return int(line.split()[1])
    raise unittest.SkipTest('/proc/PID/io has no read_bytes')


class WarmRestart(PersistCase):
    NCOPIES = 8
    SIZE = 16 * MiB

    def test_restart_unchanged_8_copies_reads_one_hashes_none_of_7(self):
        names, want = self.copies(self.NCOPIES, self.SIZE)
        self.assertEqual(set(self.read_all(names).values()), {want})
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        store = store_counts(self.state())
        sp.drop_caches()
        self.m.start()
        io0 = io_read_bytes(self.m.pid)
        # The first copy is read from disk (and hashed: a frame's
        # fingerprint comes from what was read, never from the store) ...
        self.assertEqual(sp.sha1_path(self.m.path(names[0])), want)
        st0 = self.m.stats()
        # ... the 7 others are mapped to its frames without reading or
        # hashing them, on the SHA-256s the store holds.
        got = self.read_all(names[1:])
        st = self.m.stats()
        io = io_read_bytes(self.m.pid) - io0
        self.assertEqual(set(got.values()), {want}, got)
        copy_pages = self.SIZE // PAGE
        seven = (self.NCOPIES - 1) * copy_pages
        print(f'\nwarm restart, {self.NCOPIES} copies of '
              f'{self.SIZE // MiB} MiB: store {store}; read {io} bytes '
              f'from disk ({io / self.SIZE:.3f} copies, backing '
              f'{st["backing_read_bytes"]}); the 7 after the first: '
              f'{st["hashes_computed"] - st0["hashes_computed"]} hashes '
              f'of {seven} pages', file=sys.stderr)
        self.assertLessEqual(io, 1.2 * self.SIZE,
                             f'warm restart read more than one copy from '
                             f'disk (backing and store): {io} {st}')
        self.assertLessEqual(st['backing_read_bytes'], 1.2 * self.SIZE, st)
        hashed = st['hashes_computed'] - st0['hashes_computed']
        self.assertLessEqual(hashed, 0.05 * seven,
                             f'the copies mapped unread were hashed: {st}')
        self.assertGreaterEqual(st['pages_sharing'],
                                0.95 * (self.NCOPIES - 1) * copy_pages, st)


class ChangedBehind(PersistCase):

    def _patch_keep_mtime(self, path, page, data):
        st = os.stat(path)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, page * PAGE)
        finally:
            os.close(fd)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        st2 = os.stat(path)
        self.assertEqual((st2.st_size, st2.st_mtime_ns),
                         (st.st_size, st.st_mtime_ns))

    def test_changed_while_unmounted_same_size_old_mtime_serves_new(self):
        names, want = self.copies(3, 1 * MiB)
        self.read_all(names)
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        patch = os.urandom(PAGE)
        self._patch_keep_mtime(self.m.bpath('copy0'), 5, patch)
        new = sp.read_file(self.m.bpath('copy0'))
        self.m.start()
        # Copies first: their frames are what a stale fingerprint of
        # copy0 would map it to.
        self.assertEqual(sp.sha1_path(self.m.path('copy1')), want)
        self.assertEqual(sp.sha1_path(self.m.path('copy2')), want)
        got = sp.read_file(self.m.path('copy0'))
        self.assertEqual(got[5 * PAGE:6 * PAGE], patch,
                         'a page changed behind the mount (size and mtime '
                         'restored) is served from the old fingerprint')
        self.assertEqual(sp.sha1(got), sp.sha1(new))

    def test_changed_while_mounted_closed_file_reopen_serves_new(self):
        names, want = self.copies(3, 1 * MiB)
        self.read_all(names)
        patch = os.urandom(PAGE)
        self._patch_keep_mtime(self.m.bpath('copy1'), 7, patch)
        got = sp.read_file(self.m.path('copy1'))
        self.assertEqual(got[7 * PAGE:8 * PAGE], patch)
        self.assertEqual(sp.sha1_path(self.m.path('copy2')), want)


class OldFormat(PersistCase):

    def _set_format(self, value):
        """Rewrite meta's format (u32, big-endian) with LMDB's own tool."""
        if not shutil.which('mdb_load'):
            raise unittest.SkipTest('mdb_load (lmdb-utils) is missing')
        text = ('VERSION=3\nformat=bytevalue\ntype=btree\nHEADER=END\n'
                f' {b"format".hex()}\n {value:08x}\nDATA=END\n')
        subprocess.run(['mdb_load', '-s', 'meta', self.state()], input=text,
                       text=True, check=True, timeout=60)

    def complaints(self, since):
        """Lines of the log after since, once the daemon said it mounted
        (the kernel sees the mount before the store is opened)."""
        deadline = time.monotonic() + 10
        while ('mounted ' not in self.m.log()[since:]
               and time.monotonic() < deadline):
            time.sleep(0.05)
        return [ln for ln in self.m.log()[since:].splitlines()
                if ln.strip() and 'mounted ' not in ln
                and 'unmounting ' not in ln]

    def test_format1_store_rebuilt_with_one_line_not_trusted(self):
        names, want = self.copies(4, 1 * MiB)
        self.read_all(names)
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        self._set_format(1)

        since = len(self.m.log())
        self.m.start()
        lines = self.complaints(since)
        self.assertEqual(len(lines), 1, f'want one line, got {lines}')
        self.assertIn(self.state(), lines[0])
        self.assertIn('format 1 (no cryptographic digests): rebuilt',
                      lines[0])
        # Nothing of the old store was used: every copy is read.
        self.assertEqual(set(self.read_all(names).values()), {want})
        st = self.m.stats()
        self.assertGreaterEqual(st['backing_read_bytes'], 4 * MiB, st)
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])

        # Rebuilt as the current format: silent, and it pays again.
        since = len(self.m.log())
        self.m.start()
        self.assertEqual(self.complaints(since), [])
        self.assertEqual(set(self.read_all(names).values()), {want})
        st = self.m.stats()
        self.assertLessEqual(st['backing_read_bytes'], 1.2 * MiB, st)


class DamagedStore(PersistCase):

    def _make_store(self):
        names, want = self.copies(3, 1 * MiB)
        self.read_all(names)
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        mdb = os.path.join(self.state(), 'data.mdb')
        self.assertTrue(os.path.isfile(mdb))
        return names, want, mdb

    def _run_refused(self, foreground):
        cmd = ([sp.SAMEPAGEFS] + (['-f'] if foreground else [])
               + ['-o', ','.join(self.m.opts), self.m.backing, self.m.mnt])
        try:
            r = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=20)
        except subprocess.TimeoutExpired:
            self.fail(f'{cmd} still running after 20 s on a damaged store')
        finally:
            if sp.is_mounted(self.m.mnt):
                subprocess.run(['umount', '-l', self.m.mnt])
                pid = sp.find_daemon_pid(self.m.mnt)
                if pid:
                    os.kill(pid, 9)
                self.fail(f'{cmd} left a mount on a damaged store')
        return r

    def assertRefusedWithMessage(self, what):
        for fg in (True, False):
            with self.subTest(what=what, foreground=fg):
                r = self._run_refused(fg)
                self.assertNotEqual(r.returncode, 0, f'{what}: mounted')
                self.assertGreater(r.returncode, 0,
                                   f'{what}: killed by a signal '
                                   f'{-r.returncode}\n{r.stderr}')
                err = [ln for ln in r.stderr.splitlines() if ln.strip()]
                self.assertEqual(len(err), 1, f'{what}: want one message, '
                                 f'got {err}')
                self.assertIn(self.state(), err[0])
                self.assertIn('rebuild_state', err[0])
                self.assertFalse(sp.is_mounted(self.m.mnt))

    def _rebuild_and_check(self, names, want):
        self.m.opts = list(self.mount_opts) + ['rebuild_state']
        self.m.start()
        self.assertEqual(set(self.read_all(names).values()), {want})
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        # The rebuilt store opens without the option.
        self.m.opts = list(self.mount_opts)
        self.m.start()
        self.assertEqual(set(self.read_all(names).values()), {want})

    def test_garbage_data_mdb_refused_one_message_rebuild_state_mounts(self):
        names, want, mdb = self._make_store()
        sp.write_file(mdb, os.urandom(64 * KiB))
        self.assertRefusedWithMessage('data.mdb of random bytes')
        self._rebuild_and_check(names, want)

    def test_store_with_damaged_btree_pages_never_crashes_or_lies(self):
        names, want, mdb = self._make_store()
        size = os.path.getsize(mdb)
        rng = random.Random(3)
        with open(mdb, 'r+b') as f:
            # Keep LMDB's two meta pages, smash the tree pages after them.
            for off in range(2 * PAGE, size, PAGE):
                f.seek(off + rng.randrange(PAGE - 64))
                f.write(os.urandom(64))
        try:
            self.m.start()
        except sp.MountError:
            # Refused: with the message, and not by a crash.
            rc = self.m.returncode
            self.assertGreater(rc, 0, f'killed by signal {-rc}:\n'
                               f'{self.m.log()[-3000:]}')
            self.assertIn('rebuild_state', self.m.log())
            self.assertIn(self.state(), self.m.log())
        else:
            # The damage was not seen at open: then no page may be served
            # wrong, and the daemon must not crash on the way.
            self.assertEqual(set(self.read_all(names).values()), {want})
            new = os.urandom(64 * KiB)
            sp.write_file(self.m.path('new'), new)
            self.assertEqual(sp.read_file(self.m.path('new')), new)
            self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        self._rebuild_and_check(names, want)


class DeletedFile(PersistCase):

    def files_after_stop(self):
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        return store_counts(self.state())['files']

    def test_deleted_file_records_leave_the_store(self):
        names, want = self.copies(5, 256 * KiB)
        self.read_all(names)
        n0 = self.files_after_stop()
        self.assertGreaterEqual(n0, 5)

        # Read in this session, then deleted through the mount.
        self.m.start()
        sp.sha1_path(self.m.path('copy4'))
        os.unlink(self.m.path('copy4'))
        n1 = self.files_after_stop()
        self.assertEqual(n1, n0 - 1, 'records of a file read, then deleted '
                         'through the mount')

        # Deleted through the mount without being opened since the mount.
        self.m.start()
        os.unlink(self.m.path('copy3'))
        n2 = self.files_after_stop()
        self.assertEqual(n2, n1 - 1, 'records of a file deleted through the '
                         'mount without being opened first')

        # Deleted behind the mount: pruned at the latest while the next
        # mount runs (a background pass).
        os.unlink(self.m.bpath('copy2'))
        self.m.start()
        self.assertEqual(sp.sha1_path(self.m.path('copy0')), want)
        time.sleep(2)
        n3 = self.files_after_stop()
        self.assertEqual(n3, n2 - 1, 'records of a file deleted behind the '
                         'mount')


class KillDuringIO(PersistCase):

    def test_kill9_during_reads_and_writes_store_opens_data_right(self):
        names, want = self.copies(6, 4 * MiB)
        synced = {}
        stop = threading.Event()

        def reader(k):
            rng = random.Random(k)
            while not stop.is_set():
                try:
                    name = rng.choice(names)
                    with open(self.m.path(name), 'rb') as f:
                        f.seek(rng.randrange(4 * MiB // PAGE) * PAGE)
                        f.read(256 * KiB)
                except OSError:
                    return

        def writer():
            i = 0
            while not stop.is_set():
                data = os.urandom(rng_size[i % len(rng_size)])
                name = f'w{i}'
                try:
                    with open(self.m.path(name), 'wb') as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                except OSError:
                    return
                synced[name] = sp.sha1(data)
                # Also change a copy, through the mount.
                try:
                    fd = os.open(self.m.path(names[i % 3]), os.O_WRONLY)
                    try:
                        os.pwrite(fd, b'x' * 100, i * PAGE)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError:
                    return
                changed.add(names[i % 3])
                i += 1

        rng_size = [300 * KiB, 1 * MiB + 3, 17 * PAGE]
        changed = set()
        threads = [threading.Thread(target=reader, args=(k,), daemon=True)
                   for k in range(3)]
        threads.append(threading.Thread(target=writer, daemon=True))
        for t in threads:
            t.start()
        time.sleep(1.5)
        log_at = len(self.m.log())
        self.m.kill9()
        stop.set()
        for t in threads:
            t.join(30)
        self.assertFalse([t for t in threads if t.is_alive()],
                         'I/O still blocked after the daemon was killed')
        self.assertGreater(len(synced), 0, 'the writer made no progress')

        self.m.start()
        lines = [ln for ln in self.m.log()[log_at:].splitlines()
                 if ln.strip() and 'mounted' not in ln]
        self.assertFalse(lines, f'complaints after the crash: {lines}')
        for name, h in synced.items():
            self.assertEqual(sp.sha1_path(self.m.path(name)), h, name)
        for name in names:
            if name not in changed:
                self.assertEqual(sp.sha1_path(self.m.path(name)), want, name)
        # Mounted copies still match the disk, changed or not.
        for name in names:
            self.assertEqual(sp.sha1_path(self.m.path(name)),
                             sp.sha1_path(self.m.bpath(name)), name)


class MountedOverBacking(unittest.TestCase):
    """A backing directory mounted over itself: the store, inside it,
    is opened by a descriptor taken before the mount, not by a path that
    would lead through the mount before it serves (a hang at start)."""

    def setUp(self):
        sp.require_env()

    def test_store_works_when_mounted_over_the_backing_dir(self):
        m = sp.Mount(opts=('cache_size=64M',))
        self.addCleanup(m.cleanup)
        m.mnt = m.backing
        data = os.urandom(64 * 1024)
        sp.write_file(os.path.join(m.backing, 'f'), data)
        m.start()
        try:
            self.assertEqual(sp.read_file(m.path('f')), data)
            self.assertEqual(os.listdir(m.mnt), ['f'])  # store hidden
            sp.write_file(m.path('g'), data)
        finally:
            self.assertEqual(m.stop(), 0, m.log())
        self.assertTrue(os.path.exists(os.path.join(
            m.backing, '.samepage', 'data.mdb')))
        self.assertEqual(sp.read_file(os.path.join(m.backing, 'g')), data)

    def test_prune_keeps_records_of_files_still_there(self):
        # The background pass that forgets deleted files walks the backing
        # directory: through the mount it would find no backing file and
        # drop every record.
        m = sp.Mount(opts=('cache_size=64M',))
        self.addCleanup(m.cleanup)
        m.mnt = m.backing
        data = os.urandom(256 * 1024)
        for n in ('a', 'b', 'c'):
            sp.write_file(os.path.join(m.backing, n), data)
        m.start()
        for n in ('a', 'b', 'c'):
            self.assertEqual(sp.read_file(m.path(n)), data)
        self.assertEqual(m.stop(), 0, m.log())
        state = os.path.join(m.backing, '.samepage')
        n0 = store_counts(state)['files']
        self.assertGreaterEqual(n0, 3)
        os.unlink(os.path.join(m.backing, 'c'))  # while unmounted
        m.start()
        time.sleep(2)  # the pass runs in the background
        self.assertEqual(m.stop(), 0, m.log())
        self.assertEqual(store_counts(state)['files'], n0 - 1)


if __name__ == '__main__':
    sp.main()
