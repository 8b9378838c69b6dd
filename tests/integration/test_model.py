"""Random operations on a mount, checked against an in-memory model.

A seeded generator runs a few thousand operations over eight file names:
writes at random offsets and sizes (unaligned, page-crossing, single bytes,
past EOF), reads, truncates, hole punches, fsync, close and reopen, rename
over other files, unlink and recreate, I/O on unlinked open files,
copy_file_range and O_APPEND writes. After every operation the touched files
are read back whole and compared with the model (bytearrays); at the end the
mount is stopped and the backing files must equal the model.

Set SAMEPAGE_SEED to replay a failure (the seed is in every failure message)
and SAMEPAGE_MODEL_OPS to change the number of operations.
"""

import collections
import mmap
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

KiB = 1 << 10
PAGE = 4096
NAMES = [f'f{i}' for i in range(8)]
MAX_OFF = 160 * KiB        # keeps files small so every check reads them whole
MAX_OFF_TINY = 384 * KiB   # eight such files overflow a 1 MiB cache
MAX_ORPHANS = 3


def read_fd(fd):
    out = bytearray()
    while True:
        b = os.pread(fd, 256 * KiB, len(out))
        if not b:
            return bytes(out)
        out += b


class Obj(sp.FileModel):
    """One file (inode) of the model."""
    _ids = 0

    def __init__(self):
        super().__init__()
        Obj._ids += 1
        self.id = Obj._ids


