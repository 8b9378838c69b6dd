"""Support code for samepage integration tests on real mounts.

Every test runs the daemon on a private temporary directory and always
unmounts it, also when setUp or the test fails: a mount left behind would
hang the next `ls /tmp`. Standard library only; run with /usr/bin/python3.

Typical use:

    class T(sp.MountTestCase):
        mount_opts = ('cache_size=64M',)
        def test_something(self):
            with open(self.m.path('f'), 'w') as f: ...

    if __name__ == '__main__':
        sp.main()

sp.main() exits 77 when every test was skipped, so meson reports SKIP.
"""

import atexit
import ctypes
import errno
import hashlib
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

_HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(_HERE, '..', '..'))


def _default_binary(name, subdir):
    """A binary from a build dir of the repo when meson did not tell us."""
    for cand in (os.path.join(REPO, 'build', name),
                 os.path.join(REPO, 'build', subdir, name)):
        if os.access(cand, os.X_OK):
            return cand
    found = shutil.which(name)
    return found or os.path.join(REPO, 'build', name)


SAMEPAGEFS = os.environ.get('SAMEPAGEFS') or _default_binary('samepagefs', 'fs')
SAMEPAGECTL = os.environ.get('SAMEPAGECTL') or _default_binary('samepagectl',
                                                               'tools')


def _is_sanitized(path):
    """Was this binary built with ASan or TSan (meson b_sanitize)?"""
    try:
        with open(path, 'rb') as f:
            data = f.read()
        return b'__asan_init' in data or b'__tsan_init' in data
    except OSError:
        return False


# Under ASan the daemon's RSS includes shadow memory (1/8 of all it
# touches), the allocator's quarantine and redzones; under TSan shadow
# memory is several times the application's and every access is slower.
# Memory bounds do not hold there and timing bounds need room, so tests
# skip or widen those checks when this is true. tools/test sets
# SAMEPAGE_SANITIZED=1 for its sanitizer passes.
SANITIZED = (os.environ.get('SAMEPAGE_SANITIZED') == '1'
             or _is_sanitized(SAMEPAGEFS))

MOUNT_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0

# Mounts started and not yet stopped; unmounted at exit whatever happened.
_live = set()
# Temp dirs of every Mount; removed at exit unless something is mounted
# below them (a test that only stop()s keeps its log until then).
_tmpdirs = []


def _remove_tmpdirs():
    for d in _tmpdirs:
        if os.path.isdir(d) and not mounts_under(d):
            shutil.rmtree(d, ignore_errors=True)


def _cleanup_live():
    for m in list(_live):
        try:
            m.stop()
        except Exception as e:  # keep going: unmount every other one too
            sys.stderr.write(f'sp: cleanup of {m.mnt} failed: {e}\n')


# atexit runs these in reverse: first unmount, then remove the dirs.
atexit.register(_remove_tmpdirs)
atexit.register(_cleanup_live)


def _on_sigterm(signum, frame):
    # meson sends SIGTERM on timeout: unwind so that cleanups unmount.
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_sigterm)


def is_mounted(path):
    """True if path is a mount point in /proc/mounts (no call into FUSE)."""
    path = os.path.realpath(path)
    with open('/proc/self/mounts') as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and _unescape(fields[1]) == path:
                return True
    return False


def mounts_under(prefix):
    """Mount points at or below prefix, from /proc/mounts."""
    prefix = os.path.realpath(prefix)
    out = []
    with open('/proc/self/mounts') as f:
        for line in f:
            fields = line.split()
            if len(fields) < 2:
                continue
            target = _unescape(fields[1])
            if target == prefix or target.startswith(prefix + '/'):
                out.append(target)
    return out


def mount_entry(path):
    """The /proc/mounts fields (source, target, fstype, options) or None."""
    path = os.path.realpath(path)
    found = None
    with open('/proc/self/mounts') as f:
        for line in f:
            fields = line.split()
            if len(fields) > 3 and _unescape(fields[1]) == path:
                found = (_unescape(fields[0]), path, fields[2], fields[3])
    return found


