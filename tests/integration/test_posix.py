"""POSIX behaviour of a samepagefs mount, checked against the backing dir.

Each operation goes through the mount; the test then looks at the backing
directory, where the file must have the same content, mode, owner and times
once synced (fsync or close of the last writer). One mount per test.
"""

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import unittest

import sp

libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                           ctypes.c_char_p, ctypes.c_uint]

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
PAGE = 4096
NOBODY = 65534


def renameat2(old, new, flags):
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                      flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


def sync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pattern(n, seed=1):
    """n bytes that differ per page and per seed, so misplaced pages show."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += (f'{seed:08d}:{i:012d}|' * 200).encode()[:PAGE]
        i += 1
    return bytes(out[:n])


def in_child(fn):
    """Run fn() in a forked child; its return value (an int) as exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        except BaseException as e:  # report, never unwind into the parent
            sys.stderr.write(f'child: {e!r}\n')
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def open_close(path, mode):
    open(path, mode).close()


# POSIX ACLs in their xattr form (what setfacl writes): version 2, then
# (tag, permissions, id) entries.
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = \
    0x01, 0x02, 0x04, 0x10, 0x20
ACL_NO_ID = 0xffffffff


def acl_xattr(*entries):
    """entries: (tag, perm) or (tag, perm, id), in setfacl's order."""
    out = (2).to_bytes(4, 'little')
    for e in entries:
        tag, perm, ident = (e + (ACL_NO_ID,))[:3]
        out += (tag.to_bytes(2, 'little') + perm.to_bytes(2, 'little') +
                ident.to_bytes(4, 'little'))
    return out


def backing_has_acls(path):
    try:
        os.getxattr(path, 'system.posix_acl_access')
    except OSError as e:
        return e.errno == errno.ENODATA
    return True


def become_nobody():
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


class PosixCase(sp.MountTestCase):
    mount_opts = ('cache_size=64M',)

    def setUp(self):
        super().setUp()
        self.old_umask = os.umask(0o022)
        self.addCleanup(os.umask, self.old_umask)

    def assertSynced(self, rel, content=None, times=True):
        """The file at rel looks the same through the mount and in backing."""
        p, b = self.m.path(rel), self.m.bpath(rel)
        if content is not None:
            self.assertEqual(sp.read_file(p), content, f'{rel} via mount')
        if stat.S_ISREG(os.lstat(p).st_mode):
            sync_file(p)
            self.assertEqual(sp.read_file(b), sp.read_file(p),
                             f'{rel}: backing content differs')
        sm, sb = os.lstat(p), os.lstat(b)
        self.assertEqual(stat.filemode(sm.st_mode), stat.filemode(sb.st_mode),
                         f'{rel}: mode')
        self.assertEqual((sm.st_uid, sm.st_gid), (sb.st_uid, sb.st_gid),
                         f'{rel}: owner')
        self.assertEqual(sm.st_size, sb.st_size, f'{rel}: size')
        if times:
            self.assertEqual(sm.st_mtime_ns, sb.st_mtime_ns, f'{rel}: mtime')