class ModelRun:
    def __init__(self, m, seed, nops, want_stats=False, max_off=MAX_OFF,
                 map_ops=False):
        self.m = m
        # Shared maps, as fsx does them: only where the kernel caches the
        # files (cache_mode=kernel); direct I/O files refuse them.
        self.ops = self.OPS + (self.MAP_OPS if map_ops else [])
        self.max_off = max_off
        self.want_stats = want_stats
        self.seed = seed
        self.nops = nops
        self.rng = random.Random(seed)
        self.files = {}        # name -> Obj
        self.fds = {}          # name -> (fd, Obj): an O_RDWR fd on that name
        self.orphans = []      # (fd, Obj) of unlinked files still open
        self.log = collections.deque(maxlen=25)
        self.step = 0
        self.final_stats = {}

    # -- helpers -----------------------------------------------------------

    def path(self, name):
        return self.m.path(name)

    def fd_for(self, name):
        """An open O_RDWR fd for name, creating the file if needed."""
        if name in self.fds:
            return self.fds[name][0]
        fd = os.open(self.path(name), os.O_RDWR | os.O_CREAT, 0o644)
        obj = self.files.setdefault(name, Obj())
        self.fds[name] = (fd, obj)
        return fd

    def existing(self):
        return [n for n in NAMES if n in self.files]

    def rand_len(self):
        r = self.rng
        return r.choice([1, r.randint(1, 100), PAGE, 2 * PAGE,
                         r.randint(1, 3 * PAGE), r.randint(PAGE, 64 * KiB),
                         r.randint(1, 300)])

    def rand_off(self, size):
        r = self.rng
        k = r.randrange(self.max_off // PAGE)
        return r.choice([
            k * PAGE,                              # aligned
            max(0, k * PAGE - r.randint(1, 50)),   # just before a boundary
            k * PAGE + r.randint(1, 50),           # just past one
            r.randint(0, max(size, 1)),            # inside the file
            size,                                  # at EOF
            r.randint(0, self.max_off)])           # anywhere, maybe a gap

    def verify(self, name, fd=None, obj=None):
        if fd is None:
            fd, obj = self.fds[name]
        self.check_obj(fd, obj, name)

    def check_obj(self, fd, obj, what):
        size = os.fstat(fd).st_size
        if size != len(obj.data):
            raise AssertionError(f'{what}: size {size}, model {len(obj.data)}')
        got = read_fd(fd)
        if got != obj.data:
            raise AssertionError(f'{what}: content differs from the model '
                                 f'at byte {sp.first_diff(got, obj.data)} '
                                 f'(got {len(got)} bytes, model '
                                 f'{len(obj.data)})')

    def verify_all(self):
        listed = sorted(n for n in os.listdir(self.m.mnt)
                        if not n.startswith('.'))
        want = sorted(self.files)
        if listed != want:
            raise AssertionError(f'directory lists {listed}, model {want}')
        for name, obj in self.files.items():
            fd = os.open(self.path(name), os.O_RDONLY)
            try:
                self.check_obj(fd, obj, name + ' (fresh fd)')
            finally:
                os.close(fd)
        for i, (fd, obj) in enumerate(self.orphans):
            self.check_obj(fd, obj, f'orphan {i}')

    # -- operations --------------------------------------------------------

    def op_write(self):
        name = self.rng.choice(NAMES)
        fd = self.fd_for(name)
        obj = self.fds[name][1]
        off = self.rand_off(len(obj.data))
        data = os.urandom(self.rand_len())
        self.log.append(f'write {name} {off}+{len(data)}')
        n = os.pwrite(fd, data, off)
        if n != len(data):
            raise AssertionError(f'short write {n} of {len(data)}')
        obj.write(off, data)
        self.verify(name)

    def op_read(self):
        name = self.rng.choice(NAMES)
        fd = self.fd_for(name)
        obj = self.fds[name][1]
        off = self.rand_off(len(obj.data))
        n = self.rand_len()
        self.log.append(f'read {name} {off}+{n}')
        got = os.pread(fd, n, off)
        want = bytes(obj.data[off:off + n])
        # A regular file's pread is short only at EOF.
        if got != want:
            raise AssertionError(f'pread {name} {off}+{n}: got {len(got)} '
                                 f'bytes, model {len(want)}, equal prefix '
                                 f'{got == want[:len(got)]}')

    def op_truncate(self):
        name = self.rng.choice(NAMES)
        fd = self.fd_for(name)
        obj = self.fds[name][1]
        r = self.rng
        size = r.choice([0, r.randint(0, max(len(obj.data), 1)),
                         r.randrange(self.max_off // PAGE) * PAGE,
                         r.randint(0, self.max_off)])
        by_path = r.random() < 0.3
        self.log.append(f'truncate {name} {size} by_path={by_path}')
        if by_path:
            os.truncate(self.path(name), size)
        else:
            os.ftruncate(fd, size)
        obj.truncate(size)
        self.verify(name)

    def op_punch(self):
        name = self.rng.choice(NAMES)
        fd = self.fd_for(name)
        obj = self.fds[name][1]
        off = self.rand_off(len(obj.data))
        length = self.rand_len()
        self.log.append(f'punch {name} {off}+{length}')
        sp.punch_hole(fd, off, length)
        obj.punch(off, length)
        self.verify(name)

    def op_fsync(self):
        name = self.rng.choice(NAMES)
        fd = self.fd_for(name)
        datasync = self.rng.random() < 0.5
        self.log.append(f'fsync {name} datasync={datasync}')
        (os.fdatasync if datasync else os.fsync)(fd)
        self.verify(name)

    def op_reopen(self):
        name = self.rng.choice(NAMES)
        if name in self.fds:
            self.log.append(f'close {name}')
            os.close(self.fds.pop(name)[0])
        self.log.append(f'open {name}')
        self.fd_for(name)
        self.verify(name)

    def op_recreate(self):
        """open(O_CREAT | O_TRUNC): same inode if it exists, emptied."""
        name = self.rng.choice(NAMES)
        self.log.append(f'open O_TRUNC {name}')
        fd = os.open(self.path(name), os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                     0o644)
        obj = self.files.setdefault(name, Obj())
        obj.truncate(0)
        if name in self.fds:
            os.close(self.fds[name][0])
        self.fds[name] = (fd, obj)
        self.verify(name)

    def _orphan(self, name):
        if name in self.fds:
            self.orphans.append(self.fds.pop(name))
            while len(self.orphans) > MAX_ORPHANS:
                fd, _ = self.orphans.pop(0)
                self.log.append('close oldest orphan')
                os.close(fd)

    def op_rename(self):
        ex = self.existing()
        if not ex:
            return self.op_write()
        a = self.rng.choice(ex)
        b = self.rng.choice([n for n in NAMES if n != a])
        self.log.append(f'rename {a} {b} (target exists: {b in self.files})')
        os.rename(self.path(a), self.path(b))
        if b in self.files:
            self._orphan(b)
        self.files[b] = self.files.pop(a)
        if a in self.fds:
            self.fds[b] = self.fds.pop(a)
        fd = os.open(self.path(b), os.O_RDONLY)
        try:
            self.check_obj(fd, self.files[b], f'{b} after rename')
        finally:
            os.close(fd)
        if os.path.exists(self.path(a)):
            raise AssertionError(f'{a} still exists after rename')

    def op_unlink(self):
        ex = self.existing()
        if not ex:
            return self.op_write()
        a = self.rng.choice(ex)
        self.log.append(f'unlink {a} (open: {a in self.fds})')
        os.unlink(self.path(a))
        self._orphan(a)
        del self.files[a]
        if os.path.exists(self.path(a)):
            raise AssertionError(f'{a} still exists after unlink')

    def op_orphan_io(self):
        if not self.orphans:
            return self.op_write()
        i = self.rng.randrange(len(self.orphans))
        fd, obj = self.orphans[i]
        off = self.rand_off(len(obj.data))
        data = os.urandom(self.rand_len())
        self.log.append(f'write orphan {i} {off}+{len(data)}')
        os.pwrite(fd, data, off)
        obj.write(off, data)
        self.check_obj(fd, obj, f'orphan {i}')
        if self.rng.random() < 0.3:
            self.log.append(f'close orphan {i}')
            os.close(fd)
            del self.orphans[i]

    def op_copy_range(self):
        ex = self.existing()
        if len(ex) < 2:
            return self.op_write()
        a, b = self.rng.sample(ex, 2)
        fa, fb = self.fd_for(a), self.fd_for(b)
        oa, ob = self.fds[a][1], self.fds[b][1]
        r = self.rng
        src_off = r.choice([r.randrange(self.max_off // PAGE) * PAGE,
                            r.randint(0, max(len(oa.data), 1))])
        count = self.rand_len()
        dst_off = self.rand_off(len(ob.data))
        self.log.append(f'copy_file_range {a} {src_off}+{count} -> {b} '
                        f'{dst_off}')
        done = 0
        while done < count:
            n = os.copy_file_range(fa, fb, count - done, src_off + done,
                                   dst_off + done)
            if n == 0:
                break
            done += n
        want = bytes(oa.data[src_off:src_off + count])
        if done != len(want):
            raise AssertionError(f'copy_file_range copied {done}, model '
                                 f'{len(want)}')
        if want:
            ob.write(dst_off, want)
        self.verify(a)
        self.verify(b)

    def op_append(self):
        name = self.rng.choice(NAMES)
        data = os.urandom(self.rand_len())
        self.log.append(f'append {name} {len(data)}')
        fd = os.open(self.path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o644)
        try:
            n = os.write(fd, data)
        finally:
            os.close(fd)
        if n != len(data):
            raise AssertionError(f'short append {n} of {len(data)}')
        obj = self.files.setdefault(name, Obj())
        obj.data += data
        self.fd_for(name)
        self.verify(name)

    def _map_range(self, name):
        """fd, model, offset and length of a range inside the file (a
        map cannot grow it), or None for an empty file."""
        fd = self.fd_for(name)
        obj = self.fds[name][1]
        if not obj.data:
            return None
        off = self.rng.randrange(len(obj.data))
        n = min(self.rand_len(), len(obj.data) - off)
        return fd, obj, off, n

    def op_mapwrite(self):
        name = self.rng.choice(NAMES)
        got = self._map_range(name)
        if not got:
            return self.op_write()
        fd, obj, off, n = got
        data = os.urandom(n)
        self.log.append(f'mapwrite {name} {off}+{n}')
        mm = mmap.mmap(fd, len(obj.data), mmap.MAP_SHARED)
        try:
            mm[off:off + n] = data
            if self.rng.random() < 0.5:
                mm.flush()
        finally:
            mm.close()
        obj.write(off, data)
        self.verify(name)

    def op_mapread(self):
        name = self.rng.choice(NAMES)
        got = self._map_range(name)
        if not got:
            return self.op_read()
        fd, obj, off, n = got
        self.log.append(f'mapread {name} {off}+{n}')
        mm = mmap.mmap(fd, len(obj.data), mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            data = mm[off:off + n]
        finally:
            mm.close()
        if data != bytes(obj.data[off:off + n]):
            raise AssertionError(f'mapread {name} {off}+{n} differs from '
                                 f'the model at byte '
                                 f'{sp.first_diff(data, obj.data[off:])}')

    MAP_OPS = [('op_mapwrite', 6), ('op_mapread', 4)]

    OPS = [('op_write', 24), ('op_read', 14), ('op_truncate', 6),
           ('op_punch', 6), ('op_fsync', 5), ('op_reopen', 6),
           ('op_recreate', 2), ('op_rename', 4), ('op_unlink', 3),
           ('op_orphan_io', 3), ('op_copy_range', 7), ('op_append', 7)]

    # -- driver ------------------------------------------------------------

    def prefill(self):
        """Every name starts max_off bytes long, so that the files
        outgrow a small cache from the first operation on."""
        for name in NAMES:
            fd = self.fd_for(name)
            data = os.urandom(self.max_off)
            self.log.append(f'prefill {name} {len(data)}')
            os.pwrite(fd, data, 0)
            self.fds[name][1].write(0, data)
            self.verify(name)

    def run(self, prefill=False):
        names = [o for o, _ in self.ops]
        weights = [w for _, w in self.ops]
        try:
            if prefill:
                self.prefill()
            for self.step in range(self.nops):
                getattr(self, self.rng.choices(names, weights)[0])()
                if self.step % 250 == 249:
                    self.log.append('verify all')
                    self.verify_all()
            self.log.append('verify all (end)')
            self.verify_all()
            self.close_all()
            if self.want_stats:
                self.final_stats = self.m.stats()
            self.log.append('unmount')
            rc = self.m.stop()
            if rc != 0:
                raise AssertionError(f'daemon exit code {rc}:\n{self.m.log()}')
            self.check_backing()
        except (AssertionError, OSError) as e:
            self.close_all()
            last = '\n  '.join(self.log)
            raise AssertionError(
                f'seed {self.seed} (SAMEPAGE_SEED={self.seed} to replay), op '
                f'#{self.step}: {e!r}\nlast operations:\n  {last}') from e

    def close_all(self):
        for fd, _ in list(self.fds.values()) + self.orphans:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        self.orphans.clear()

    def check_backing(self):
        listed = sorted(n for n in os.listdir(self.m.backing)
                        if not n.startswith('.'))
        want = sorted(self.files)
        if listed != want:
            raise AssertionError(f'backing dir lists {listed}, model {want}')
        for name, obj in self.files.items():
            with open(self.m.bpath(name), 'rb') as f:
                got = f.read()
            if got != obj.data:
                raise AssertionError(
                    f'backing {name} differs from the model at byte '
                    f'{sp.first_diff(got, obj.data)} (got {len(got)} bytes, '
                    f'model {len(obj.data)})')


def _seed():
    env = os.environ.get('SAMEPAGE_SEED')
    return int(env) if env else random.randrange(1 << 32)


def _nops(default):
    env = os.environ.get('SAMEPAGE_MODEL_OPS')
    return int(env) if env else default


class RandomOpsDefaultCache(sp.MountTestCase):
    mount_opts = ('cache_size=64M',)

    def test_random_ops_match_model_and_backing(self):
        seed = _seed()
        sys.stderr.write(f'\n  seed {seed}\n')
        ModelRun(self.m, seed, _nops(3000)).run()


class RandomOpsTinyCache(sp.MountTestCase):
    # 256 frames for ~3 MiB of files and 5 ms writeback: eviction and
    # writeback run all the time under the operations.
    mount_opts = ('cache_size=1M', 'writeback_ms=5')

    def test_random_ops_1m_cache_constant_eviction_and_writeback(self):
        seed = _seed()
        sys.stderr.write(f'\n  seed {seed}\n')
        run = ModelRun(self.m, seed, _nops(2000), want_stats=True,
                       max_off=MAX_OFF_TINY)
        run.run(prefill=True)
        # The run must really have worked under the tiny budget.
        st = run.final_stats
        self.assertGreater(st['evictions'], 0, st)
        self.assertGreater(st['backing_write_bytes'], 0, st)
        self.assertLessEqual(st['cache_bytes'], 1 << 20, st)


class RandomOpsKernelMode(sp.MountTestCase):
    # The kernel caches every file: its pages (shared maps too, as fsx
    # drives them), our write-through and the frames of clones must agree
    # after every operation.
    mount_opts = ('cache_size=64M', 'cache_mode=kernel')

    def test_random_ops_kernel_mode(self):
        seed = _seed()
        sys.stderr.write(f'\n  seed {seed}\n')
        run = ModelRun(self.m, seed, _nops(2000), want_stats=True,
                       map_ops=True)
        run.run()
        self.assertGreater(run.final_stats['direct_read_pages'], 0,
                           run.final_stats)


class RandomOpsAutoMode(sp.MountTestCase):
    # Files start in kernel mode; copies made by copy_file_range are found
    # by their reads and move to shared mode at their next open, while a
    # tiny cache evicts and writes back all the time.
    mount_opts = ('cache_size=1M', 'writeback_ms=5', 'cache_mode=auto')

    def test_random_ops_auto_mode_switches(self):
        seed = _seed()
        sys.stderr.write(f'\n  seed {seed}\n')
        run = ModelRun(self.m, seed, _nops(2000), want_stats=True,
                       max_off=MAX_OFF_TINY)
        run.run(prefill=True)


if __name__ == '__main__':
    sp.main()