def abort_fuse_connection(mnt):
    """Abort the FUSE connection of mount point mnt (fusectl), so that
    processes stuck on it get ENOTCONN instead of hanging a test."""
    conns = '/sys/fs/fuse/connections'
    if not os.listdir(conns):
        subprocess.run(['mount', '-t', 'fusectl', 'fusectl', conns],
                       stderr=subprocess.DEVNULL)
    # The device number from mountinfo: a stat of the mount point would
    # wait on the very daemon that hangs.
    path, minor = os.path.realpath(mnt), None
    with open('/proc/self/mountinfo') as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == path:
                minor = fields[2].split(':')[1]
    if minor is None:
        return
    try:
        with open(f'{conns}/{minor}/abort', 'w') as f:
            f.write('1')
    except OSError:
        pass


def _unescape(s):
    return (s.replace('\\040', ' ').replace('\\011', '\t')
             .replace('\\012', '\n').replace('\\134', '\\'))


def require_env():
    """Skip unless we can mount: root, /dev/fuse, fusermount3, the binary."""
    if os.geteuid() != 0:
        raise unittest.SkipTest('integration tests need root')
    if not os.path.exists('/dev/fuse'):
        raise unittest.SkipTest('/dev/fuse is missing')
    if not shutil.which('fusermount3'):
        raise unittest.SkipTest('fusermount3 is missing')
    if not os.access(SAMEPAGEFS, os.X_OK):
        raise unittest.SkipTest(f'{SAMEPAGEFS} is not built')


# The caching mode of a test mount that names none: samepage's shared cache,
# which most tests are about (merging, eviction, writeback). Tests of what
# a user sees with the defaults pass mode=None; test_cache_mode and the
# model tests name their modes.
TEST_MODE = 'shared'


class MountError(Exception):
    pass