class TestFiles(PosixCase):

    def test_lookup_stat_of_backing_file_matches(self):
        data = pattern(3 * PAGE + 17)
        sp.write_file(self.m.bpath('pre'), data)
        os.chmod(self.m.bpath('pre'), 0o640)
        os.utime(self.m.bpath('pre'), ns=(1_000_000_123, 2_000_000_456))
        st = os.stat(self.m.path('pre'))
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(st.st_size, len(data))
        self.assertEqual(st.st_mtime_ns, 2_000_000_456)
        self.assertEqual(st.st_nlink, 1)
        self.assertSynced('pre', data)
        with self.assertRaises(FileNotFoundError):
            os.stat(self.m.path('missing'))

    def test_create_write_read_roundtrip_reaches_backing(self):
        data = pattern(5 * PAGE + 123)
        fd = os.open(self.m.path('f'), os.O_CREAT | os.O_RDWR, 0o640)
        try:
            self.assertEqual(os.write(fd, data), len(data))
            self.assertEqual(os.pread(fd, len(data), 0), data)
            self.assertEqual(os.pread(fd, 100, PAGE - 50), data[PAGE - 50:PAGE + 50])
            os.fsync(fd)
            self.assertEqual(sp.read_file(self.m.bpath('f')), data)
        finally:
            os.close(fd)
        self.assertEqual(stat.S_IMODE(os.stat(self.m.bpath('f')).st_mode), 0o640)
        self.assertSynced('f', data)

    def test_overwrite_middle_of_cached_file(self):
        data = bytearray(pattern(4 * PAGE))
        sp.write_file(self.m.path('f'), bytes(data))
        self.assertEqual(sp.read_file(self.m.path('f')), bytes(data))  # cache it
        with open(self.m.path('f'), 'r+b') as f:
            f.seek(PAGE + 100)
            f.write(b'Z' * (2 * PAGE))
        data[PAGE + 100:3 * PAGE + 100] = b'Z' * (2 * PAGE)
        self.assertSynced('f', bytes(data))

    def test_o_append_writes_at_end(self):
        sp.write_file(self.m.path('a'), b'abc')
        fd = os.open(self.m.path('a'), os.O_WRONLY | os.O_APPEND)
        fd2 = os.open(self.m.path('a'), os.O_WRONLY | os.O_APPEND)
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, b'def')
            os.write(fd2, b'ghi')
            os.write(fd, b'jkl')
        finally:
            os.close(fd)
            os.close(fd2)
        self.assertSynced('a', b'abcdefghijkl')

    def test_o_trunc_empties_file(self):
        sp.write_file(self.m.path('t'), pattern(10000))
        sp.read_file(self.m.path('t'))
        fd = os.open(self.m.path('t'), os.O_WRONLY | os.O_TRUNC)
        try:
            self.assertEqual(os.fstat(fd).st_size, 0)
            os.write(fd, b'xy')
        finally:
            os.close(fd)
        self.assertSynced('t', b'xy')

    def test_o_excl_on_existing_file_fails(self):
        sp.write_file(self.m.path('e'), b'1')
        with self.assertRaises(FileExistsError):
            os.open(self.m.path('e'), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        fd = os.open(self.m.path('new'), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        self.assertTrue(os.path.exists(self.m.bpath('new')))

    def test_extending_write_leaves_zero_hole(self):
        off = (1 << 20) + 100
        with open(self.m.path('h'), 'wb') as f:
            f.write(b'head')
            f.seek(off)
            f.write(b'tail')
        expect = b'head' + bytes(off - 4) + b'tail'
        self.assertEqual(os.stat(self.m.path('h')).st_size, off + 4)
        self.assertSynced('h', expect)

    def test_read_at_and_after_eof(self):
        data = pattern(5000)
        sp.write_file(self.m.path('r'), data)
        fd = os.open(self.m.path('r'), os.O_RDONLY)
        try:
            self.assertEqual(os.pread(fd, 100, 5000), b'')
            self.assertEqual(os.pread(fd, 100, 4950), data[4950:])
            self.assertEqual(os.pread(fd, PAGE, 1 << 30), b'')
            self.assertEqual(os.pread(fd, 3 * PAGE, 0), data)
        finally:
            os.close(fd)

    def test_truncate_down_then_up_reads_zeroes(self):
        sp.write_file(self.m.path('t'), b'a' * (3 * PAGE))
        sp.read_file(self.m.path('t'))
        os.truncate(self.m.path('t'), 5000)
        self.assertSynced('t', b'a' * 5000)
        os.truncate(self.m.path('t'), 3 * PAGE)
        self.assertSynced('t', b'a' * 5000 + bytes(3 * PAGE - 5000))

    def test_ftruncate_with_dirty_pages(self):
        fd = os.open(self.m.path('t'), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, b'b' * (4 * PAGE))
            os.ftruncate(fd, PAGE + 1)
            os.ftruncate(fd, 4 * PAGE)
            self.assertEqual(os.pread(fd, 4 * PAGE, 0),
                             b'b' * (PAGE + 1) + bytes(3 * PAGE - 1))
        finally:
            os.close(fd)
        self.assertSynced('t', b'b' * (PAGE + 1) + bytes(3 * PAGE - 1))

    def test_chmod_file_and_dir(self):
        sp.write_file(self.m.path('f'), b'x')
        os.mkdir(self.m.path('d'))
        os.chmod(self.m.path('f'), 0o604)
        os.chmod(self.m.path('d'), 0o711)
        self.assertEqual(stat.S_IMODE(os.stat(self.m.bpath('f')).st_mode), 0o604)
        self.assertEqual(stat.S_IMODE(os.stat(self.m.bpath('d')).st_mode), 0o711)
        self.assertSynced('f')
        self.assertSynced('d')

    def test_chown_to_other_uid(self):
        sp.write_file(self.m.path('f'), b'x')
        os.chown(self.m.path('f'), NOBODY, NOBODY)
        st = os.stat(self.m.bpath('f'))
        self.assertEqual((st.st_uid, st.st_gid), (NOBODY, NOBODY))
        self.assertSynced('f')
        os.chown(self.m.path('f'), -1, 0)
        self.assertEqual(os.stat(self.m.bpath('f')).st_gid, 0)
        self.assertEqual(os.stat(self.m.bpath('f')).st_uid, NOBODY)

    def test_utimens_set_and_now(self):
        sp.write_file(self.m.path('f'), b'x')
        os.utime(self.m.path('f'), ns=(1_111_111_111_222_333_444,
                                       1_222_222_222_333_444_555))
        st = os.stat(self.m.bpath('f'))
        self.assertEqual(st.st_atime_ns, 1_111_111_111_222_333_444)
        self.assertEqual(st.st_mtime_ns, 1_222_222_222_333_444_555)
        self.assertSynced('f')
        before = time.time()
        os.utime(self.m.path('f'))  # UTIME_NOW
        for st in (os.stat(self.m.path('f')), os.stat(self.m.bpath('f'))):
            self.assertLess(abs(st.st_mtime - before), 5)
        self.assertSynced('f')

    def test_utimens_survives_later_writeback(self):
        # Data written before utime must not bump mtime when written back.
        with open(self.m.path('f'), 'wb') as f:
            f.write(pattern(3 * PAGE))
            f.flush()
            os.utime(f.fileno(), ns=(10**18, 10**18))
        sync_file(self.m.path('f'))
        self.assertEqual(os.stat(self.m.bpath('f')).st_mtime_ns, 10**18)
        self.assertEqual(os.stat(self.m.path('f')).st_mtime_ns, 10**18)

    def test_write_updates_mtime(self):
        sp.write_file(self.m.path('f'), b'x')
        os.utime(self.m.path('f'), ns=(10**18, 10**18))
        with open(self.m.path('f'), 'r+b') as f:
            f.write(b'y')
        self.assertNotEqual(os.stat(self.m.path('f')).st_mtime_ns, 10**18)
        self.assertSynced('f', b'y')


class TestDirs(PosixCase):

    def test_readdir_many_entries_matches_backing(self):
        d = self.m.path('many')
        os.mkdir(d)
        names = set()
        for i in range(1200):
            name = f'f{i:05d}' + 'x' * (i % 40)
            os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644))
            names.add(name)
        for i in range(30):  # entries made behind the mount show up too
            sp.write_file(self.m.bpath('many', f'b{i}'), b'')
            names.add(f'b{i}')
        os.mkdir(os.path.join(d, 'sub'))
        os.symlink('sub', os.path.join(d, 'lnk'))
        names |= {'sub', 'lnk'}
        listed = os.listdir(d)
        self.assertEqual(len(listed), len(set(listed)), 'duplicate entries')
        self.assertEqual(set(listed), names)
        self.assertEqual(sorted(listed), sorted(os.listdir(self.m.bpath('many'))))
        kinds = {e.name: (e.is_dir(follow_symlinks=False),
                          e.is_symlink()) for e in os.scandir(d)}
        self.assertEqual(kinds['sub'], (True, False))
        self.assertEqual(kinds['lnk'], (False, True))
        self.assertEqual(kinds['f00000'], (False, False))

    def test_readdir_root_matches_backing(self):
        for i in range(5):
            sp.write_file(self.m.path(f'r{i}'), b'')
        listed = set(os.listdir(self.m.mnt))
        backing = set(os.listdir(self.m.backing)) - {'.samepage'}
        self.assertEqual(listed, backing)

    def test_mkdir_rmdir_enotempty(self):
        os.mkdir(self.m.path('d'), 0o750)
        self.assertTrue(os.path.isdir(self.m.bpath('d')))
        self.assertEqual(stat.S_IMODE(os.stat(self.m.bpath('d')).st_mode), 0o750)
        sp.write_file(self.m.path('d', 'f'), b'x')
        with self.assertRaises(OSError) as cm:
            os.rmdir(self.m.path('d'))
        self.assertIn(cm.exception.errno, (errno.ENOTEMPTY, errno.EEXIST))
        with self.assertRaises(FileExistsError):
            os.mkdir(self.m.path('d'))
        os.unlink(self.m.path('d', 'f'))
        os.rmdir(self.m.path('d'))
        self.assertFalse(os.path.exists(self.m.bpath('d')))
        self.assertFalse(os.path.exists(self.m.path('d')))

    def test_dotdot_of_root_is_root(self):
        os.mkdir(self.m.path('d'))
        root = os.stat(self.m.mnt)
        up = os.stat(self.m.path('d', '..'))
        self.assertEqual((up.st_dev, up.st_ino), (root.st_dev, root.st_ino))
        parent = os.stat(os.path.dirname(self.m.mnt))
        above = os.stat(os.path.join(self.m.mnt, '..'))
        self.assertEqual((above.st_dev, above.st_ino),
                         (parent.st_dev, parent.st_ino))
        # Names must not escape the backing dir: '..' is resolved by the VFS.
        self.assertNotIn('backing', os.listdir(self.m.mnt))

    def test_state_dir_is_hidden(self):
        sp.write_file(self.m.path('f'), b'x')
        sync_file(self.m.path('f'))
        self.assertTrue(os.path.isdir(self.m.bpath('.samepage')),
                        'default state dir .samepage not in backing dir')
        self.assertNotIn('.samepage', os.listdir(self.m.mnt))
        with self.assertRaises(FileNotFoundError):
            os.stat(self.m.path('.samepage'))
        with self.assertRaises(OSError):
            os.listdir(self.m.path('.samepage'))


