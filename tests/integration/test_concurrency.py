"""Several processes at once, each checked against its own model.

NPROCS forked processes drive their own files through one mount whose cache
is smaller than the data (eviction runs all the time), with the scanner at
its highest rate and a short writeback delay. Every process starts from
files of IDENTICAL content (one seed for the initial data; on XFS some are
reflinked clones of the templates), so frames really are shared across the
processes' files, and the writes break that sharing while other processes
read, write, clone and evict the same frames.

Each process runs a seeded random sequence of pwrite (aligned, unaligned,
random bytes, template pages that merge again, zero pages), truncate
(shrink and grow, by fd and by path), punch hole, copy_file_range between
two of its own files (a clone on XFS when aligned), rename between its own
names (also over an existing one), fsync/fdatasync, close/reopen and reads.
EVERY read is compared with the process's in-memory model (a bytearray per
file); the first difference is reported with the file, offset, expected and
got bytes, the op number, the seed and the last operations. Templates that
nobody writes are read too: a write leaking into a shared page shows there.

At the end every file is compared byte for byte with its model through the
mount and, after unmount, in the backing directory. Runs twice: over a plain
backing directory and over an XFS reflink image.

Bounded: OPS_SECONDS of operations per process; a process that has not
reported DEADLINE_S later is killed and the test fails with "deadlock?"
(with the op each stuck process was in and the daemon's thread stacks).

Replay: SAMEPAGE_SEED=<seed> repeats every process's operation sequence
(the interleaving between processes is up to the scheduler);
SAMEPAGE_CONC_OPS=<n> stops each process after n operations,
SAMEPAGE_CONC_PROCS=<k>[,<k>...] runs only those processes (the others'
files are still there) and SAMEPAGE_CONC_SECONDS changes the time budget.
"""

import collections
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4096

NPROCS = 4
NTEMPLATES = 3               # t0..t2; every process starts with one copy each
NAMES_PER_PROC = 4           # p{k}n0..n3: three exist at the start
FILE_SIZE = 512 * KiB        # initial size of every file
MAX_SIZE = 1 * MiB           # offsets and sizes stay below this
CACHE = '2M'                 # 1.5 MiB unique at the start, far more later
CACHE_BYTES = 2 * MiB
OPS_SECONDS = float(os.environ.get('SAMEPAGE_CONC_SECONDS', '5'))
MAX_OPS = int(os.environ.get('SAMEPAGE_CONC_OPS', '0')) or None
# A process does at least this many operations (unless MAX_OPS says
# fewer), however long they take on a loaded machine: DEADLINE_S bounds it.
MIN_OPS = 20
# Which processes run (all by default): SAMEPAGE_CONC_PROCS=2 replays
# process 2's sequence alone, to tell a concurrency bug from a plain one.
RUN_PROCS = [int(k) for k in
             os.environ.get('SAMEPAGE_CONC_PROCS', '').split(',') if k] or \
    list(range(NPROCS))
# Sanitizers slow every request down; the op loop is time-bounded, the
# final checks and a slow request are not.
DEADLINE_S = OPS_SECONDS + (120 if sp.SANITIZED else 45)
VERIFY_EVERY = 40            # a whole-file check through a fresh fd
LOG_OPS = 40                 # operations kept for a failure report
PROGRESS_LEN = 512


class Divergence(Exception):
    """A read that differs from the model."""


def describe_diff(what, off, want, got):
    """'what: at byte X (file offset Y) expected .. got ..'."""
    i = sp.first_diff(want, got)
    lo = i - i % 16
    return (f'{what}: first difference at file offset {off + i} (read '
            f'{off}+{len(want)}, got {len(got)} bytes); expected '
            f'[{off + lo}..] {bytes(want[lo:lo + 32]).hex()} got '
            f'{bytes(got[lo:lo + 32]).hex()}'
            + ('' if i < len(got) else ' (read ended there)'))


def template_data(seed, i):
    return random.Random(f'{seed}:template:{i}').randbytes(FILE_SIZE)


def proc_names(k):
    return [f'p{k}n{j}' for j in range(NAMES_PER_PROC)]