class Mount:
    """One samepagefs daemon on (backing, mnt); a context manager."""

    def __init__(self, opts=(), backing=None, mnt=None, foreground=True,
                 extra_args=(), mode=TEST_MODE):
        """mode: the cache_mode option unless opts name one; None mounts
        with the daemon's default."""
        self.mode = mode
        self.opts = self._with_mode(opts)
        self.foreground = foreground
        self.extra_args = list(extra_args)
        self.tmp = tempfile.mkdtemp(prefix='sp-')
        _tmpdirs.append(self.tmp)
        self._own_backing = backing is None
        self._own_mnt = mnt is None
        self.backing = backing or os.path.join(self.tmp, 'backing')
        self.mnt = mnt or os.path.join(self.tmp, 'mnt')
        if self._own_backing:
            os.mkdir(self.backing)
        if self._own_mnt:
            os.mkdir(self.mnt)
        self.log_path = os.path.join(self.tmp, 'samepagefs.log')
        self.proc = None
        self.pid = None          # the daemon (differs from proc without -f)
        self.returncode = None
        self._log = None

    # -- life cycle --------------------------------------------------------

    def command(self):
        cmd = [SAMEPAGEFS]
        if self.foreground:
            cmd.append('-f')
        if self.opts:
            cmd += ['-o', ','.join(self.opts)]
        return cmd + self.extra_args + [self.backing, self.mnt]

    def start(self):
        require_env()
        if self.proc is not None and self.returncode is None:
            raise MountError(f'{self.mnt}: already started')
        self.returncode = None
        self.pid = None
        self._log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log)
        _live.add(self)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while True:
            if is_mounted(self.mnt):
                break
            rc = self.proc.poll()
            if rc is not None and (self.foreground or rc != 0):
                self._forget()
                raise MountError(f'samepagefs exited with {rc} before '
                                 f'mounting {self.mnt}:\n{self.log()}')
            if time.monotonic() > deadline:
                self._kill_and_unmount()
                raise MountError(f'{self.mnt} not mounted after '
                                 f'{MOUNT_TIMEOUT:.0f} s:\n{self.log()}')
            time.sleep(0.02)
        if self.foreground:
            self.pid = self.proc.pid
        else:
            # The launcher returns once the mount is ready.
            try:
                self.proc.wait(MOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            self.pid = find_daemon_pid(self.mnt)
        return self

    def stop(self):
        """Unmount (always) and wait for the daemon; its exit code.

        Raises MountError if the daemon's log holds a sanitizer report, so
        an ASan/UBSan build fails the test that triggered it.
        """
        if self.proc is None:
            return self.returncode
        try:
            self._unmount()
            self.returncode = self._wait_daemon(STOP_TIMEOUT)
        finally:
            if is_mounted(self.mnt):
                subprocess.run(['umount', '-l', self.mnt],
                               stderr=subprocess.DEVNULL)
            self._forget()
        report = sanitizer_report(self.log())
        if report:
            raise MountError(f'sanitizer report from samepagefs:\n{report}')
        return self.returncode

    def kill9(self):
        """SIGKILL the daemon (a crash), then lazily unmount."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._wait_daemon(STOP_TIMEOUT)
        if is_mounted(self.mnt):
            subprocess.run(['umount', '-l', self.mnt],
                           stderr=subprocess.DEVNULL)
        self._forget()

    def remount(self, opts=None):
        self.stop()
        if opts is not None:
            self.opts = self._with_mode(opts)
        return self.start()

    def _with_mode(self, opts):
        opts = list(opts)
        if self.mode and not any(o.startswith('cache_mode=') for o in opts):
            opts.append('cache_mode=' + self.mode)
        return opts

    def cleanup(self):
        """Stop and remove the temp dir (never while anything is mounted)."""
        self.stop()
        if mounts_under(self.tmp) or is_mounted(self.mnt):
            raise MountError(f'{self.mnt} still mounted, not removing')
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def _unmount(self):
        for attempt in range(50):
            if not is_mounted(self.mnt):
                return
            r = subprocess.run(['fusermount3', '-u', self.mnt],
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        subprocess.run(['umount', '-l', self.mnt], stderr=subprocess.DEVNULL)

    def _wait_daemon(self, timeout):
        """Wait for the daemon to exit; SIGKILL it after timeout."""
        rc = None
        if self.foreground:
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            return rc
        # Daemonised: the launcher is gone; poll the daemon's pid.
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        if self.pid:
            deadline = time.monotonic() + timeout
            while _pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
                rc = -signal.SIGKILL
        return rc

    def _kill_and_unmount(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if is_mounted(self.mnt):
            subprocess.run(['umount', '-l', self.mnt],
                           stderr=subprocess.DEVNULL)
        self._forget()

    def _forget(self):
        _live.discard(self)
        if self._log:
            self._log.close()
            self._log = None
        if self.proc is not None:
            if self.returncode is None:
                self.returncode = self.proc.poll()
            self.proc = None

    # -- access ------------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def bpath(self, *parts):
        return os.path.join(self.backing, *parts)

    def log(self):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read().decode(errors='replace')
        except OSError:
            return ''

    def stats(self):
        return _parse_kv(os.getxattr(self.mnt, 'samepage.stats'))

    def knobs(self):
        return _parse_kv(os.getxattr(self.mnt, 'samepage.knobs'))

    def set(self, key, value):
        os.setxattr(self.mnt, 'samepage.set', f'{key}={value}'.encode())

    def scan(self, wait=True):
        os.setxattr(self.mnt, 'samepage.scan', b'wait' if wait else b'start')

    def anon_bytes(self):
        """Daemon Pss_Anon: its own memory (frames, heap, stacks), not the
        files it maps (libraries, the store), which are page cache.
        Not a memory bound under sanitizers: see SANITIZED."""
        with open(f'/proc/{self.pid}/smaps_rollup') as f:
            for line in f:
                if line.startswith('Pss_Anon:'):
                    return int(line.split()[1]) * 1024
        raise MountError(f'no Pss_Anon for pid {self.pid}')

    def rss_bytes(self):
        """Daemon VmRSS. Not a memory bound under ASan: see SANITIZED."""
        with open(f'/proc/{self.pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) * 1024
        raise MountError(f'no VmRSS for pid {self.pid}')

    def ctl(self, *args, check=True):
        """Run samepagectl; the CompletedProcess (text)."""
        r = subprocess.run([SAMEPAGECTL] + list(args), capture_output=True,
                           text=True, timeout=60)
        if check and r.returncode != 0:
            raise MountError(f'samepagectl {" ".join(args)}: exit '
                             f'{r.returncode}\n{r.stdout}{r.stderr}')
        return r


# TSan reports races and lock-order inversions as WARNING, its own crashes
# (SEGV, an unsupported memory layout) as ERROR or FATAL.
SANITIZER_MARKS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer',
                   'runtime error:', 'WARNING: ThreadSanitizer',
                   'ERROR: ThreadSanitizer', 'FATAL: ThreadSanitizer')


def file_report(path):
    """samepage.file of a path through the mount: numbers as ints, words
    (cache_mode) as strings, the sharers' paths in 'sharers'."""
    rep = {'sharers': []}
    for line in os.getxattr(path, 'samepage.file').decode().splitlines():
        parts = line.split(None, 2)
        if parts[0] == 'sharer':
            rep['sharers'].append(parts[2])
        else:
            rep[parts[0]] = int(parts[1]) if parts[1].isdigit() else parts[1]
    return rep


def sanitizer_report(text):
    """The part of a log from the first sanitizer report on, or ''."""
    hits = [text.find(m) for m in SANITIZER_MARKS if m in text]
    if not hits:
        return ''
    start = text.rfind('\n', 0, min(hits)) + 1
    return text[start:start + 8000]


def _parse_kv(raw):
    """'name value' lines -> dict; values as int where they are numbers."""
    out = {}
    for line in raw.decode(errors='replace').splitlines():
        parts = line.split(None, 1)
        if not parts:
            continue
        val = parts[1].strip() if len(parts) > 1 else ''
        try:
            out[parts[0]] = int(val)
        except ValueError:
            try:
                out[parts[0]] = float(val)
            except ValueError:
                out[parts[0]] = val
    return out


def _pid_alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            # A zombie has exited; only its parent's wait() is missing.
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def find_daemon_pid(mnt):
    """Pid of the samepagefs process serving mnt (by its command line)."""
    mnt = os.path.realpath(mnt)
    name = os.path.basename(SAMEPAGEFS)
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open(f'/proc/{d}/cmdline', 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if (argv and os.path.basename(argv[0].decode(errors='replace')) == name
                and any(os.path.realpath(a.decode(errors='replace')) == mnt
                        for a in argv[1:] if a)):
            return int(d)
    return None


def drop_caches():
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


def page_cache_bytes():
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('Cached:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('no Cached: line in /proc/meminfo')


class XfsImage:
    """A loop-mounted XFS with reflink on a sparse file; a context manager."""

    MIN_MB = 320  # mkfs.xfs refuses file systems under 300 MB

    def __init__(self, size_mb=512):
        self.size_mb = max(size_mb, self.MIN_MB)
        self.tmp = None
        self.loop = None
        self.dir = None

    def __enter__(self):
        for tool in ('mkfs.xfs', 'losetup'):
            if not shutil.which(tool):
                raise unittest.SkipTest(f'{tool} is missing')
        if os.geteuid() != 0:
            raise unittest.SkipTest('loop devices need root')
        self.tmp = tempfile.mkdtemp(prefix='sp-xfs-')
        try:
            img = os.path.join(self.tmp, 'xfs.img')
            with open(img, 'wb') as f:
                f.truncate(self.size_mb << 20)
            _run(['mkfs.xfs', '-q', '-m', 'reflink=1', img])
            self.loop = _run(['losetup', '--direct-io=on', '--find', '--show',
                              img]).strip()
            self.dir = os.path.join(self.tmp, 'fs')
            os.mkdir(self.dir)
            _run(['mount', '-t', 'xfs', self.loop, self.dir])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.dir and is_mounted(self.dir):
            r = subprocess.run(['umount', self.dir], stderr=subprocess.DEVNULL)
            if r.returncode != 0:
                subprocess.run(['umount', '-l', self.dir])
        if self.loop:
            subprocess.run(['losetup', '-d', self.loop])
            self.loop = None
        if self.tmp and not (self.dir and is_mounted(self.dir)):
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)}: exit {r.returncode}\n'
                           f'{r.stdout}{r.stderr}')
    return r.stdout