class TestNames(PosixCase):

    def test_unlink_open_file_stays_usable(self):
        data = pattern(3 * PAGE)
        fd = os.open(self.m.path('u'), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, data)
            os.unlink(self.m.path('u'))
            self.assertFalse(os.path.exists(self.m.path('u')))
            self.assertFalse(os.path.exists(self.m.bpath('u')))
            self.assertEqual(os.pread(fd, len(data), 0), data)
            os.pwrite(fd, b'more', len(data))
            os.fsync(fd)
            self.assertEqual(os.pread(fd, len(data) + 10, 0), data + b'more')
            self.assertEqual(os.fstat(fd).st_nlink, 0)
        finally:
            os.close(fd)
        time.sleep(0.2)
        # Writeback of the unlinked file must not bring the name back.
        self.assertFalse(os.path.exists(self.m.bpath('u')))
        self.assertNotIn('u', os.listdir(self.m.backing))
        self.assertFalse(os.path.exists(self.m.path('u')))

    def test_rename_over_existing(self):
        sp.write_file(self.m.path('a'), b'AAAA')
        sp.write_file(self.m.path('b'), b'BBBBBBBB')
        sp.read_file(self.m.path('b'))
        os.rename(self.m.path('a'), self.m.path('b'))
        self.assertFalse(os.path.exists(self.m.path('a')))
        self.assertFalse(os.path.exists(self.m.bpath('a')))
        self.assertSynced('b', b'AAAA')

    def test_rename_file_with_unsynced_data(self):
        # Writeback after a rename must reach the new name, not recreate the old.
        fd = os.open(self.m.path('a'), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, pattern(2 * PAGE, 7))
            os.mkdir(self.m.path('d'))
            os.rename(self.m.path('a'), self.m.path('d', 'c'))
            os.write(fd, b'end')
        finally:
            os.close(fd)
        self.assertSynced('d/c', pattern(2 * PAGE, 7) + b'end')
        self.assertFalse(os.path.exists(self.m.bpath('a')))

    def test_rename_dir_moves_children(self):
        os.mkdir(self.m.path('d1'))
        sp.write_file(self.m.path('d1', 'f'), b'child')
        os.rename(self.m.path('d1'), self.m.path('d2'))
        self.assertSynced('d2/f', b'child')
        self.assertFalse(os.path.exists(self.m.bpath('d1')))

    def test_rename_noreplace_gives_eexist(self):
        sp.write_file(self.m.path('a'), b'A')
        sp.write_file(self.m.path('b'), b'B')
        with self.assertRaises(OSError) as cm:
            renameat2(self.m.path('a'), self.m.path('b'), RENAME_NOREPLACE)
        self.assertEqual(cm.exception.errno, errno.EEXIST)
        self.assertSynced('a', b'A')
        self.assertSynced('b', b'B')
        renameat2(self.m.path('a'), self.m.path('c'), RENAME_NOREPLACE)
        self.assertSynced('c', b'A')
        self.assertFalse(os.path.exists(self.m.bpath('a')))

    def test_rename_exchange_swaps(self):
        sp.write_file(self.m.path('a'), pattern(PAGE + 1, 1))
        os.mkdir(self.m.path('b'))
        renameat2(self.m.path('a'), self.m.path('b'), RENAME_EXCHANGE)
        self.assertTrue(os.path.isdir(self.m.path('a')))
        self.assertTrue(os.path.isdir(self.m.bpath('a')))
        self.assertSynced('b', pattern(PAGE + 1, 1))

    def test_rename_whiteout_leaves_a_whiteout(self):
        # As overlayfs uses it on an upper layer: the old name becomes a
        # character device 0:0, the target is replaced.
        sp.write_file(self.m.path('a'), pattern(PAGE + 1, 2))
        sp.write_file(self.m.path('b'), b'old')
        renameat2(self.m.path('a'), self.m.path('b'), RENAME_WHITEOUT)
        for p in (self.m.path('a'), self.m.bpath('a')):
            st = os.lstat(p)
            self.assertTrue(stat.S_ISCHR(st.st_mode), p)
            self.assertEqual(st.st_rdev, 0, p)
        self.assertSynced('b', pattern(PAGE + 1, 2))
        with self.assertRaises(OSError) as cm:
            renameat2(self.m.path('b'), self.m.path('c'),
                      RENAME_WHITEOUT | RENAME_EXCHANGE)
        self.assertEqual(cm.exception.errno, errno.EINVAL)

    def test_hardlink_shares_content_and_nlink(self):
        sp.write_file(self.m.path('a'), pattern(2 * PAGE, 1))
        os.link(self.m.path('a'), self.m.path('b'))
        sa, sb = os.stat(self.m.path('a')), os.stat(self.m.path('b'))
        self.assertEqual(sa.st_ino, sb.st_ino)
        self.assertEqual(sa.st_nlink, 2)
        self.assertEqual(os.stat(self.m.bpath('a')).st_nlink, 2)
        self.assertEqual(os.stat(self.m.bpath('a')).st_ino,
                         os.stat(self.m.bpath('b')).st_ino)
        sp.read_file(self.m.path('a'))
        with open(self.m.path('b'), 'r+b') as f:
            f.seek(PAGE)
            f.write(b'through-b')
        expect = bytearray(pattern(2 * PAGE, 1))
        expect[PAGE:PAGE + 9] = b'through-b'
        self.assertEqual(sp.read_file(self.m.path('a')), bytes(expect))
        os.unlink(self.m.path('a'))
        self.assertEqual(os.stat(self.m.path('b')).st_nlink, 1)
        self.assertSynced('b', bytes(expect))

    def test_symlink_readlink(self):
        os.symlink('target/x', self.m.path('l'))
        self.assertEqual(os.readlink(self.m.path('l')), 'target/x')
        self.assertTrue(stat.S_ISLNK(os.lstat(self.m.path('l')).st_mode))
        self.assertEqual(os.readlink(self.m.bpath('l')), 'target/x')
        os.symlink('/abs/' + 'p' * 300, self.m.path('long'))
        self.assertEqual(os.readlink(self.m.path('long')), '/abs/' + 'p' * 300)

    def test_symlink_pointing_outside_is_not_followed(self):
        outside = os.path.join(self.m.tmp, 'outside')
        sp.write_file(outside, b'secret')
        os.symlink(outside, self.m.bpath('esc'))
        os.symlink('../../..', self.m.bpath('esc2'))
        st = os.lstat(self.m.path('esc'))
        self.assertTrue(stat.S_ISLNK(st.st_mode))
        self.assertEqual(st.st_size, len(outside))
        self.assertEqual(os.readlink(self.m.path('esc')), outside)
        self.assertTrue(stat.S_ISLNK(os.lstat(self.m.path('esc2')).st_mode))
        # Attribute changes on the link must not reach its target.
        os.chown(self.m.path('esc'), NOBODY, NOBODY, follow_symlinks=False)
        self.assertEqual(os.stat(outside).st_uid, 0)
        self.assertEqual(os.lstat(self.m.bpath('esc')).st_uid, NOBODY)
        os.utime(self.m.path('esc'), ns=(10**18, 10**18), follow_symlinks=False)
        self.assertNotEqual(os.stat(outside).st_mtime_ns, 10**18)
        self.assertEqual(os.lstat(self.m.bpath('esc')).st_mtime_ns, 10**18)

    def test_mknod_fifo_and_socket(self):
        os.mkfifo(self.m.path('fifo'), 0o600)
        self.assertTrue(stat.S_ISFIFO(os.stat(self.m.path('fifo')).st_mode))
        self.assertTrue(stat.S_ISFIFO(os.stat(self.m.bpath('fifo')).st_mode))
        r = os.open(self.m.path('fifo'), os.O_RDONLY | os.O_NONBLOCK)
        w = os.open(self.m.path('fifo'), os.O_WRONLY)
        try:
            os.write(w, b'through the fifo')
            self.assertEqual(os.read(r, 100), b'through the fifo')
        finally:
            os.close(w)
            os.close(r)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(self.m.path('sock'))
            self.assertTrue(stat.S_ISSOCK(os.stat(self.m.path('sock')).st_mode))
            self.assertTrue(stat.S_ISSOCK(os.stat(self.m.bpath('sock')).st_mode))
        finally:
            s.close()


