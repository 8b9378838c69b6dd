"""Mounting through mount(8), as an fstab line does.

mount -t fuse.samepagefs runs mount.fuse3, which runs `samepagefs` through
/bin/sh with the options and daemonises it; umount(8) must end the daemon.
mount(8) drops PATH from mount.fuse3's environment, so the shell finds the
program only in its default PATH. The tests therefore run in a private
mount namespace where a temp dir holding a `samepagefs` link is bound over
/usr/local/sbin: nothing outside this process sees it or the mounts.
"""

import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import sp


CLONE_NEWNS = 0x00020000
_bindir = None


def setUpModule():
    global _bindir
    sp.require_env()
    if not (shutil.which('mount.fuse3') or os.path.exists('/sbin/mount.fuse3')):
        raise unittest.SkipTest('mount.fuse3 is missing')
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise unittest.SkipTest('unshare(CLONE_NEWNS): '
                                + os.strerror(ctypes.get_errno()))
    subprocess.run(['mount', '--make-rprivate', '/'], check=True)
    _bindir = tempfile.mkdtemp(prefix='sp-fstab-bin-')
    os.symlink(sp.SAMEPAGEFS, os.path.join(_bindir, 'samepagefs'))
    os.makedirs('/usr/local/sbin', exist_ok=True)
    subprocess.run(['mount', '--bind', _bindir, '/usr/local/sbin'], check=True)


def tearDownModule():
    if _bindir:
        subprocess.run(['umount', '/usr/local/sbin'])
        shutil.rmtree(_bindir, ignore_errors=True)


class Fstab(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='sp-fstab-')
        self.addCleanup(self._cleanup)
        self.backing = os.path.join(self.tmp, 'backing')
        self.mnt = os.path.join(self.tmp, 'mnt')
        for d in (self.backing, self.mnt):
            os.mkdir(d)
        self.pid = None

    def _cleanup(self):
        if sp.is_mounted(self.mnt):
            subprocess.run(['umount', self.mnt], stderr=subprocess.DEVNULL)
        if sp.is_mounted(self.mnt):
            subprocess.run(['umount', '-l', self.mnt])
        if self.pid and sp._pid_alive(self.pid):
            os.kill(self.pid, 9)
        if not sp.is_mounted(self.mnt):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def mount(self, args):
        r = subprocess.run(['mount'] + args, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, f'mount {args}: {r.stdout}{r.stderr}')
        entry = sp.mount_entry(self.mnt)
        self.assertIsNotNone(entry, 'not mounted when mount(8) returned')
        self.assertEqual(entry[2], 'fuse.samepagefs')
        self.pid = sp.find_daemon_pid(self.mnt)
        return entry

    def umount_and_check(self):
        r = subprocess.run(['umount', self.mnt], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(sp.is_mounted(self.mnt))
        if self.pid:
            deadline = time.monotonic() + 10
            while sp._pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertFalse(sp._pid_alive(self.pid), 'daemon outlived umount')

    def test_mount_t_fuse_samepagefs(self):
        sp.write_file(os.path.join(self.backing, 'old'), b'was there')
        self.mount(['-t', 'fuse.samepagefs', '-o', 'cache_size=64M',
                    self.backing, self.mnt])
        self.assertEqual(sp.read_file(os.path.join(self.mnt, 'old')), b'was there')
        sp.write_file(os.path.join(self.mnt, 'new'), b'via mount(8)')
        self.umount_and_check()
        self.assertEqual(sp.read_file(os.path.join(self.backing, 'new')),
                         b'via mount(8)')

    def test_fstab_line(self):
        fstab = os.path.join(self.tmp, 'fstab')
        sp.write_file(fstab, f'{self.backing} {self.mnt} fuse.samepagefs '
                             f'cache_size=64M,allow_other 0 0\n'.encode())
        entry = self.mount(['-T', fstab, self.mnt])
        self.assertIn('allow_other', entry[3])
        sp.write_file(os.path.join(self.mnt, 'f'), b'fstab')
        self.umount_and_check()
        self.assertEqual(sp.read_file(os.path.join(self.backing, 'f')), b'fstab')

    def remount(self, how):
        """mount -o remount,how: that flag changes, no other (nosuid,
        nodev, ... stay), and the same daemon serves the mount."""
        def others():
            return set(sp.mount_entry(self.mnt)[3].split(',')) - {'ro', 'rw'}

        before = others()
        r = subprocess.run(['mount', '-o', f'remount,{how}', self.mnt],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, f'remount,{how}: {r.stderr}')
        self.assertIn(how, sp.mount_entry(self.mnt)[3].split(','))
        self.assertEqual(others(), before, f'remount,{how}')
        self.assertEqual(sp.find_daemon_pid(self.mnt), self.pid,
                         'remount started another daemon')

    def test_remount_read_only_and_back(self):
        self.mount(['-t', 'fuse.samepagefs', '-o', 'cache_size=64M,nosuid',
                    self.backing, self.mnt])
        f = os.path.join(self.mnt, 'f')
        sp.write_file(f, b'before')
        self.remount('ro')
        self.assertEqual(sp.read_file(f), b'before')
        for op in (lambda: open(f, 'ab'),
                   lambda: os.mkdir(os.path.join(self.mnt, 'd'))):
            with self.assertRaises(OSError) as cm:
                op()
            self.assertEqual(cm.exception.errno, errno.EROFS)
        self.remount('rw')
        sp.write_file(f, b'after')
        self.umount_and_check()
        self.assertEqual(sp.read_file(os.path.join(self.backing, 'f')),
                         b'after')

    def test_remount_of_what_is_not_samepage_fails(self):
        r = subprocess.run([sp.SAMEPAGEFS, '-o', 'remount,ro', self.tmp],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn('no samepage mount is there', r.stderr)


if __name__ == '__main__':
    sp.main()