def reflink(src, dst):
    _run(['cp', '--reflink=always', src, dst])


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                            ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def punch_hole(fd, off, length):
    """fallocate(PUNCH_HOLE | KEEP_SIZE); os.posix_fallocate cannot punch."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f'fallocate punch {off}+{length}: {os.strerror(e)}')


def fallocate(fd, mode, off, length):
    """fallocate(2) with any mode; os.posix_fallocate has none."""
    if _libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f'fallocate mode {mode:#x} {off}+{length}: '
                      f'{os.strerror(e)}')



# Linux native AIO (io_setup/io_submit), the way fio's libaio engine puts
# several writes of one file in flight at once: the kernel holds a file's
# lock for one synchronous FUSE write until its reply, not for these.
_AIO_SYSCALLS = {'x86_64': (206, 207, 209, 208),   # setup, destroy,
                 'aarch64': (0, 1, 2, 4)}          # submit, getevents
_libc.syscall.restype = ctypes.c_long


class _Iocb(ctypes.Structure):
    _fields_ = [('data', ctypes.c_uint64), ('key', ctypes.c_uint32),
                ('rw_flags', ctypes.c_uint32), ('opcode', ctypes.c_uint16),
                ('reqprio', ctypes.c_int16), ('fildes', ctypes.c_uint32),
                ('buf', ctypes.c_uint64), ('nbytes', ctypes.c_uint64),
                ('offset', ctypes.c_int64), ('reserved2', ctypes.c_uint64),
                ('flags', ctypes.c_uint32), ('resfd', ctypes.c_uint32)]


class _IoEvent(ctypes.Structure):
    _fields_ = [('data', ctypes.c_uint64), ('obj', ctypes.c_uint64),
                ('res', ctypes.c_int64), ('res2', ctypes.c_int64)]


def aio_supported():
    return os.uname().machine in _AIO_SYSCALLS


class Aio:
    """One native AIO context (io_destroy waits for an RCU grace period,
    tens of ms: keep one for many batches). Use as a context manager."""

    def __init__(self, depth):
        calls = _AIO_SYSCALLS[os.uname().machine]
        self.setup, self.destroy, self.submit, self.getevents = calls
        self.depth = depth
        self.ctx = ctypes.c_ulong(0)
        if _libc.syscall(self.setup, depth, ctypes.byref(self.ctx)) < 0:
            raise OSError(ctypes.get_errno(), 'io_setup')

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _libc.syscall(self.destroy, self.ctx)

    def pwrite_all(self, fd, writes):
        """Submit every (data, offset) of writes as one batch of
        asynchronous writes to fd, wait for them all; each one's result
        (bytes or -errno), in order. Without O_DIRECT on fd the kernel
        writes them one by one at submission."""
        n = len(writes)
        assert n <= self.depth
        # Page-aligned buffers (anonymous maps), as O_DIRECT callers use.
        bufs = [mmap.mmap(-1, max(len(d), 1)) for d, _ in writes]
        iocbs = (_Iocb * n)()
        for i, (d, off) in enumerate(writes):
            bufs[i][:len(d)] = d
            addr = ctypes.addressof(ctypes.c_char.from_buffer(bufs[i]))
            iocbs[i] = _Iocb(data=i, opcode=1, fildes=fd,  # IOCB_CMD_PWRITE
                             buf=addr, nbytes=len(d), offset=off)
        ptrs = (ctypes.POINTER(_Iocb) * n)(
            *[ctypes.pointer(iocbs[i]) for i in range(n)])
        done = _libc.syscall(self.submit, self.ctx, n, ptrs)
        if done != n:
            raise OSError(ctypes.get_errno() if done < 0 else errno.EAGAIN,
                          f'io_submit took {done} of {n}')
        events = (_IoEvent * n)()
        got = 0
        while got < n:
            r = _libc.syscall(self.getevents, self.ctx, 1, n - got,
                              ctypes.byref(events, got * ctypes.sizeof(
                                  _IoEvent)), None)
            if r < 0:
                if ctypes.get_errno() == errno.EINTR:
                    continue
                raise OSError(ctypes.get_errno(), 'io_getevents')
            got += r
        results = [0] * n
        for e in events:
            results[e.data] = e.res
        return results

def fio(args, cwd):
    """Run fio with JSON output in cwd; the parsed JSON."""
    r = subprocess.run(['fio', '--output-format=json'] + list(args), cwd=cwd,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f'fio {" ".join(args)}: exit {r.returncode}\n'
                           f'{r.stdout}{r.stderr}')
    # fio may print notes before the JSON document.
    start = r.stdout.find('{')
    if start < 0:
        raise RuntimeError(f'fio printed no JSON:\n{r.stdout}{r.stderr}')
    return json.loads(r.stdout[start:])


def write_file(path, data, mode='wb'):
    with open(path, mode) as f:
        f.write(data)


def read_file(path):
    with open(path, 'rb') as f:
        return f.read()


def write_synced(path, data, mode='wb'):
    """write_file, and on disk (fsync) before it returns."""
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def pread_all(fd, length, off, most=None):
    """pread until length bytes or EOF (FUSE may split large reads); at
    most `most` bytes a call when given."""
    out = bytearray()
    while len(out) < length:
        n = length - len(out)
        if most is not None:
            n = min(n, most)
        b = os.pread(fd, n, off + len(out))
        if not b:
            break
        out += b
    return bytes(out)


def sha1(data):
    return hashlib.sha1(data).hexdigest()


def sha1_path(path, chunk=1 << 20):
    """SHA-1 (hex) of a file, read unbuffered chunk bytes at a time."""
    h = hashlib.sha1()
    with open(path, 'rb', buffering=0) as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def first_diff(a, b):
    """Offset of the first differing byte (or the shorter length)."""
    n = min(len(a), len(b))
    for i in range(0, n, 4096):
        if a[i:i + 4096] != b[i:i + 4096]:
            for j in range(i, min(i + 4096, n)):
                if a[j] != b[j]:
                    return j
    return n


class FileModel:
    """What a file must hold after the writes, truncates and punched
    holes made to it: a bytearray the tests compare reads with."""

    def __init__(self, data=b''):
        self.data = bytearray(data)

    def write(self, off, data):
        end = off + len(data)
        if end > len(self.data):
            self.data += bytes(end - len(self.data))
        self.data[off:end] = data

    def truncate(self, size):
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data += bytes(size - len(self.data))

    def punch(self, off, length):
        end = min(off + length, len(self.data))
        if end > off:
            self.data[off:end] = bytes(end - off)


def run_threads(target, n, seconds):
    """target(0) .. target(n - 1), each in a daemon thread; waits at most
    seconds in all. The numbers of the threads still running (stuck)."""
    threads = [threading.Thread(target=target, args=(t,), daemon=True)
               for t in range(n)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(0.1, seconds - (time.monotonic() - t0)))
    return [t for t, th in enumerate(threads) if th.is_alive()]


def fork_json(fn, *args, error_key='error'):
    """Fork; the child writes fn(*args)'s result as JSON to a pipe (an
    exception as {error_key: repr}) and exits. (pid, read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = fn(*args)
        except BaseException as e:  # report, never unwind into the parent
            out = {error_key: repr(e)}
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def read_json(r, empty):
    """Read the pipe r to EOF and close it; the JSON in it (empty, bytes,
    when the child wrote nothing)."""
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    return json.loads(b''.join(chunks) or empty)


def require_failpoints(m, knob='fail_read'):
    """Skip unless the daemon was built with -Dfailpoints=true: without
    them, setting a failpoint or pause point knob is not supported."""
    try:
        m.set(knob, '0')
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise unittest.SkipTest('samepagefs built without failpoints')
        raise


class MountTestCase(unittest.TestCase):
    """Mounts self.m in setUp; always unmounts, also if setUp fails."""

    mount_opts = ('cache_size=64M',)
    mount_kwargs = {}

    def setUp(self):
        require_env()
        self.start_mount()

    def start_mount(self, **kwargs):
        """self.m with mount_opts and mount_kwargs (kwargs win), started;
        unmounted by a cleanup whatever happens."""
        self.m = Mount(opts=self.mount_opts, **{**self.mount_kwargs, **kwargs})
        self.addCleanup(self.m.cleanup)
        self.m.start()

    def tearDown(self):
        # Stop before the cleanups so a test's own cleanups see no mount.
        # A daemon that was still serving must exit cleanly: a crash after
        # the test's last assertion is still a failure.
        was_running = self.m.proc is not None
        rc = self.m.stop()
        if was_running and rc != 0:
            self.fail(f'samepagefs exited with {rc}:\n{self.m.log()[-4000:]}')


def main():
    """unittest.main() with exit 77 when every test was skipped."""
    prog = unittest.main(exit=False, verbosity=2)
    res = prog.result
    if not res.wasSuccessful():
        sys.exit(1)
    if res.testsRun > 0 and len(res.skipped) == res.testsRun:
        sys.exit(77)
    if res.testsRun == 0:
        sys.exit(77)
    sys.exit(0)