class TestFsOps(PosixCase):

    def test_statfs_reports_backing_fs(self):
        vm, vb = os.statvfs(self.m.mnt), os.statvfs(self.m.backing)
        self.assertGreater(vm.f_bsize, 0)
        self.assertAlmostEqual(vm.f_blocks * vm.f_frsize,
                               vb.f_blocks * vb.f_frsize,
                               delta=vb.f_blocks * vb.f_frsize // 100)
        self.assertGreaterEqual(vm.f_namemax, 255)

    def test_xattrs_set_get_list_remove(self):
        p = self.m.path('x')
        sp.write_file(p, b'x')
        os.setxattr(p, 'user.color', b'blue')
        self.assertEqual(os.getxattr(p, 'user.color'), b'blue')
        self.assertEqual(os.getxattr(self.m.bpath('x'), 'user.color'), b'blue')
        os.setxattr(p, 'user.big', b'v' * 3000)
        self.assertEqual(os.getxattr(p, 'user.big'), b'v' * 3000)
        self.assertTrue({'user.color', 'user.big'} <= set(os.listxattr(p)))
        with self.assertRaises(FileExistsError):
            os.setxattr(p, 'user.color', b'red', os.XATTR_CREATE)
        os.removexattr(p, 'user.color')
        with self.assertRaises(OSError) as cm:
            os.getxattr(p, 'user.color')
        self.assertEqual(cm.exception.errno, errno.ENODATA)
        with self.assertRaises(OSError) as cm:
            os.getxattr(self.m.bpath('x'), 'user.color')
        self.assertEqual(cm.exception.errno, errno.ENODATA)
        self.assertNotIn('user.color', os.listxattr(p))

    def test_fallocate_mode0_extends(self):
        fd = os.open(self.m.path('fa'), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, b'start')
            sp.fallocate(fd, 0, 0, 1 << 20)
            self.assertEqual(os.fstat(fd).st_size, 1 << 20)
            self.assertEqual(os.pread(fd, 1 << 20, 0),
                             b'start' + bytes((1 << 20) - 5))
        finally:
            os.close(fd)
        self.assertSynced('fa', b'start' + bytes((1 << 20) - 5))
        self.assertGreaterEqual(os.stat(self.m.bpath('fa')).st_blocks * 512, 1 << 20)

    def test_punch_hole_keep_size_zeroes_cached_range(self):
        data = b'a' * (4 * PAGE)
        sp.write_file(self.m.path('p'), data)
        self.assertEqual(sp.read_file(self.m.path('p')), data)  # cached now
        fd = os.open(self.m.path('p'), os.O_RDWR)
        try:
            sp.fallocate(fd, sp.FALLOC_FL_PUNCH_HOLE | sp.FALLOC_FL_KEEP_SIZE,
                         PAGE, PAGE + 100)
            self.assertEqual(os.fstat(fd).st_size, 4 * PAGE)
        finally:
            os.close(fd)
        expect = b'a' * PAGE + bytes(PAGE + 100) + b'a' * (2 * PAGE - 100)
        self.assertSynced('p', expect)

    def test_seek_data_and_hole(self):
        fd = os.open(self.m.path('s'), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.pwrite(fd, b'd' * PAGE, 0)
            os.pwrite(fd, b'e' * PAGE, 1 << 20)
            os.fsync(fd)
            self.assertEqual(os.lseek(fd, 0, os.SEEK_DATA), 0)
            hole = os.lseek(fd, 0, os.SEEK_HOLE)
            self.assertGreaterEqual(hole, PAGE)
            self.assertLess(hole, 1 << 20)
            self.assertEqual(os.lseek(fd, 2 * PAGE, os.SEEK_DATA), 1 << 20)
            self.assertEqual(os.lseek(fd, 1 << 20, os.SEEK_HOLE), (1 << 20) + PAGE)
            # Data still only in the cache counts as data too.
            os.pwrite(fd, b'f' * PAGE, 2 << 20)
            self.assertEqual(os.lseek(fd, (1 << 20) + PAGE, os.SEEK_DATA), 2 << 20)
            with self.assertRaises(OSError) as cm:
                os.lseek(fd, (2 << 20) + PAGE, os.SEEK_DATA)
            self.assertEqual(cm.exception.errno, errno.ENXIO)
        finally:
            os.close(fd)

    def test_flock_conflict_between_processes(self):
        sp.write_file(self.m.path('lk'), b'x')
        fd = os.open(self.m.path('lk'), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            code = ('import fcntl,sys\nf=open(sys.argv[1],"rb")\n'
                    'try:\n fcntl.flock(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\n'
                    'except BlockingIOError:\n sys.exit(3)\nsys.exit(0)\n')
            r = subprocess.run([sys.executable, '-c', code, self.m.path('lk')])
            self.assertEqual(r.returncode, 3, 'second flock was not refused')
            fcntl.flock(fd, fcntl.LOCK_UN)
            r = subprocess.run([sys.executable, '-c', code, self.m.path('lk')])
            self.assertEqual(r.returncode, 0, 'flock refused after unlock')
        finally:
            os.close(fd)

    def test_fcntl_lock_conflict_between_processes(self):
        sp.write_file(self.m.path('lk'), b'x' * 100)
        fd = os.open(self.m.path('lk'), os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
            code = ('import fcntl,sys,os\nfd=os.open(sys.argv[1],os.O_RDWR)\n'
                    'n,s=int(sys.argv[2]),int(sys.argv[3])\n'
                    'try:\n fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,n,s)\n'
                    'except OSError:\n sys.exit(3)\nsys.exit(0)\n')
            r = subprocess.run([sys.executable, '-c', code, self.m.path('lk'), '5', '5'])
            self.assertEqual(r.returncode, 3, 'overlapping lock was granted')
            r = subprocess.run([sys.executable, '-c', code, self.m.path('lk'), '10', '20'])
            self.assertEqual(r.returncode, 0, 'disjoint lock was refused')
        finally:
            os.close(fd)

    def test_copy_file_range_content_equal(self):
        data = pattern((1 << 20) + 123, 3)
        sp.write_file(self.m.path('src'), data)
        fi = os.open(self.m.path('src'), os.O_RDONLY)
        fo = os.open(self.m.path('dst'), os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            done = 0
            while done < len(data):
                n = os.copy_file_range(fi, fo, len(data) - done)
                self.assertGreater(n, 0)
                done += n
            # An unaligned range into the middle of an existing file.
            n = os.copy_file_range(fi, fo, 5000, 100, 7)
            self.assertEqual(n, 5000)
        finally:
            os.close(fi)
            os.close(fo)
        expect = bytearray(data)
        expect[7:5007] = data[100:5100]
        self.assertSynced('dst', bytes(expect))

    def test_fsync_and_fdatasync_reach_backing(self):
        fd = os.open(self.m.path('fs'), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, pattern(3 * PAGE, 4))
            os.fsync(fd)
            self.assertEqual(sp.read_file(self.m.bpath('fs')), pattern(3 * PAGE, 4))
            os.pwrite(fd, b'Q' * 10, PAGE)
            os.fdatasync(fd)
            b = sp.read_file(self.m.bpath('fs'))
            self.assertEqual(b[PAGE:PAGE + 10], b'Q' * 10)
            self.assertEqual(len(b), 3 * PAGE)
        finally:
            os.close(fd)

    def test_backing_change_seen_after_reopen(self):
        sp.write_file(self.m.path('c'), pattern(3 * PAGE, 5))
        self.assertEqual(sp.read_file(self.m.path('c')), pattern(3 * PAGE, 5))
        time.sleep(0.05)
        # Same size, other content, other mtime: only the identity tells.
        sp.write_file(self.m.bpath('c'), pattern(3 * PAGE, 6))
        os.utime(self.m.bpath('c'), ns=(10**18, 10**18 + 1))
        self.assertEqual(sp.read_file(self.m.path('c')), pattern(3 * PAGE, 6))
        # A shorter file: the mount sees the new size and content.
        sp.write_file(self.m.bpath('c'), b'short')
        self.assertEqual(sp.read_file(self.m.path('c')), b'short')
        self.assertEqual(os.stat(self.m.path('c')).st_size, 5)

    def test_backing_rewritten_in_place_reads_new_data(self):
        # Truncate-and-rewrite by another program (an editor's save): ext4
        # and XFS then allocate unwritten extents while the new data is
        # still being written from their page cache, so an extent map read
        # without syncing says "zeroes". Timing-dependent, hence 40 rounds.
        for i in range(40):
            name = f'rw{i}'
            sp.write_file(self.m.path(name), pattern(3 * PAGE, i))
            self.assertEqual(sp.read_file(self.m.path(name)), pattern(3 * PAGE, i))
            new = pattern(3 * PAGE, 1000 + i) if i % 2 else b'short'
            sp.write_file(self.m.bpath(name), new)
            self.assertEqual(sp.read_file(self.m.path(name)), new, f'round {i}')

    def test_mmap_shared_where_the_kernel_caches_private_always(self):
        data = pattern(3 * PAGE, 8)
        sp.write_file(self.m.path('mm'), data)
        with open(self.m.path('mm'), 'r+b') as f:
            if self.m.mode == 'shared':
                # Direct I/O: shared maps are refused (see test_mmap.py).
                with self.assertRaises(OSError) as cm:
                    mmap.mmap(f.fileno(), len(data), flags=mmap.MAP_SHARED)
                self.assertEqual(cm.exception.errno, errno.ENODEV)
            else:
                # The default (auto): a file that shares nothing is cached
                # by the kernel, and shared maps work as on a local disk.
                m = mmap.mmap(f.fileno(), len(data), flags=mmap.MAP_SHARED)
                try:
                    m[PAGE:PAGE + 4] = b'MMAP'
                    m.flush()
                finally:
                    m.close()
                data = data[:PAGE] + b'MMAP' + data[PAGE + 4:]
                self.assertEqual(sp.read_file(self.m.bpath('mm')), data)
            m = mmap.mmap(f.fileno(), len(data), flags=mmap.MAP_PRIVATE,
                          prot=mmap.PROT_READ)
            try:
                self.assertEqual(m[:], data)
                self.assertEqual(m[PAGE + 5:PAGE + 50], data[PAGE + 5:PAGE + 50])
            finally:
                m.close()

    def test_exec_from_mount(self):
        script = self.m.path('run.sh')
        sp.write_file(script, b'#!/bin/sh\necho ran-from-mount\n')
        os.chmod(script, 0o755)
        r = subprocess.run([script], capture_output=True, text=True)
        self.assertEqual(r.stdout.strip(), 'ran-from-mount')
        exe = self.m.path('true')
        sp.write_file(exe, sp.read_file('/bin/true'))
        os.chmod(exe, 0o755)
        self.assertEqual(subprocess.run([exe]).returncode, 0)


FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10
FS_APPEND_FL = 0x20
FS_NODUMP_FL = 0x40


def get_fsflags(path):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = fcntl.ioctl(fd, FS_IOC_GETFLAGS, b'\0' * 4)
        return int.from_bytes(buf, sys.byteorder)
    finally:
        os.close(fd)


def set_fsflags(path, flags):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags.to_bytes(4, sys.byteorder))
    finally:
        os.close(fd)


class TestInodeFlags(PosixCase):
    """chattr through the mount, and what immutable and append-only
    forbid, as on the backing file system itself. Over XFS, which (unlike
    ext4) lets a descriptor opened before the flag went on keep writing:
    the daemon's own descriptors must not let the mount do the same."""

    @classmethod
    def setUpClass(cls):
        sp.require_env()
        cls.xfs = sp.XfsImage(sp.XfsImage.MIN_MB)
        cls.xfs.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.xfs.__exit__()

    def setUp(self):
        backing = tempfile.mkdtemp(dir=self.xfs.dir)
        sp.require_env()
        self.start_mount(backing=backing)
        self.old_umask = os.umask(0o022)
        self.addCleanup(os.umask, self.old_umask)

    def flagged(self, name, data, flag):
        p = self.m.path(name)
        sp.write_file(p, data)
        set_fsflags(p, get_fsflags(p) | flag)
        return p

    def tearDown(self):
        # Else the file could not be removed with the temporary directory.
        for name in os.listdir(self.m.backing):
            b = os.path.join(self.m.backing, name)
            if os.path.isfile(b) and not os.path.islink(b):
                set_fsflags(b, get_fsflags(b) & ~(FS_IMMUTABLE_FL | FS_APPEND_FL))
        super().tearDown()

    def assertEPERM(self, fn, *args):
        try:
            r = fn(*args)
        except OSError as e:
            self.assertEqual(e.errno, errno.EPERM, f'{fn.__name__}{args}')
        else:
            if fn is os.open:
                os.close(r)  # or the mount stays busy
            self.fail(f'{fn.__name__}{args} was allowed')

    def test_flags_reach_the_backing_file_and_come_back(self):
        p = self.m.path('f')
        sp.write_file(p, b'f')
        os.mkdir(self.m.path('d'))
        for name in ('f', 'd'):
            mp = self.m.path(name)
            set_fsflags(mp, get_fsflags(mp) | FS_NODUMP_FL)
            self.assertEqual(get_fsflags(self.m.bpath(name)) & FS_NODUMP_FL,
                             FS_NODUMP_FL, name)
            self.assertEqual(get_fsflags(self.m.path(name)),
                             get_fsflags(self.m.bpath(name)), name)
            set_fsflags(mp, get_fsflags(mp) & ~FS_NODUMP_FL)
            self.assertEqual(get_fsflags(self.m.bpath(name)) & FS_NODUMP_FL,
                             0, name)

    def test_immutable_file_cannot_change(self):
        data = pattern(2 * PAGE + 7, 3)
        p = self.flagged('f', data, FS_IMMUTABLE_FL)
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND,
                      os.O_WRONLY | os.O_TRUNC):
            self.assertEPERM(os.open, p, flags)
        self.assertEPERM(os.truncate, p, 0)
        self.assertEPERM(os.unlink, p)
        self.assertEPERM(os.rename, p, self.m.path('g'))
        self.assertEPERM(os.chmod, p, 0o600)
        self.assertEPERM(os.link, p, self.m.path('g'))
        self.assertEqual(sp.read_file(p), data)
        self.assertSynced('f', data)
        set_fsflags(p, get_fsflags(p) & ~FS_IMMUTABLE_FL)
        sp.write_file(p, b'free')
        self.assertSynced('f', b'free')

    def test_flag_set_behind_the_mount_is_obeyed(self):
        p = self.m.path('f')
        with open(p, 'wb') as f:  # the daemon's descriptor is older
            f.write(b'before')
        b = self.m.bpath('f')
        set_fsflags(b, get_fsflags(b) | FS_IMMUTABLE_FL)
        self.assertEPERM(os.open, p, os.O_WRONLY | os.O_TRUNC)
        self.assertEPERM(os.truncate, p, 1)
        self.assertEqual(sp.read_file(b), b'before')

    def test_append_only_file_grows_only(self):
        data = pattern(PAGE + 3, 4)
        p = self.flagged('f', data, FS_APPEND_FL)
        for flags in (os.O_WRONLY, os.O_RDWR,
                      os.O_WRONLY | os.O_APPEND | os.O_TRUNC):
            self.assertEPERM(os.open, p, flags)
        self.assertEPERM(os.truncate, p, 0)
        self.assertEPERM(os.unlink, p)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b'tail')
            self.assertEPERM(os.ftruncate, fd, 0)
            # Clearing O_APPEND is refused on a local file system; here
            # the kernel lets it through, and the write is refused.
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, 0)
            except OSError as e:
                self.assertEqual(e.errno, errno.EPERM)
            else:
                self.assertEPERM(os.pwrite, fd, b'X', 0)
        finally:
            os.close(fd)
        self.assertSynced('f', data + b'tail')

    def test_append_after_the_flag_reaches_the_disk(self):
        # The file was written (and closed) before the flag went on; its
        # last page is partial, and a new descriptor for it could not be
        # opened any more: the append must still reach the disk, also
        # once the kernel forgot the inode (the daemon then keeps only
        # the file's read-write descriptor).
        data = pattern(3 * PAGE + 100, 5)
        p = self.flagged('f', data, FS_APPEND_FL)
        sp.drop_caches()
        with open(p, 'ab') as f:
            f.write(b'appended')
        self.assertSynced('f', data + b'appended')
        self.assertEqual(sp.read_file(p), data + b'appended')

    def test_flags_set_behind_the_mount_refuse_with_eperm(self):
        for name, flag in (('i', FS_IMMUTABLE_FL), ('a', FS_APPEND_FL)):
            b = self.m.bpath(name)
            sp.write_file(b, b'behind')
            set_fsflags(b, get_fsflags(b) | flag)
            self.assertEPERM(os.open, self.m.path(name), os.O_WRONLY)
            self.assertEPERM(os.open, self.m.path(name), os.O_RDWR)
            self.assertEqual(sp.read_file(self.m.path(name)), b'behind')

    def test_append_only_file_takes_no_copy_or_map_writes(self):
        data = pattern(2 * PAGE, 6)
        src = self.m.path('src')
        sp.write_file(src, b'S' * PAGE)
        p = self.flagged('f', data, FS_APPEND_FL)
        fd = os.open(p, os.O_RDWR | os.O_APPEND)
        sfd = os.open(src, os.O_RDONLY)
        try:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, 0)
            except OSError as e:
                self.assertEqual(e.errno, errno.EPERM)
            else:
                self.assertEPERM(os.copy_file_range, sfd, fd, PAGE, 0, 0)
            try:
                m = mmap.mmap(fd, 2 * PAGE, mmap.MAP_SHARED)
            except OSError as e:  # refused, as a local fs does (EACCES)
                self.assertIn(e.errno, (errno.EACCES, errno.ENODEV))
            else:
                m[0:4] = b'MMAP'
                try:
                    m.flush()
                except OSError:
                    pass  # the writeback is refused
                m.close()
        finally:
            os.close(sfd)
            os.close(fd)
        self.assertEqual(self.m.stop(), 0)
        self.assertEqual(sp.read_file(self.m.bpath('f')), data)