class Obj(sp.FileModel):
    """One file (inode) of a process's model."""


class Worker:
    """One process's operations on its own names, checked against its model.

    Runs in a forked child; run() returns a JSON-able result."""

    def __init__(self, mnt, k, seed, templates, progress_fd):
        self.mnt = mnt
        self.k = k
        self.seed = seed
        self.rng = random.Random(f'{seed}:proc:{k}')
        self.templates = templates
        self.names = proc_names(k)
        self.files = {}              # name -> Obj
        self.fds = {}                # name -> (fd, Obj), O_RDWR
        self.tfds = []               # O_RDONLY on every template
        self.log = collections.deque(maxlen=LOG_OPS)
        self.step = -1
        self.cur = 'start'
        self.progress_fd = progress_fd

    def path(self, name):
        return os.path.join(self.mnt, name)

    # -- bookkeeping ---------------------------------------------------------

    def note(self, text):
        """Record the op about to run: in the failure log and, for the
        parent's deadlock report, in this process's progress file."""
        self.cur = f'#{self.step} {text}'
        self.log.append(self.cur)
        line = f'{time.monotonic():.3f} {self.cur}'.encode()[:PROGRESS_LEN]
        os.pwrite(self.progress_fd, line.ljust(PROGRESS_LEN), 0)

    def fd_for(self, name):
        """An O_RDWR fd on name, creating an empty file if it is absent."""
        if name not in self.fds:
            obj = self.files.get(name)
            fd = os.open(self.path(name), os.O_RDWR | os.O_CREAT, 0o644)
            if obj is None:
                obj = self.files[name] = Obj()
            self.fds[name] = (fd, obj)
        return self.fds[name]

    def existing(self):
        return [n for n in self.names if n in self.files]

    # -- checks --------------------------------------------------------------

    def check_range(self, name, fd, obj, off, n, what):
        got = sp.pread_all(fd, n, off, most=256 * KiB)
        want = bytes(obj.data[off:off + n])
        if got != want:
            raise Divergence(describe_diff(f'{what}: {name}', off, want, got))

    def check_size(self, name, fd, obj, what):
        size = os.fstat(fd).st_size
        if size != len(obj.data):
            raise Divergence(f'{what}: {name} has size {size}, model '
                             f'{len(obj.data)}')

    def check_whole(self, name, what):
        obj = self.files[name]
        fd = os.open(self.path(name), os.O_RDONLY)
        try:
            self.check_size(name, fd, obj, what)
            self.check_range(name, fd, obj, 0, len(obj.data) + PAGE, what)
        finally:
            os.close(fd)

    # -- random shapes -------------------------------------------------------

    def rand_len(self):
        r = self.rng
        return r.choice([1, r.randint(1, 100), PAGE, 2 * PAGE, 16 * PAGE,
                         r.randint(1, 3 * PAGE), r.randint(PAGE, 64 * KiB)])

    def rand_off(self, size):
        r = self.rng
        k = r.randrange(MAX_SIZE // PAGE)
        return min(MAX_SIZE - 1, r.choice([
            k * PAGE,                               # aligned
            max(0, k * PAGE - r.randint(1, 50)),    # just before a boundary
            k * PAGE + r.randint(1, 50),            # just past one
            r.randint(0, max(size, 1)),             # inside the file
            size]))                                 # at EOF

    def clamp(self, off, n):
        return max(0, min(n, MAX_SIZE - off))

    # -- operations ----------------------------------------------------------

    def op_write(self):
        name = self.rng.choice(self.names)
        fd, obj = self.fd_for(name)
        off = self.rand_off(len(obj.data))
        n = self.clamp(off, self.rand_len()) or 1
        data = self.rng.randbytes(n)
        self.note(f'pwrite {name} {off}+{n}')
        self.do_write(name, fd, obj, off, data)

    def op_write_template(self):
        """Pages equal to pages nobody else wrote: they merge again."""
        r = self.rng
        name = r.choice(self.names)
        fd, obj = self.fd_for(name)
        t = r.randrange(NTEMPLATES)
        npages = r.choice([1, 1, 2, 8])
        src = r.randrange(FILE_SIZE // PAGE - npages + 1) * PAGE
        dst = r.randrange(MAX_SIZE // PAGE - npages + 1) * PAGE
        if r.random() < 0.2:
            dst += r.randint(1, PAGE - 1)    # unaligned: no longer whole pages
        n = self.clamp(dst, npages * PAGE)
        data = self.templates[t][src:src + n]
        self.note(f'pwrite {name} {dst}+{n} (t{t} at {src})')
        self.do_write(name, fd, obj, dst, data)

    def op_write_zero(self):
        r = self.rng
        name = r.choice(self.names)
        fd, obj = self.fd_for(name)
        off = r.randrange(MAX_SIZE // PAGE - 4) * PAGE
        n = r.choice([PAGE, 4 * PAGE])
        self.note(f'pwrite {name} {off}+{n} (zeros)')
        self.do_write(name, fd, obj, off, bytes(n))

    def do_write(self, name, fd, obj, off, data):
        n = os.pwrite(fd, data, off)
        if n != len(data):
            raise Divergence(f'short pwrite {name} {off}+{len(data)}: {n}')
        obj.write(off, data)
        self.check_range(name, fd, obj, max(0, off - 100), len(data) + 200,
                         'read back after pwrite')

    def op_read(self):
        name = self.rng.choice(self.names)
        if name not in self.files:
            return self.op_write()
        fd, obj = self.fd_for(name)
        off = self.rand_off(len(obj.data))
        n = self.rand_len()
        self.note(f'pread {name} {off}+{n}')
        self.check_range(name, fd, obj, off, n, 'pread')

    def op_read_template(self):
        t = self.rng.randrange(NTEMPLATES)
        off = self.rng.randrange(FILE_SIZE // PAGE) * PAGE
        n = self.rng.choice([PAGE, 64 * KiB])
        self.note(f'pread t{t} {off}+{n} (nobody writes it)')
        self.check_template(t, off, n)

    def check_template(self, t, off, n):
        got = sp.pread_all(self.tfds[t], n, off, most=256 * KiB)
        want = self.templates[t][off:off + n]
        if got != want:
            raise Divergence(describe_diff(
                f'template t{t} changed (a write leaked into a shared page)',
                off, want, got))

    def op_share_then_poke(self):
        """A page equal to a template page, clean, read through the
        template (they may share a frame now), then one byte of it
        written: the template must not see that byte."""
        r = self.rng
        name = r.choice(self.names)
        fd, obj = self.fd_for(name)
        t = r.randrange(NTEMPLATES)
        src = r.randrange(FILE_SIZE // PAGE) * PAGE
        dst = r.randrange(MAX_SIZE // PAGE) * PAGE
        page = self.templates[t][src:src + PAGE]
        at = r.randrange(PAGE)
        self.note(f'pwrite {name} {dst}+{PAGE} (t{t} at {src}), '
                  f'fdatasync, pread t{t} {src}+{PAGE}, pwrite {name} '
                  f'{dst + at}+1, pread t{t} {src}+{PAGE}')
        self.do_write(name, fd, obj, dst, page)
        os.fdatasync(fd)
        self.check_template(t, src, PAGE)
        self.do_write(name, fd, obj, dst + at, bytes([page[at] ^ 0xff]))
        self.check_template(t, src, PAGE)

    def op_verify(self):
        ex = self.existing()
        if not ex:
            return self.op_write()
        name = self.rng.choice(ex)
        self.note(f'verify {name} whole (fresh fd)')
        self.check_whole(name, 'whole-file read')

    def op_truncate(self):
        r = self.rng
        name = r.choice(self.names)
        fd, obj = self.fd_for(name)
        size = r.choice([0, r.randint(0, max(len(obj.data), 1)),
                         r.randrange(MAX_SIZE // PAGE) * PAGE,
                         r.randint(0, MAX_SIZE)])
        by_path = r.random() < 0.3
        self.note(f'truncate {name} {len(obj.data)} -> {size}'
                  f'{" by path" if by_path else ""}')
        if by_path:
            os.truncate(self.path(name), size)
        else:
            os.ftruncate(fd, size)
        obj.truncate(size)
        self.check_size(name, fd, obj, 'after truncate')
        self.check_range(name, fd, obj, max(0, size - 2 * PAGE), 3 * PAGE,
                         'read around EOF after truncate')

    def op_punch(self):
        name = self.rng.choice(self.names)
        fd, obj = self.fd_for(name)
        off = self.rand_off(len(obj.data))
        n = self.rand_len()
        self.note(f'punch {name} {off}+{n}')
        sp.punch_hole(fd, off, n)
        obj.punch(off, n)
        self.check_size(name, fd, obj, 'after punch')
        self.check_range(name, fd, obj, max(0, off - 100), n + 200,
                         'read back after punch')

    def op_copy_range(self):
        ex = self.existing()
        if len(ex) < 2:
            return self.op_write()
        r = self.rng
        a, b = r.sample(ex, 2)
        fa, oa = self.fd_for(a)
        fb, ob = self.fd_for(b)
        if r.random() < 0.7:                # clonable: whole aligned pages
            soff = r.randrange(max(len(oa.data), PAGE) // PAGE) * PAGE
            doff = r.randrange(MAX_SIZE // PAGE) * PAGE
            count = r.choice([PAGE, 4 * PAGE, 16 * PAGE, 64 * PAGE,
                              len(oa.data)])
        else:
            soff = r.randint(0, max(len(oa.data), 1))
            doff = self.rand_off(len(ob.data))
            count = self.rand_len()
        count = self.clamp(doff, count)
        self.note(f'copy_file_range {a} {soff}+{count} -> {b} {doff} '
                  f'(sizes {len(oa.data)}, {len(ob.data)})')
        want = bytes(oa.data[soff:soff + count])
        done = 0
        while done < count:
            n = os.copy_file_range(fa, fb, count - done, soff + done,
                                   doff + done)
            if n == 0:
                break
            done += n
        if done != len(want):
            raise Divergence(f'copy_file_range {a} -> {b} copied {done} '
                             f'bytes, model {len(want)}')
        if want:
            ob.write(doff, want)
        self.check_size(b, fb, ob, 'after copy_file_range')
        self.check_range(b, fb, ob, doff, len(want) + PAGE,
                         'read destination after copy_file_range')
        self.check_range(a, fa, oa, soff, len(want),
                         'read source after copy_file_range')

    def op_rename(self):
        ex = self.existing()
        if not ex:
            return self.op_write()
        r = self.rng
        a = r.choice(ex)
        b = r.choice([n for n in self.names if n != a])
        over = b in self.files
        self.note(f'rename {a} -> {b} '
                  f'({"over an existing file" if over else "new name"})')
        if b in self.fds:
            os.close(self.fds.pop(b)[0])
        os.rename(self.path(a), self.path(b))
        self.files.pop(b, None)
        self.files[b] = self.files.pop(a)
        if a in self.fds:
            self.fds[b] = self.fds.pop(a)
        if os.path.exists(self.path(a)):
            raise Divergence(f'{a} still exists after rename to {b}')
        self.check_whole(b, 'whole-file read after rename')

    def op_fsync(self):
        ex = self.existing()
        if not ex:
            return self.op_write()
        name = self.rng.choice(ex)
        fd, obj = self.fd_for(name)
        data_only = self.rng.random() < 0.5
        self.note(f'{"fdatasync" if data_only else "fsync"} {name}')
        (os.fdatasync if data_only else os.fsync)(fd)
        off = self.rand_off(len(obj.data))
        self.check_range(name, fd, obj, off, 64 * KiB, 'pread after fsync')

    def op_reopen(self):
        ex = self.existing()
        if not ex:
            return self.op_write()
        name = self.rng.choice(ex)
        if name in self.fds:
            self.note(f'close and reopen {name}')
            os.close(self.fds.pop(name)[0])
        else:
            self.note(f'open {name}')
        fd, obj = self.fd_for(name)
        self.check_size(name, fd, obj, 'after reopen')
        off = self.rand_off(len(obj.data))
        self.check_range(name, fd, obj, off, 64 * KiB, 'pread after reopen')

    OPS = [('op_write', 18), ('op_write_template', 10), ('op_write_zero', 3),
           ('op_read', 18), ('op_read_template', 4),
           ('op_share_then_poke', 4), ('op_verify', 4),
           ('op_truncate', 5), ('op_punch', 5), ('op_copy_range', 8),
           ('op_rename', 4), ('op_fsync', 4), ('op_reopen', 5)]

    # -- driver --------------------------------------------------------------

    def run(self, end_time, model_dir):
        names = [o for o, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        self.step = 0
        try:
            self.note('open the starting files')
            for t in range(NTEMPLATES):
                self.tfds.append(os.open(self.path(f't{t}'), os.O_RDONLY))
                self.files[self.names[t]] = Obj(self.templates[t])
            for name in list(self.files):
                self.check_whole(name, 'starting content')
            while (time.monotonic() < end_time or self.step < MIN_OPS) \
                    and (MAX_OPS is None or self.step < MAX_OPS):
                self.step += 1
                getattr(self, self.rng.choices(names, weights)[0])()
                if self.step % VERIFY_EVERY == 0:
                    for name in self.existing():
                        self.note(f'verify {name} whole (periodic)')
                        self.check_whole(name, 'periodic whole-file read')
            ops = self.step
            self.step += 1
            for name in self.existing():
                self.note(f'verify {name} whole (end)')
                self.check_whole(name, 'final whole-file read')
            self.close_all()
            for name in self.names:
                if os.path.exists(os.path.join(model_dir, name)):
                    os.unlink(os.path.join(model_dir, name))
            for name, obj in self.files.items():
                sp.write_file(os.path.join(model_dir, name), obj.data)
            return {'ops': ops}
        except BaseException as e:
            return {'error': f'{type(e).__name__}: {e}',
                    'op': self.step, 'cur': self.cur,
                    'trace': traceback.format_exc(limit=4)
                    if not isinstance(e, Divergence) else '',
                    'last_ops': list(self.log)}

    def close_all(self):
        for fd, _ in self.fds.values():
            os.close(fd)
        self.fds.clear()
        for fd in self.tfds:
            os.close(fd)
        self.tfds.clear()


def start_child(fn):
    """Fork; the child runs fn() and writes its JSON result to a pipe.
    Returns (pid, read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            out = fn()
        except BaseException as e:  # never unwind into the parent's code
            out = {'error': f'{type(e).__name__}: {e}',
                   'trace': traceback.format_exc()}
        try:
            data = json.dumps(out).encode()
            while data:
                data = data[os.write(w, data):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def gather(fds, deadline):
    """Read every pipe to EOF or until the deadline; {fd: bytes} and the
    fds still open (their processes did not finish)."""
    out = {fd: bytearray() for fd in fds}
    open_fds = set(fds)
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(open_fds), [], [], left)
        for fd in ready:
            b = os.read(fd, 65536)
            if b:
                out[fd] += b
            else:
                open_fds.discard(fd)
    return out, open_fds


def thread_stacks(pid):
    """The daemon's thread backtraces (gdb), for a deadlock report."""
    if not pid or not shutil.which('gdb'):
        return '(no gdb)'
    try:
        r = subprocess.run(['gdb', '-p', str(pid), '-batch', '-nx',
                            '-ex', 'thread apply all bt 25'],
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return '(gdb timed out)'
    threads, cur = [], None
    for ln in r.stdout.splitlines():
        if ln.startswith('Thread '):
            cur = [ln]
            threads.append(cur)
        elif ln.startswith('#') and cur is not None:
            cur.append(ln)
    # io_uring's kernel workers show as threads without user stacks.
    keep = ['\n'.join(t) for t in threads if 'iou-wrk' not in t[0]]
    return '\n'.join(keep)[:16000]


def kernel_stack(pid):
    try:
        with open(f'/proc/{pid}/stack') as f:
            return f.read().strip().replace('\n', ' < ')
    except OSError as e:
        return f'({e.strerror})'


class ConcurrentModel:
    """Mixin: one concurrent run on self.backing (set up by the subclass)."""

    def setUp(self):
        sp.require_env()
        env = os.environ.get('SAMEPAGE_SEED')
        self.seed = int(env) if env else random.randrange(1 << 32)
        sys.stderr.write(f'\n  seed {self.seed} (SAMEPAGE_SEED={self.seed} '
                         'to replay)\n')
        self.scratch = tempfile.mkdtemp(prefix='sp-conc-')
        self.addCleanup(shutil.rmtree, self.scratch, True)
        self.model_dir = os.path.join(self.scratch, 'model')
        os.mkdir(self.model_dir)
        self.templates = [template_data(self.seed, i)
                          for i in range(NTEMPLATES)]

    def populate(self, backing, reflink):
        """Templates t0..t2, and per process three files with the
        templates' content: on XFS n0 and n1 are reflinked clones."""
        for i, data in enumerate(self.templates):
            sp.write_file(os.path.join(backing, f't{i}'), data)
        for k in range(NPROCS):
            for i in range(NTEMPLATES):
                dst = os.path.join(backing, proc_names(k)[i])
                if reflink and i < 2:
                    sp.reflink(os.path.join(backing, f't{i}'), dst)
                else:
                    sp.write_file(dst, self.templates[i])
        os.sync()

    def mount(self, backing=None, opts=()):
        m = sp.Mount(opts=(f'cache_size={CACHE}', 'writeback_ms=20') + opts,
                     backing=backing)
        self.addCleanup(m.cleanup)
        return m

    def fail_with(self, msg):
        report = sp.sanitizer_report(self.m.log())
        if report:
            # The cause first: what the processes saw follows from it.
            msg = (f'sanitizer report in the daemon log:\n{report}\n\n'
                   f'what the processes saw:\n{msg}')
        elif self.m.proc is not None and self.m.proc.poll() is not None:
            msg += (f'\n\nthe daemon exited ({self.m.proc.returncode}):\n'
                    f'{self.m.log()[-3000:]}')
        self.fail(f'seed {self.seed} (SAMEPAGE_SEED={self.seed} to replay): '
                  f'{msg}')

    def run_model(self, m, reflink, auto=False):
        self.m = m
        self.populate(m.backing, reflink)
        m.start()
        m.set('pages_to_scan', 100000)
        m.set('sleep_millisecs', 0)
        # Bring the identical starting content in and let the scanner merge
        # it before the processes start breaking the sharing.
        for name in sorted(os.listdir(m.mnt)):
            if not name.startswith('.'):
                sp.read_file(m.path(name))
        m.scan()

        # The starting models; each process replaces its own at the end.
        for k in range(NPROCS):
            for i in range(NTEMPLATES):
                sp.write_file(os.path.join(self.model_dir, proc_names(k)[i]),
                              self.templates[i])
        go_r, go_w = os.pipe()
        kids = {}                     # k -> (pid, read end)
        progress = {}
        for k in RUN_PROCS:
            progress[k] = os.path.join(self.scratch, f'progress{k}')
            pfd = os.open(progress[k], os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                          0o600)

            def child(k=k, pfd=pfd):
                os.close(go_w)
                # Start together: block until the parent has forked all.
                if os.read(go_r, 1) != b'g':
                    return {'error': 'parent went away before the start'}
                w = Worker(m.mnt, k, self.seed, self.templates, pfd)
                return w.run(time.monotonic() + OPS_SECONDS, self.model_dir)
            kids[k] = start_child(child)
            os.close(pfd)
        os.close(go_r)
        t0 = time.monotonic()
        os.write(go_w, b'g' * len(kids))
        os.close(go_w)
        outs, stuck = gather([r for _, r in kids.values()], t0 + DEADLINE_S)
        if stuck:
            self.handle_deadlock(kids, stuck, progress)
        results = {}
        for k, (pid, r) in kids.items():
            os.close(r)
            _, status = os.waitpid(pid, 0)
            try:
                results[k] = json.loads(bytes(outs[r]))
            except ValueError:
                results[k] = {'error': f'no result (wait status {status})'}
        errors = []
        for k, res in results.items():
            if 'error' not in res:
                continue
            last = '\n      '.join(res.get('last_ops', []))
            errors.append(
                f'process {k} (SAMEPAGE_CONC_PROCS={k} alone; its rng: '
                f'random.Random("{self.seed}:proc:{k}")), op '
                f'#{res.get("op")} [{res.get("cur")}]: {res["error"]}\n'
                f'{res.get("trace", "")}'
                f'    last operations:\n      {last}')
        if errors:
            self.fail_with(f'{len(errors)} of {len(kids)} processes failed'
                           '\n\n' + '\n\n'.join(errors))
        ops = {k: res['ops'] for k, res in results.items()}
        sys.stderr.write(f'  operations per process: {ops}\n')

        # Every file, through the mount, with nobody else running.
        want = self.expected_files()
        self.check_tree(m.mnt, want, 'through the mount')
        st = m.stats()
        sys.stderr.write(f'  stats: {st}\n')
        self.assertLessEqual(st['cache_bytes'], CACHE_BYTES, st)
        self.assertGreater(st['full_scans'], 0, f'no scan finished: {st}')
        if auto:
            # Kernel-mode files take no frames: what must have happened
            # is a switch, under load.
            self.assertGreater(st['mode_switches'], 0,
                               f'no file changed its caching mode: {st}')
            self.assertGreater(st['direct_read_pages'], 0, st)
        else:
            self.assertGreater(st['evictions'], 0, f'no eviction ran: {st}')
            self.assertGreater(st['content_merges'] + st['reflink_merges'],
                               0, f'nothing was shared: {st}')
            self.assertGreater(st['cow_breaks'], 0,
                               f'no write broke a shared page: {st}')
        if reflink:
            self.assertGreater(st['reflink_merges'], 0,
                               f'no frame shared by extent: {st}')
        rc = m.stop()
        self.assertEqual(rc, 0, f'daemon exit {rc}:\n{m.log()[-3000:]}')
        self.check_tree(m.backing, want, 'in the backing dir after unmount')

    def expected_files(self):
        want = {f't{i}': bytes(d) for i, d in enumerate(self.templates)}
        for name in os.listdir(self.model_dir):
            want[name] = sp.read_file(os.path.join(self.model_dir, name))
        return want

    def check_tree(self, root, want, where):
        listed = sorted(n for n in os.listdir(root) if not n.startswith('.'))
        if listed != sorted(want):
            self.fail_with(f'{where}: the directory lists {listed}, the '
                           f'models {sorted(want)}')
        bad = []
        for name in sorted(want):
            got = sp.read_file(os.path.join(root, name))
            if got != want[name]:
                bad.append(describe_diff(f'{name} {where}', 0, want[name],
                                         got) + f' (size {len(got)}, model '
                           f'{len(want[name])})')
        if bad:
            self.fail_with(f'{len(bad)} files differ from their models '
                           f'{where}:\n' + '\n'.join(bad))

    def handle_deadlock(self, kids, stuck, progress):
        """Kill what is stuck, collect where it was, fail."""
        now = time.monotonic()
        lines = []
        for k, (pid, r) in kids.items():
            if r not in stuck:
                continue
            with open(progress[k], 'rb') as f:
                cur = f.read().decode(errors='replace').strip()
            ts, _, op = cur.partition(' ')
            try:
                age = f'{now - float(ts):.1f} s ago'
            except ValueError:
                age = '?'
            lines.append(f'process {k} (pid {pid}) stuck in {op} (started '
                         f'{age}); kernel stack: {kernel_stack(pid)}')
        for pid, r in kids.values():
            if r in stuck:
                os.kill(pid, signal.SIGKILL)
        stacks = thread_stacks(self.m.pid)
        self.m.kill9()   # requests already in the daemon end only with it
        for pid, r in kids.values():
            os.close(r)
            os.waitpid(pid, 0)
        self.fail(f'seed {self.seed}: {len(lines)} processes still running '
                  f'{DEADLINE_S:.0f} s after the start: deadlock?\n'
                  + '\n'.join(lines)
                  + f'\n\ndaemon threads:\n{stacks}')


class ConcurrentPlainDir(ConcurrentModel, unittest.TestCase):

    def test_processes_sharing_identical_pages_match_their_models(self):
        m = self.mount()
        self.run_model(m, reflink=False)


class ConcurrentAutoMode(ConcurrentModel, unittest.TestCase):
    # Files start in the kernel's cache, are found to share by their reads
    # and move to shared mode at an open, while other processes keep other
    # files open in either mode.

    def test_processes_across_caching_mode_switches_match_their_models(self):
        m = self.mount(opts=('cache_mode=auto',))
        self.run_model(m, reflink=False, auto=True)


class ConcurrentXfsReflink(ConcurrentModel, unittest.TestCase):

    def test_processes_on_reflinked_xfs_clone_and_match_their_models(self):
        xfs = sp.XfsImage(sp.XfsImage.MIN_MB)
        xfs.__enter__()
        self.addCleanup(xfs.__exit__)
        backing = os.path.join(xfs.dir, 'backing')
        os.mkdir(backing)
        m = self.mount(backing)
        self.run_model(m, reflink=True)



class OneFileWriters(unittest.TestCase):
    """Writes to one file in flight together (O_DIRECT and native AIO, as
    fio's libaio engine does): the daemon applies them side by side. Each
    batch has four writes of one 64 KiB range, each of its own byte (the
    range must then hold one of them whole), and four writes of a quarter
    page each, at random pages after the range, where the batch's writes
    may share a page but not a byte (none may lose another's bytes)."""

    SIZE = 512 * KiB
    RANGE = 64 * KiB          # one FUSE request: applied whole
    RANGE_OFF = 1000          # partial first and last pages
    FIRST_QUARTER_PAGE = (RANGE_OFF + RANGE) // PAGE + 1
    QUARTERS = 4
    ROUNDS = 300

    def setUp(self):
        sp.require_env()
        if not sp.aio_supported():
            self.skipTest(f'no native AIO numbers for {os.uname().machine}')
        env = os.environ.get('SAMEPAGE_SEED')
        self.seed = int(env) if env else random.randrange(1 << 32)

    def check_batches(self, opts):
        m = sp.Mount(opts=opts)
        self.addCleanup(m.cleanup)
        m.start()
        path = m.path('one')
        model = bytearray(self.SIZE)
        sp.write_file(path, model)
        rng = random.Random(self.seed)
        part = PAGE // self.QUARTERS
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        try:
            with sp.Aio(8) as aio:
                for r in range(self.ROUNDS):
                    batch = [(bytes([0xa0 + (r + i) % 4]) * self.RANGE,
                              self.RANGE_OFF) for i in range(4)]
                    for k in range(self.QUARTERS):
                        page = rng.randrange(self.FIRST_QUARTER_PAGE,
                                             self.SIZE // PAGE)
                        batch.append((rng.randbytes(part),
                                      page * PAGE + k * part))
                    res = aio.pwrite_all(fd, batch)
                    self.assertEqual(res, [len(d) for d, _ in batch],
                                     f'seed {self.seed} round {r}')
                    got = os.pread(fd, self.RANGE, self.RANGE_OFF)
                    self.assertEqual(got.count(got[:1]), self.RANGE,
                                     f'seed {self.seed} round {r}: the '
                                     'range holds bytes of several '
                                     f'writes: {set(got)}')
                    for d, off in batch[4:]:
                        model[off:off + part] = d
                        self.assertEqual(os.pread(fd, part, off), d,
                                         f'seed {self.seed} round {r}: '
                                         f'the quarter at {off} lost its '
                                         'write')
        finally:
            os.close(fd)
        skip = self.FIRST_QUARTER_PAGE * PAGE
        got = sp.read_file(path)
        self.assertTrue(got[skip:] == model[skip:],
                        f'seed {self.seed}: the quarters differ from what '
                        'was written')
        m.stop()
        self.assertTrue(sp.read_file(m.bpath('one')) == got,
                        f'seed {self.seed}: the backing file differs')

    def test_writes_in_flight_together_in_shared_mode(self):
        self.check_batches(('cache_mode=shared', 'cache_size=2M',
                            'writeback_ms=20'))

    def test_writes_in_flight_together_in_auto_mode(self):
        self.check_batches(('cache_size=2M', 'cache_mode=auto'))


if __name__ == '__main__':
    sp.main()
