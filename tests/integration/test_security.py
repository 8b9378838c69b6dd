"""Security of a shared mount (-o allow_other): other users, the control
interface, the hidden state directory, symlinks that point out of the
backing directory, and who may share pages with whom (dedup_scope).

The daemon runs as root and opens backing files itself, so every check the
kernel makes for a local file system must still hold for an unprivileged
caller: the daemon must never do for a caller what the caller could not do
on the backing file system directly.
"""

import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

PAGE = 4096
NOBODY = 65534


def become_nobody():
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def as_nobody(fn):
    """Run fn() as uid/gid 65534 in a forked child; its JSON-able result
    (an exception comes back as {'exception': repr})."""
    def child():
        become_nobody()
        return fn()
    pid, r = sp.fork_json(child, error_key='exception')
    out = sp.read_json(r, b'null')
    os.waitpid(pid, 0)
    return out


def errno_of(op):
    """0 if op() succeeds, else its errno (as a name for messages)."""
    try:
        op()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return 'OK'


class SharedMount(sp.MountTestCase):
    """A mount that uid 65534 can reach and write at its root."""

    mount_opts = ('cache_size=64M', 'allow_other')

    def setUp(self):
        super().setUp()
        os.chmod(self.m.tmp, 0o755)
        os.chmod(self.m.mnt, 0o777)
        self.old_umask = os.umask(0o022)
        self.addCleanup(os.umask, self.old_umask)