class TestInodeFlagsKernelMode(TestInodeFlags):
    """The same where the kernel caches the files: there a shared
    writable map of an append-only file is made, and its writeback must
    be refused."""
    mount_opts = ('cache_size=64M', 'cache_mode=kernel')

    def test_append_after_the_flag_reaches_the_disk(self):
        # Kernel mode keeps no descriptor of a closed file whose inode the
        # kernel forgot, and the flag refuses a new read-write one: the
        # open fails with EPERM (README, Known limits) and nothing is lost.
        data = pattern(3 * PAGE + 100, 5)
        p = self.flagged('f', data, FS_APPEND_FL)
        sp.drop_caches()
        self.assertEPERM(os.open, p, os.O_WRONLY | os.O_APPEND)
        self.assertSynced('f', data)


class TestNoatime(PosixCase):
    """-o noatime (xfstests generic/120): reading a file or listing a
    directory leaves their access times as they were."""
    mount_opts = ('cache_size=64M', 'noatime')

    def test_reads_leave_atime(self):
        os.mkdir(self.m.bpath('d'))
        with open(self.m.bpath('d', 'f'), 'wb') as f:
            f.write(pattern(3 * PAGE, 6))
        # Older than the mtime: relatime would move it on the next read.
        for rel in (('d', 'f'), ('d',)):
            st = os.stat(self.m.bpath(*rel))
            os.utime(self.m.bpath(*rel), ns=(st.st_mtime_ns - 10**10,
                                             st.st_mtime_ns))
        before = [os.stat(self.m.bpath(*r)).st_atime_ns
                  for r in (('d', 'f'), ('d',))]
        self.assertEqual(sp.read_file(self.m.path('d', 'f')),
                         pattern(3 * PAGE, 6))
        self.assertEqual(os.listdir(self.m.path('d')), ['f'])
        after = [os.stat(self.m.bpath(*r)).st_atime_ns
                 for r in (('d', 'f'), ('d',))]
        self.assertEqual(after, before)
        self.assertEqual(os.stat(self.m.path('d', 'f')).st_atime_ns,
                         before[0])


