"""Bad command lines: samepagefs must refuse them cleanly.

For each mistake a user can make: a non-zero exit, one message on stderr
that names the offending thing, and nothing mounted. Each case runs both in
the foreground (-f) and daemonising, because the two paths part early.
"""

import os
import shutil
import subprocess
import tempfile
import unittest

import sp


class BadInput(unittest.TestCase):

    def setUp(self):
        sp.require_env()
        self.tmp = tempfile.mkdtemp(prefix='sp-bad-')
        self.addCleanup(self._cleanup)
        self.backing = os.path.join(self.tmp, 'backing')
        self.mnt = os.path.join(self.tmp, 'mnt')
        os.mkdir(self.backing)
        os.mkdir(self.mnt)

    def _cleanup(self):
        for target in reversed(sp.mounts_under(self.tmp)):
            subprocess.run(['fusermount3', '-u', target], stderr=subprocess.DEVNULL)
            if sp.is_mounted(target):
                subprocess.run(['umount', '-l', target])
        if not sp.mounts_under(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def run_fs(self, args, foreground):
        cmd = [sp.SAMEPAGEFS] + (['-f'] if foreground else []) + args
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return None  # still running: it accepted the command line

    def assertRefused(self, args, names, expect_mounts=0):
        """Both modes: exit != 0, stderr names one of names, no new mount."""
        for fg in (True, False):
            with self.subTest(foreground=fg):
                r = self.run_fs(args, fg)
                self.assertIsNotNone(r, f'{args} did not exit within 10 s')
                mounted = sp.mounts_under(self.tmp)
                self.assertEqual(len(mounted), expect_mounts,
                                 f'{args} left a mount: {mounted}')
                self.assertNotEqual(r.returncode, 0, f'{args} exited 0')
                err = r.stderr.strip()
                self.assertTrue(err, f'{args}: nothing on stderr')
                self.assertTrue(any(n in err for n in names),
                                f'{args}: stderr does not name {names}: {err!r}')
                lines = [ln for ln in err.splitlines() if ln.strip()]
                self.assertLessEqual(len(lines), 2,
                                     f'{args}: expected one message, got {err!r}')

    def test_missing_backing_dir(self):
        missing = os.path.join(self.tmp, 'no-such-dir')
        self.assertRefused(['-o', 'cache_size=64M', missing, self.mnt], [missing])

    def test_backing_is_a_file(self):
        f = os.path.join(self.tmp, 'file')
        sp.write_file(f, b'not a dir')
        self.assertRefused(['-o', 'cache_size=64M', f, self.mnt], [f])

    def test_missing_mount_point(self):
        missing = os.path.join(self.tmp, 'no-such-mnt')
        self.assertRefused(['-o', 'cache_size=64M', self.backing, missing], [missing])

    def test_mount_point_already_mounted_by_samepagefs(self):
        m = sp.Mount(opts=('cache_size=64M',), backing=self.backing, mnt=self.mnt)
        self.addCleanup(m.cleanup)
        m.start()
        sp.write_file(m.path('f'), b'first mount')
        self.assertRefused(['-o', 'cache_size=64M', self.backing, self.mnt],
                           [self.mnt], expect_mounts=1)
        # The first mount still serves requests.
        self.assertEqual(sp.read_file(m.path('f')), b'first mount')
        self.assertEqual(m.stop(), 0)

    def test_cache_size_not_a_number(self):
        self.assertRefused(['-o', 'cache_size=abc', self.backing, self.mnt],
                           ['abc'])

    def test_cache_size_zero(self):
        self.assertRefused(['-o', 'cache_size=0', self.backing, self.mnt],
                           ['cache_size'])

    def test_read_ahead_kb_not_a_number_or_too_large(self):
        for bad in ('-1', '4M', str((1 << 20) + 1)):
            self.assertRefused(['-o', 'read_ahead_kb=' + bad, self.backing,
                                self.mnt], ['read_ahead_kb', bad])

    def test_unknown_option(self):
        self.assertRefused(['-o', 'cache_size=64M,bogus_knob=1', self.backing,
                            self.mnt], ['bogus_knob'])

    def test_missing_arguments(self):
        self.assertRefused([self.backing], ['mount point', 'MOUNTPOINT', 'usage', 'Usage'])


if __name__ == '__main__':
    sp.main()