class OtherUser(SharedMount):

    def test_nobody_denied_root_files_chmod_chown_owns_what_it_creates(self):
        sp.write_file(self.m.path('secret'), b'root only')
        os.chmod(self.m.path('secret'), 0o600)
        sp.write_file(self.m.path('public'), b'root writes')
        os.chmod(self.m.path('public'), 0o644)
        os.mkdir(self.m.path('rootdir'), 0o755)

        def child():
            os.umask(0o022)
            res = {
                'read 0600': errno_of(lambda: sp.read_file(
                    self.m.path('secret'))),
                'write 0644': errno_of(lambda: open(
                    self.m.path('public'), 'r+b').close()),
                'truncate 0644': errno_of(lambda: os.truncate(
                    self.m.path('public'), 0)),
                'chmod other': errno_of(lambda: os.chmod(
                    self.m.path('public'), 0o666)),
                'chown other': errno_of(lambda: os.chown(
                    self.m.path('public'), NOBODY, NOBODY)),
                'create in 0755 dir': errno_of(lambda: open(
                    self.m.path('rootdir', 'x'), 'wb').close()),
                'setxattr other': errno_of(lambda: os.setxattr(
                    self.m.path('public'), 'user.x', b'1')),
                'mknod char device': errno_of(lambda: os.mknod(
                    self.m.path('nulldev'), 0o666 | stat.S_IFCHR,
                    os.makedev(1, 3))),
            }
            with open(self.m.path('mine'), 'wb') as f:
                f.write(b'nobody was here')
            os.chmod(self.m.path('mine'), 0o640)
            os.mkdir(self.m.path('mydir'))
            res['chown own to root'] = errno_of(lambda: os.chown(
                self.m.path('mine'), 0, 0))
            res['read public'] = sp.read_file(self.m.path('public')).decode()
            return res

        res = as_nobody(child)
        self.assertNotIn('exception', res, res)
        want = {'read 0600': 'EACCES', 'write 0644': 'EACCES',
                'truncate 0644': 'EACCES', 'chmod other': 'EPERM',
                'chown other': 'EPERM', 'create in 0755 dir': 'EACCES',
                'setxattr other': 'EACCES', 'mknod char device': 'EPERM',
                'chown own to root': 'EPERM', 'read public': 'root writes'}
        self.assertEqual(res, want)
        for rel in ('mine', 'mydir'):
            for p in (self.m.path(rel), self.m.bpath(rel)):
                st = os.lstat(p)
                self.assertEqual((st.st_uid, st.st_gid), (NOBODY, NOBODY), p)
        self.assertFalse(os.path.exists(self.m.bpath('nulldev')))
        self.assertEqual(sp.read_file(self.m.bpath('secret')), b'root only')
        self.assertEqual(sp.read_file(self.m.bpath('public')), b'root writes')
        self.assertEqual(stat.S_IMODE(os.stat(self.m.bpath('public'))
                                      .st_mode), 0o644)

    def test_nobody_reads_stats_but_cannot_set_knobs_or_scan(self):
        before = self.m.knobs()

        def child():
            res = {}
            st = os.getxattr(self.m.mnt, 'samepage.stats').decode()
            res['stats has pages_sharing'] = 'pages_sharing' in st
            for name, val in (('samepage.set', b'pages_to_scan=7'),
                              ('samepage.set', b'cache_size=2M'),
                              ('samepage.set', b'fail_read=5'),
                              ('samepage.scan', b'start')):
                res[f'{name} {val.decode()}'] = errno_of(
                    lambda: os.setxattr(self.m.mnt, name, val))
            return res

        res = as_nobody(child)
        self.assertEqual(res, {'stats has pages_sharing': True,
                               'samepage.set pages_to_scan=7': 'EPERM',
                               'samepage.set cache_size=2M': 'EPERM',
                               'samepage.set fail_read=5': 'EPERM',
                               'samepage.scan start': 'EPERM'})
        self.assertEqual(self.m.knobs(), before)
        # A failpoint set by nobody would make this read fail.
        sp.write_file(self.m.bpath('cold'), b'c' * 10000)
        self.assertEqual(sp.read_file(self.m.path('cold')), b'c' * 10000)

    def test_file_report_names_no_file_the_caller_cannot_see(self):
        # Root keeps a file in a directory nobody may not enter. nobody
        # writes the same bytes into a file of its own and asks which
        # files share its pages: the answer must not name root's file.
        os.mkdir(self.m.bpath('private'), 0o700)
        data = os.urandom(16 * PAGE)
        sp.write_file(self.m.bpath('private', 'payroll.txt'), data)
        with open(self.m.path('private', 'payroll.txt'), 'rb') as held:
            held.read()

            def child():
                p = self.m.path('guess')
                with open(p, 'wb') as f:
                    f.write(data)
                with open(p, 'rb') as f:
                    f.read()
                    deadline = time.monotonic() + 10
                    rep = ''
                    while time.monotonic() < deadline:
                        rep = os.getxattr(p, 'samepage.file').decode()
                        # Merged (the report may name no one for us).
                        if '\nshared_pages 0\n' not in rep:
                            break
                        time.sleep(0.2)
                return rep

            self.m.scan()
            rep = as_nobody(child)
        self.assertIsInstance(rep, str, rep)
        self.assertNotIn('\nshared_pages 0\n', rep,
                         'the two copies were not merged: nothing tested')
        self.assertNotIn('payroll', rep,
                         'samepage.file tells uid 65534 the name of a root '
                         'file in a 0700 directory that holds the same '
                         'data')


class StateDir(SharedMount):

    def test_state_dir_mode_0700_hidden_and_cannot_be_replaced(self):
        state = self.m.bpath('.samepage')
        st = os.stat(state)
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o700)
        self.assertEqual((st.st_uid, st.st_gid), (0, 0))
        self.assertNotIn('.samepage', os.listdir(self.m.mnt))
        hidden = self.m.path('.samepage')
        sp.write_file(self.m.path('f'), b'x')
        os.mkdir(self.m.path('emptydir'))
        attempts = {
            'stat': lambda: os.stat(hidden),
            'open data.mdb': lambda: open(os.path.join(hidden, 'data.mdb'),
                                          'rb').close(),
            'mkdir': lambda: os.mkdir(hidden),
            'create': lambda: open(hidden, 'wb').close(),
            'symlink': lambda: os.symlink('/tmp', hidden),
            'link': lambda: os.link(self.m.path('f'), hidden),
            'rename file over': lambda: os.rename(self.m.path('f'), hidden),
            'rename dir over': lambda: os.rename(self.m.path('emptydir'),
                                                 hidden),
            'rmdir': lambda: os.rmdir(hidden),
            'unlink': lambda: os.unlink(hidden),
        }
        got = {k: errno_of(op) for k, op in attempts.items()}
        self.assertNotIn('OK', got.values(), got)
        # Still the daemon's own, untouched.
        st2 = os.stat(state)
        self.assertEqual((st2.st_ino, stat.S_IMODE(st2.st_mode)),
                         (st.st_ino, 0o700))
        self.assertTrue(os.path.isfile(os.path.join(state, 'data.mdb')))
        self.assertFalse(os.path.islink(state))


