"""The cache outlives the kernel's inodes and holds up under memory pressure.

* The kernel forgets FUSE inodes when it reclaims its inode cache
  (drop_caches here): the cached pages stay with the backing file, and the
  next lookup of the unchanged file finds them without reading the disk.
* A file changed behind the mount while forgotten serves the new bytes.
* In a memory cgroup, the default cache_size is a share of the cgroup's
  limit, and a daemon whose cgroup allows 1.5 x cache_size reads 4 x
  cache_size of unique data and lives.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4096


def forget_inodes(m, names):
    """Make the kernel forget the inodes of the mount (drop_caches 2) and
    wait until the daemon kept the files' pages: FORGET is sent
    asynchronously. Bounded: the kernel's work, not ours."""
    for _ in range(200):
        sp.drop_caches()
        if m.stats()['files_kept'] >= len(names):
            return
        time.sleep(0.05)
    raise AssertionError(f'files not forgotten: {m.stats()}')


def read_all(path):
    with open(path, 'rb', buffering=0) as f:
        out = bytearray()
        while True:
            b = f.read(MiB)
            if not b:
                return bytes(out)
            out += b


class TestForget(sp.MountTestCase):
    mount_opts = ('cache_size=64M',)

    def test_forgotten_file_keeps_its_pages(self):
        data = os.urandom(4 * MiB)
        sp.write_file(os.path.join(self.m.backing, 'f'), data)
        self.assertEqual(read_all(self.m.path('f')), data)
        before = self.m.stats()
        forget_inodes(self.m, ['f'])
        self.assertEqual(read_all(self.m.path('f')), data)
        after = self.m.stats()
        self.assertEqual(after['backing_read_bytes'],
                         before['backing_read_bytes'], after)
        self.assertEqual(after['misses'], before['misses'], after)
        self.assertGreaterEqual(after['file_reattaches'], 1, after)

    def test_forgotten_file_changed_behind_serves_new_bytes(self):
        old = os.urandom(2 * MiB)
        sp.write_file(os.path.join(self.m.backing, 'g'), old)
        self.assertEqual(read_all(self.m.path('g')), old)
        forget_inodes(self.m, ['g'])
        new = os.urandom(MiB + 100)
        with open(os.path.join(self.m.backing, 'g'), 'r+b') as f:
            f.write(new)
            f.truncate()
        self.assertEqual(read_all(self.m.path('g')), new)

    def test_written_then_forgotten_file_reads_what_was_written(self):
        data = bytearray(os.urandom(MiB))
        sp.write_file(os.path.join(self.m.backing, 'h'), bytes(data))
        fd = os.open(self.m.path('h'), os.O_RDWR)
        try:
            os.pwrite(fd, b'w' * 5000, 3000)
        finally:
            os.close(fd)
        data[3000:8000] = b'w' * 5000
        forget_inodes(self.m, ['h'])
        self.assertEqual(read_all(self.m.path('h')), bytes(data))
        with open(os.path.join(self.m.backing, 'h'), 'rb') as f:
            self.assertEqual(f.read(), bytes(data))


class MemCgroup:
    """A memory cgroup (v2, or v1's memory controller) with a limit; a
    context manager. procs is the file a process writes its pid to."""

    def __init__(self, limit):
        self.limit = limit
        self.dir = None

    def __enter__(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest('cgroups need root')
        v2 = '/sys/fs/cgroup/cgroup.controllers'
        if os.path.exists(v2) and 'memory' in open(v2).read():
            base, limit_file = '/sys/fs/cgroup', 'memory.max'
            with open(os.path.join(base, 'cgroup.subtree_control'), 'w') as f:
                try:
                    f.write('+memory')
                except OSError:
                    pass
        elif os.path.isdir('/sys/fs/cgroup/memory'):
            base, limit_file = '/sys/fs/cgroup/memory', \
                'memory.limit_in_bytes'
        else:
            raise unittest.SkipTest('no memory cgroup here')
        self.dir = tempfile.mkdtemp(prefix='sp-test-', dir=base)
        with open(os.path.join(self.dir, limit_file), 'w') as f:
            f.write(str(self.limit))
        self.procs = os.path.join(self.dir, 'cgroup.procs')
        return self

    def __exit__(self, *exc):
        if self.dir:
            for _ in range(100):
                try:
                    os.rmdir(self.dir)
                    break
                except OSError:
                    time.sleep(0.05)  # its last process is exiting
        return False


class CgroupMount(sp.Mount):
    """A mount whose daemon starts inside a cgroup."""

    def __init__(self, procs, **kw):
        super().__init__(**kw)
        self.procs = procs

    def command(self):
        return (['/bin/sh', '-c', f'echo $$ > {self.procs} && exec "$@"',
                 'sh'] + super().command())


class TestCgroup(unittest.TestCase):

    def setUp(self):
        sp.require_env()
        if sp.SANITIZED:
            raise unittest.SkipTest('memory bounds do not hold under '
                                    'sanitizers')

    def mount(self, cg, opts):
        m = CgroupMount(cg.procs, opts=opts)
        m.start()
        self.addCleanup(m.cleanup)
        return m

    def test_default_cache_size_is_a_share_of_the_cgroup_limit(self):
        with MemCgroup(256 * MiB) as cg:
            m = self.mount(cg, ())
            try:
                self.assertEqual(m.stats()['cache_limit_bytes'], 64 * MiB)
            finally:
                m.stop()

    def test_daemon_lives_reading_4x_its_cache_in_1_5x(self):
        cache = 64 * MiB
        with MemCgroup(cache * 3 // 2) as cg:
            m = self.mount(cg, (f'cache_size={cache >> 20}M',))
            try:
                seeds = []
                for i in range(4):
                    d = os.urandom(cache)
                    sp.write_file(os.path.join(m.backing, f'u{i}'), d)
                    seeds.append(d)
                for i, d in enumerate(seeds):
                    self.assertEqual(read_all(m.path(f'u{i}')), d)
                self.assertTrue(sp._pid_alive(m.pid), 'daemon killed')
                st = m.stats()
                self.assertLessEqual(st['cache_bytes'], cache, st)
            finally:
                rc = m.stop()
            self.assertEqual(rc, 0, m.log())


if __name__ == '__main__':
    sp.main()