class TestAtimeAtMount(PosixCase):
    """The daemon's own walk of the backing tree at mount (which prunes the
    store of deleted files) leaves access times as they were, even where
    relatime would move them."""

    def setUp(self):
        sp.require_env()
        self.m = sp.Mount(opts=self.mount_opts)
        self.addCleanup(self.m.cleanup)
        os.makedirs(os.path.join(self.m.backing, 'd', 'e'))
        sp.write_file(os.path.join(self.m.backing, 'd', 'e', 'f'), b'f')
        self.before = {}
        for rel in ('d', 'd/e'):
            b = os.path.join(self.m.backing, rel)
            st = os.stat(b)
            os.utime(b, ns=(st.st_mtime_ns - 10**10, st.st_mtime_ns))
            self.before[rel] = os.stat(b).st_atime_ns
        self.m.start()

    def test_walk_leaves_directory_atimes(self):
        time.sleep(1.5)  # the walk runs in the background
        self.assertEqual(self.m.stop(), 0)
        after = {rel: os.stat(os.path.join(self.m.backing, rel)).st_atime_ns
                 for rel in self.before}
        self.assertEqual(after, self.before)


class TestHugeOffsets(unittest.TestCase):
    """Files as large as XFS allows (2^63 - 1 bytes), as xfstests generic/525
    makes them: pages past 4 PiB, which the cache cannot map, are written
    and read uncached, and a cached page next to them still counts."""

    def test_bytes_at_huge_offsets_in_each_mode(self):
        sp.require_env()
        xfs = sp.XfsImage(sp.XfsImage.MIN_MB)
        xfs.__enter__()
        self.addCleanup(xfs.__exit__)
        edge = 1 << 52  # 4 PiB
        for mode in ('shared', 'kernel'):
            backing = tempfile.mkdtemp(dir=xfs.dir)
            m = sp.Mount(opts=('cache_size=64M', 'cache_mode=' + mode),
                         backing=backing)
            self.addCleanup(m.cleanup)
            m.start()
            p = m.path('big')
            fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                os.ftruncate(fd, (1 << 63) - 1)
                os.pwrite(fd, b'a', (1 << 63) - 2)
                # One write across the edge: a cached page, then not.
                data = pattern(3 * PAGE, 5)
                os.pwrite(fd, data, edge - PAGE - 100)
                self.assertEqual(os.pread(fd, len(data), edge - PAGE - 100),
                                 data, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.assertEqual(os.stat(p).st_size, (1 << 63) - 1, mode)
            self.assertEqual(m.stop(), 0, mode)
            fd = os.open(os.path.join(backing, 'big'), os.O_RDONLY)
            try:
                self.assertEqual(os.pread(fd, 1, (1 << 63) - 2), b'a', mode)
                self.assertEqual(os.pread(fd, len(data), edge - PAGE - 100),
                                 data, mode)
            finally:
                os.close(fd)
            m.start()
            fd = os.open(m.path('big'), os.O_RDONLY)
            try:
                self.assertEqual(os.pread(fd, 1, (1 << 63) - 2), b'a', mode)
                self.assertEqual(os.pread(fd, len(data), edge - PAGE - 100),
                                 data, mode)
                self.assertEqual(os.pread(fd, 8, edge + 5 * PAGE),
                                 bytes(8), mode)
            finally:
                os.close(fd)
            self.assertEqual(m.stop(), 0, mode)


class TestDirectWrites(unittest.TestCase):

    def test_buffered_read_after_async_direct_write_is_fresh(self):
        """xfstests generic/451: buffered readers run while a file the
        kernel caches is rewritten by asynchronous O_DIRECT writes
        (io_uring, tests/integration/direct_cycle.c); once a write has
        completed, a buffered read returns its bytes."""
        sp.require_env()
        helper = os.environ.get('DIRECT_CYCLE') or os.path.join(
            sp.REPO, 'build', 'tests', 'integration', 'direct_cycle')
        if not os.access(helper, os.X_OK):
            self.skipTest(f'{helper} is missing (meson builds it)')
        # Over a disk image: backing reads slow enough for the race.
        xfs = sp.XfsImage(sp.XfsImage.MIN_MB)
        xfs.__enter__()
        self.addCleanup(xfs.__exit__)
        backing = os.path.join(xfs.dir, 'backing')
        os.mkdir(backing)
        # Auto mode: a file that shares nothing is the kernel's to cache.
        m = sp.Mount(opts=('cache_size=64M', 'cache_mode=auto'),
                     backing=backing)
        self.addCleanup(m.cleanup)
        m.start()
        size = 640 * 1024
        p = m.path('aio')
        sp.write_file(p, bytes(size))
        # Two reader processes of its own read the file meanwhile.
        r = subprocess.run([helper, p, str(size), '4', '2'],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class TestUnmount(PosixCase):
    mount_opts = ('cache_size=64M', 'writeback_ms=600000')

    def test_unmount_loses_nothing(self):
        files = {f'u{i}': pattern(i * 3000 + 1, i) for i in range(12)}
        for name, data in files.items():
            sp.write_file(self.m.path(name), data)
        with open(self.m.path('u3'), 'r+b') as f:
            f.seek(10)
            f.write(b'rewritten')
        d = bytearray(files['u3'])
        d[10:19] = b'rewritten'
        files['u3'] = bytes(d)
        rc = self.m.stop()
        self.assertEqual(rc, 0, f'daemon exit code; log:\n{self.m.log()}')
        self.assertFalse(sp.is_mounted(self.m.mnt))
        for name, data in files.items():
            self.assertEqual(sp.read_file(self.m.bpath(name)), data, name)

    def test_remount_reads_same_data(self):
        sp.write_file(self.m.path('r'), pattern(10 * PAGE, 9))
        self.m.remount()
        self.assertEqual(sp.read_file(self.m.path('r')), pattern(10 * PAGE, 9))


class TestReadOnly(unittest.TestCase):

    def test_ro_mount_gives_erofs(self):
        sp.require_env()
        m = sp.Mount(opts=('cache_size=64M', 'ro'))
        self.addCleanup(m.cleanup)
        sp.write_file(m.bpath('f'), b'read only')
        os.mkdir(m.bpath('d'))
        m.start()
        self.assertEqual(sp.read_file(m.path('f')), b'read only')
        for op in (lambda: open(m.path('f'), 'r+b'),
                   lambda: open(m.path('new'), 'wb'),
                   lambda: os.mkdir(m.path('d2')),
                   lambda: os.unlink(m.path('f')),
                   lambda: os.rmdir(m.path('d')),
                   lambda: os.chmod(m.path('f'), 0o600),
                   lambda: os.truncate(m.path('f'), 0),
                   lambda: os.symlink('x', m.path('l')),
                   lambda: os.setxattr(m.path('f'), 'user.a', b'1')):
            with self.assertRaises(OSError) as cm:
                op()
            self.assertEqual(cm.exception.errno, errno.EROFS)
        self.assertEqual(sp.read_file(m.bpath('f')), b'read only')
        self.assertEqual(stat.S_IMODE(os.stat(m.bpath('f')).st_mode), 0o644)


class TestPaths(unittest.TestCase):

    def test_backing_dir_named_with_equals_sign_and_comma(self):
        sp.require_env()
        tmp = tempfile.mkdtemp(prefix='sp-paths-')
        self.addCleanup(shutil.rmtree, tmp, True)
        backing = os.path.join(tmp, 'a=b,c')
        os.mkdir(backing)
        m = sp.Mount(opts=('cache_size=64M',), backing=backing)
        self.addCleanup(m.cleanup)
        m.start()
        sp.write_file(m.path('f'), b'under a=b,c')
        m.stop()
        self.assertEqual(sp.read_file(os.path.join(backing, 'f')),
                         b'under a=b,c')


class TestOtherUsers(unittest.TestCase):

    def _mount(self, opts):
        sp.require_env()
        m = sp.Mount(opts=opts)
        self.addCleanup(m.cleanup)
        os.chmod(m.tmp, 0o755)  # let uid 65534 reach the mount point
        os.chmod(m.backing, 0o755)  # the mount root: others may not write
        m.start()
        return m

    def test_allow_other_nonroot_owns_files_and_is_denied(self):
        m = self._mount(('cache_size=64M', 'allow_other'))
        os.mkdir(m.path('pub'))
        os.chmod(m.path('pub'), 0o777)
        sp.write_file(m.path('secret'), b'root only')
        os.chmod(m.path('secret'), 0o600)
        sp.write_file(m.path('ro'), b'root writes')
        os.chmod(m.path('ro'), 0o644)

        def child():
            become_nobody()
            os.umask(0o022)
            with open(m.path('pub', 'mine'), 'wb') as f:
                f.write(b'nobody was here')
            os.mkdir(m.path('pub', 'mydir'))
            checks = [
                (lambda: open_close(m.path('secret'), 'rb'), errno.EACCES),
                (lambda: open_close(m.path('ro'), 'r+b'), errno.EACCES),
                (lambda: open_close(m.path('newroot'), 'wb'), errno.EACCES),
                (lambda: os.chmod(m.path('ro'), 0o666), errno.EPERM),
                (lambda: os.chown(m.path('pub', 'mine'), 0, 0), errno.EPERM),
                (lambda: os.unlink(m.path('ro')), errno.EACCES),
                (lambda: os.truncate(m.path('ro'), 0), errno.EACCES),
            ]
            for i, (op, want) in enumerate(checks):
                try:
                    op()
                except OSError as e:
                    if e.errno != want:
                        return 10 + i
                else:
                    return 10 + i
            if sp.read_file(m.path('ro')) != b'root writes':
                return 30
            return 0

        code = in_child(child)
        self.assertEqual(code, 0, 'child exit code (10+i: check i not denied)')
        for rel in ('pub/mine', 'pub/mydir'):
            for p in (m.path(rel), m.bpath(rel)):
                st = os.stat(p)
                self.assertEqual((st.st_uid, st.st_gid), (NOBODY, NOBODY), p)
        sync_file(m.path('pub/mine'))
        self.assertEqual(sp.read_file(m.bpath('pub', 'mine')), b'nobody was here')
        self.assertEqual(sp.read_file(m.bpath('ro')), b'root writes')
        self.assertEqual(sp.read_file(m.bpath('secret')), b'root only')

    def test_acls_grant_and_deny_as_on_the_backing_fs(self):
        m = self._mount(('cache_size=64M', 'allow_other'))
        if not backing_has_acls(m.backing):
            self.skipTest('the backing file system has no POSIX ACLs')
        sp.write_file(m.path('f'), b'granted by an ACL')
        os.chmod(m.path('f'), 0o600)
        rw, r, none = 6, 4, 0

        def nobody_reads():
            def child():
                become_nobody()
                try:
                    return 0 if sp.read_file(m.path('f')) else 2
                except PermissionError:
                    return 1
            return in_child(child)

        self.assertEqual(nobody_reads(), 1, 'mode 0600, no ACL')
        os.setxattr(m.path('f'), 'system.posix_acl_access', acl_xattr(
            (ACL_USER_OBJ, rw), (ACL_USER, r, NOBODY), (ACL_GROUP_OBJ, none),
            (ACL_MASK, r), (ACL_OTHER, none)))
        self.assertEqual(nobody_reads(), 0, 'an ACL entry grants nobody read')
        # The mask is the group bits of the mode: chmod narrows the entry.
        os.chmod(m.path('f'), 0o600)
        self.assertEqual(nobody_reads(), 1, 'chmod g-r masked the entry')
        self.assertEqual(stat.S_IMODE(os.stat(m.bpath('f')).st_mode), 0o600)

    def test_acl_set_by_owner_outside_the_group_clears_setgid(self):
        m = self._mount(('cache_size=64M', 'allow_other'))
        if not backing_has_acls(m.backing):
            self.skipTest('the backing file system has no POSIX ACLs')
        acl = acl_xattr((ACL_USER_OBJ, 7), (ACL_GROUP_OBJ, 7),
                        (ACL_OTHER, 7))
        os.mkdir(m.path('d'))
        for name, (gid, groups), want in (
                ('f', (101, []), 0o777),        # not in group 100: cleared
                ('d', (101, []), 0o777),
                ('g', (100, []), 0o2777),       # its group: kept
                ('s', (101, [100]), 0o2777)):   # a supplementary one: kept
            p = m.path(name)
            if name != 'd':
                sp.write_file(p, b'x')
            os.chown(p, 100, 100)
            os.chmod(p, 0o2755)

            def child():
                os.setgroups(groups)
                os.setresgid(gid, gid, gid)
                os.setresuid(100, 100, 100)
                os.setxattr(p, 'system.posix_acl_access', acl)
                return 0

            self.assertEqual(in_child(child), 0, name)
            self.assertEqual(oct(stat.S_IMODE(os.stat(p).st_mode)), oct(want),
                             f'{name}: set by uid 100, gid {gid}, groups '
                             f'{groups}')

    def test_fallocate_by_another_user_clears_setid_bits(self):
        """xfstests generic/683-685: as a write does, a fallocate by a
        caller without CAP_FSETID clears setuid, and setgid unless the
        file is not group-executable and the caller is in its group."""
        m = self._mount(('cache_size=64M', 'allow_other'))
        os.chmod(m.path(), 0o777)
        # (mode, the caller is in the file's group, mode after)
        for mode, in_group, want in ((0o6666, False, 0o666),
                                     (0o6766, False, 0o766),
                                     (0o6776, False, 0o776),
                                     (0o6666, True, 0o2666),
                                     (0o6676, True, 0o676)):
            for how in (0, sp.FALLOC_FL_PUNCH_HOLE | sp.FALLOC_FL_KEEP_SIZE):
                p = m.path(f'f{mode:o}-{in_group}-{how}')
                sp.write_file(p, b'X' * (3 * PAGE))
                if in_group:
                    os.chown(p, -1, NOBODY)
                os.chmod(p, mode)

                def child():
                    become_nobody()
                    fd = os.open(p, os.O_RDWR)
                    try:
                        sp.fallocate(fd, how, PAGE, PAGE)
                    finally:
                        os.close(fd)
                    return 0

                self.assertEqual(in_child(child), 0, p)
                # stat(1) asks statx for the mode alone, which the kernel
                # answers from its cache where it has the mode as valid.
                shown = subprocess.run(['stat', '-c', '%a', p], check=True,
                                       capture_output=True, text=True)
                self.assertEqual(shown.stdout.strip(), f'{want:o}',
                                 f'{mode:o}, in group {in_group}, mode {how}')
                self.assertEqual(oct(stat.S_IMODE(os.stat(p).st_mode)),
                                 oct(want),
                                 f'{mode:o}, in group {in_group}, mode {how}')

    def test_default_acl_gives_new_modes_not_umask(self):
        m = self._mount(('cache_size=64M',))
        if not backing_has_acls(m.backing):
            self.skipTest('the backing file system has no POSIX ACLs')
        rwx, none = 7, 0
        default = acl_xattr((ACL_USER_OBJ, rwx), (ACL_GROUP_OBJ, rwx),
                            (ACL_OTHER, none))
        old = os.umask(0o722)
        self.addCleanup(os.umask, old)
        # The same operations on the backing fs itself (in ref/) say what
        # is right for those through the mount (in mnt/).
        for top in (m.bpath('ref'), m.path('mnt')):
            os.mkdir(top, 0o755)
            os.mkdir(os.path.join(top, 'acl'))
            os.setxattr(os.path.join(top, 'acl'), 'system.posix_acl_default',
                        default)
            os.mkdir(os.path.join(top, 'plain'))
            for d in ('acl', 'plain'):
                os.mkdir(os.path.join(top, d, 'sub'))
                os.close(os.open(os.path.join(top, d, 'file'),
                                 os.O_CREAT | os.O_WRONLY, 0o666))
                os.mknod(os.path.join(top, d, 'fifo'), stat.S_IFIFO | 0o666)
        modes = {}
        for rel in ('acl/sub', 'acl/file', 'acl/fifo', 'plain/sub',
                    'plain/file', 'plain/fifo'):
            want = stat.S_IMODE(os.stat(m.bpath('ref', rel)).st_mode)
            modes[rel] = stat.S_IMODE(os.stat(m.path('mnt', rel)).st_mode)
            self.assertEqual(oct(modes[rel]), oct(want), rel)
        self.assertEqual(oct(modes['acl/file']), oct(0o660))
        self.assertEqual(oct(modes['plain/file']), oct(0o044))

    def test_without_allow_other_other_users_are_refused(self):
        m = self._mount(('cache_size=64M',))
        sp.write_file(m.path('f'), b'x')
        os.chmod(m.path('f'), 0o644)

        def child():
            become_nobody()
            try:
                os.stat(m.path('f'))
            except PermissionError:
                return 0
            return 1

        self.assertEqual(in_child(child), 0)


class TestDaemon(unittest.TestCase):

    def test_daemonises_without_f_and_fusermount_ends_it(self):
        sp.require_env()
        tmp = tempfile.mkdtemp(prefix='sp-')
        backing, mnt = os.path.join(tmp, 'backing'), os.path.join(tmp, 'mnt')
        os.mkdir(backing)
        os.mkdir(mnt)
        pid = None
        try:
            r = subprocess.run([sp.SAMEPAGEFS, '-o', 'cache_size=64M', backing, mnt],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(sp.is_mounted(mnt), 'not mounted when command returned')
            pid = sp.find_daemon_pid(mnt)
            self.assertIsNotNone(pid, 'no daemon process')
            sp.write_file(os.path.join(mnt, 'f'), b'daemon')
            r = subprocess.run(['fusermount3', '-u', mnt], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            deadline = time.monotonic() + 10
            while sp._pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertFalse(sp._pid_alive(pid), 'daemon still running after unmount')
            self.assertEqual(sp.read_file(os.path.join(backing, 'f')), b'daemon')
        finally:
            if sp.is_mounted(mnt):
                subprocess.run(['umount', '-l', mnt])
            if pid and sp._pid_alive(pid):
                os.kill(pid, 9)
            if not sp.is_mounted(mnt):
                import shutil
                shutil.rmtree(tmp, ignore_errors=True)


# The same cases with the daemon's defaults (cache_mode=auto: files that
# share nothing are cached by the kernel).
class TestFilesDefault(TestFiles):
    mount_kwargs = {'mode': None}


class TestDirsDefault(TestDirs):
    mount_kwargs = {'mode': None}


class TestNamesDefault(TestNames):
    mount_kwargs = {'mode': None}


class TestFsOpsDefault(TestFsOps):
    mount_kwargs = {'mode': None}


if __name__ == '__main__':
    sp.main()