class DotDotAndSymlinks(unittest.TestCase):
    """Backing directory deep in a tree, symlinks pointing out of it."""

    def setUp(self):
        sp.require_env()
        self.outer = tempfile.mkdtemp(prefix='h-sec-')
        os.chmod(self.outer, 0o755)
        self.addCleanup(self._cleanup)
        deep = os.path.join(self.outer, 'a', 'b')
        os.makedirs(deep)
        for d in (os.path.join(self.outer, 'a'), deep):
            os.chmod(d, 0o755)
        self.backing = os.path.join(deep, 'backing')
        os.mkdir(self.backing, 0o755)
        # A root secret outside the backing directory, like /root/x.
        self.vault = os.path.join(self.outer, 'vault')
        os.mkdir(self.vault, 0o700)
        self.secret = os.path.join(self.vault, 'secret')
        sp.write_file(self.secret, b'top secret')
        os.chmod(self.secret, 0o600)
        os.symlink(self.secret, os.path.join(self.backing, 'to_secret'))
        os.symlink('/etc', os.path.join(self.backing, 'to_etc'))
        os.symlink('../../..', os.path.join(self.backing, 'up'))
        self.m = sp.Mount(opts=('cache_size=64M', 'allow_other'),
                          backing=self.backing)
        self.addCleanup(self.m.cleanup)
        os.chmod(self.m.tmp, 0o755)
        self.m.start()

    def _cleanup(self):
        if not sp.mounts_under(self.outer):
            subprocess.run(['rm', '-rf', self.outer])

    def test_dotdot_of_root_is_the_mount_parent_not_the_backing_parent(self):
        m = self.m
        os.mkdir(m.path('sub'))
        parent = os.stat(os.path.dirname(m.mnt))
        for p in (m.path('..'), m.path('sub', '..', '..'),
                  m.path('sub', '..', '..', 'mnt', '..')):
            self.assertTrue(os.path.samestat(os.stat(p), parent), p)
        self.assertEqual(sorted(os.listdir(m.path('sub', '..'))),
                         sorted(os.listdir(m.mnt)))
        fd = os.open(m.mnt, os.O_PATH | os.O_DIRECTORY)
        try:
            up = os.open('..', os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            try:
                self.assertTrue(os.path.samestat(os.fstat(up), parent))
            finally:
                os.close(up)
        finally:
            os.close(fd)
        self.assertNotIn('b', os.listdir(m.path('..')))
        with self.assertRaises(OSError):
            os.mkdir(m.path('..', '..', 'nope', 'x'))

    def test_symlinks_out_of_backing_are_links_followed_by_the_caller(self):
        m = self.m
        self.assertTrue(os.path.islink(m.path('to_secret')))
        self.assertEqual(os.readlink(m.path('to_secret')), self.secret)
        self.assertEqual(os.readlink(m.path('to_etc')), '/etc')
        self.assertEqual(os.readlink(m.path('up')), '../../..')
        # Relative targets resolve from the link's place in the mount.
        self.assertTrue(os.path.samestat(
            os.stat(m.path('up')),
            os.stat(os.path.join(m.mnt, '..', '..', '..'))))
        # Root may follow them (the kernel does, not the daemon).
        self.assertEqual(sp.read_file(m.path('to_secret')), b'top secret')
        self.assertEqual(sp.read_file(m.path('to_etc', 'hostname')),
                         sp.read_file('/etc/hostname'))

        def child():
            return {
                'open link to 0700/0600 secret': errno_of(
                    lambda: sp.read_file(m.path('to_secret'))),
                'readlink': os.readlink(m.path('to_secret')),
                'open with O_NOFOLLOW': errno_of(lambda: os.close(os.open(
                    m.path('to_secret'), os.O_RDONLY | os.O_NOFOLLOW))),
                'read direct': errno_of(lambda: sp.read_file(self.secret)),
            }

        res = as_nobody(child)
        self.assertEqual(res, {
            'open link to 0700/0600 secret': 'EACCES',
            'readlink': self.secret,
            'open with O_NOFOLLOW': 'ELOOP',
            'read direct': 'EACCES'})
        # The daemon never opened the target for anyone.
        held = []
        for fd in os.listdir(f'/proc/{m.pid}/fd'):
            try:
                held.append(os.readlink(f'/proc/{m.pid}/fd/{fd}'))
            except OSError:
                pass
        self.assertNotIn(self.secret, held)


def chowned_copies(m, data, owners):
    """One file per (name, uid) with the same content, owned by uid."""
    for name, uid in owners:
        p = m.bpath(name)
        sp.write_file(p, data)
        os.chown(p, uid, uid)


def read_and_scan(m, fds):
    """Read every file to its end, then two full scans: what may merge
    has merged."""
    for fd in fds:
        while os.read(fd, 1 << 20):
            pass
    m.scan()
    m.scan()


def file_report(m, name):
    return sp.file_report(m.path(name))


class ScopeUid(sp.MountTestCase):
    mount_opts = ('cache_size=64M', 'dedup_scope=uid')
    npages = 64

    def _reports(self, names):
        """Read every file through the mount, scan, and take the reports
        while all are open (a closed file may lose its pages)."""
        fds = [os.open(self.m.path(n), os.O_RDONLY) for n in names]
        try:
            read_and_scan(self.m, fds)
            return {n: file_report(self.m, n) for n in names}
        finally:
            for fd in fds:
                os.close(fd)

    def test_uid_scope_same_owner_shares_other_owner_never(self):
        data = os.urandom(self.npages * PAGE)
        owners = [('a0', 1000), ('a1', 1000), ('b0', 2000), ('r0', 0)]
        chowned_copies(self.m, data, owners)
        reps = self._reports([n for n, _ in owners])
        a0, b0, r0 = reps['a0'], reps['b0'], reps['r0']
        self.assertGreaterEqual(a0['shared_pages'], self.npages * 0.9, a0)
        self.assertEqual(a0['sharers'], ['a1'], a0)
        self.assertEqual((b0['shared_pages'], b0['sharers']), (0, []), b0)
        self.assertEqual((r0['shared_pages'], r0['sharers']), (0, []), r0)

    def test_uid_scope_owners_65535_apart_never_share(self):
        # Owners are told apart by uid, not by a hash of it: uid 0 and
        # 65535, and uid 1000 and 66535, are four different owners.
        data = os.urandom(self.npages * PAGE)
        owners = [('u0', 0), ('u65535', 65535), ('u1000', 1000),
                  ('u66535', 66535)]
        chowned_copies(self.m, data, owners)
        reps = self._reports([n for n, _ in owners])
        for name, uid in owners:
            rep = reps[name]
            self.assertEqual((rep['shared_pages'], rep['sharers']), (0, []),
                             f'{name} (uid {uid}) shares pages with a file '
                             f'of another owner: {rep}')


class ScopeNone(sp.MountTestCase):
    mount_opts = ('cache_size=64M', 'dedup_scope=none')

    def test_scope_none_copies_and_zero_pages_never_share(self):
        data = os.urandom(64 * PAGE)
        names = [f'c{i}' for i in range(4)]
        for n in names:
            sp.write_file(self.m.bpath(n), data)
        with open(self.m.bpath('zeros'), 'wb') as f:
            f.truncate(64 * PAGE)
        fds = [os.open(self.m.path(n), os.O_RDONLY)
               for n in names + ['zeros']]
        try:
            read_and_scan(self.m, fds)
            st = self.m.stats()
            self.assertEqual(st['pages_sharing'], 0, st)
            self.assertEqual(st['pages_shared'], 0, st)
            self.assertEqual(file_report(self.m, 'c0')['sharers'], [])
        finally:
            for fd in fds:
                os.close(fd)


if __name__ == '__main__':
    sp.main()
