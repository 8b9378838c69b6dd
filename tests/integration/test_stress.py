"""Everything at once, twice: stress-ng file-system stressors, fio with
verification, and processes that write, read, clone, rename and truncate
identical copies and reflinked clones of one file, while the scanner runs
at its highest rate and the cache is small enough to evict all the time.

Asserted: every process ends within its deadline (no deadlock), no data
error anywhere (stress-ng --verify, fio crc32c, our own models, and files
nobody wrote still equal the original: no write leaked into a sharer), the
control interface answers throughout, and the daemon's memory (Pss_Anon) does not keep
growing from the first round to the second (leak check).
"""

import hashlib
import json
import os
import random
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
BASE_SIZE = 4 * MiB
NWORKERS = 3
ROUND_S = 8
# A worker does at least this many operations, however long they take on
# a loaded machine (DEADLINE_S bounds that): a round always exercises it.
MIN_OPS = 20
DEADLINE_S = 90
RSS_GROWTH_MAX = 16 * MiB


def collect_child(pid, r, deadline):
    """The child's result, or None if it missed the deadline (killed)."""
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        return None
    return sp.read_json(r, b'{"error": "no result"}')


def worker(mnt, k, seconds, base):
    """Own copy{k} and ref{k}: write, read back, clone, rename, truncate;
    check that the untouched sharers ro_copy and ro_ref stay equal to
    base. Returns the number of operations and the files' hashes at the
    start and the end, or {'error': ...}."""
    rng = random.Random(k)
    files = {}
    start = {}
    for name in (f'copy{k}', f'ref{k}'):
        with open(os.path.join(mnt, name), 'rb') as f:
            files[name] = bytearray(f.read())
        start[name] = hashlib.sha1(files[name]).hexdigest()
    ro = [os.open(os.path.join(mnt, n), os.O_RDONLY)
          for n in ('ro_copy', 'ro_ref')]
    ops = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end or ops < MIN_OPS:
            name = rng.choice(sorted(files))
            model = files[name]
            path = os.path.join(mnt, name)
            op = rng.random()
            fd = os.open(path, os.O_RDWR)
            try:
                if op < 0.4:
                    off = rng.randrange(len(model) + PAGE)
                    n = rng.choice([1, 100, PAGE, 2 * PAGE + 7, 64 * KiB])
                    data = os.urandom(n)
                    os.pwrite(fd, data, off)
                    if off > len(model):
                        model += bytes(off - len(model))
                    model[off:off + n] = data
                elif op < 0.7:
                    off = rng.randrange(len(model) + 1)
                    n = rng.choice([PAGE, 5000, 128 * KiB])
                    got = sp.pread_all(fd, n, off)
                    if got != model[off:off + n]:
                        return {'error': f'{name}: read {off}+{n} differs '
                                f'from what this process wrote'}
                elif op < 0.8:
                    which = rng.choice(ro)
                    off = rng.randrange(BASE_SIZE // PAGE) * PAGE
                    got = sp.pread_all(which, 64 * KiB, off)
                    if got != base[off:off + 64 * KiB]:
                        return {'error': f'an unwritten sharer changed at '
                                f'{off}: a write leaked through a shared '
                                'page'}
                elif op < 0.85:
                    os.fsync(fd)
                elif op < 0.9:
                    size = rng.randrange(len(model) + 2 * PAGE)
                    os.ftruncate(fd, size)
                    if size < len(model):
                        del model[size:]
                    else:
                        model += bytes(size - len(model))
                elif op < 0.95:
                    # A clone through the mount (copy_file_range), checked
                    # and dropped.
                    clone = os.path.join(mnt, f'clone{k}')
                    cfd = os.open(clone, os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                                  0o644)
                    try:
                        left, off = len(model), 0
                        while left:
                            n = os.copy_file_range(fd, cfd, left, off, off)
                            if n <= 0:
                                break
                            left, off = left - n, off + n
                        os.pwrite(cfd, b'clone', 0)
                        got = sp.pread_all(cfd, len(model) + 1, 0)
                        want = b'clone' + bytes(model[5:])
                        if len(model) >= 5 and got != want:
                            return {'error': f'clone of {name} differs'}
                    finally:
                        os.close(cfd)
                    os.unlink(clone)
                else:
                    tmp = path + '.tmp'
                    os.rename(path, tmp)
                    os.rename(tmp, path)
            finally:
                os.close(fd)
            ops += 1
        for name, model in files.items():
            with open(os.path.join(mnt, name), 'rb') as f:
                if f.read() != model:
                    return {'error': f'{name}: final read differs'}
        return {'ops': ops, 'start': start,
                'end': {n: hashlib.sha1(m).hexdigest()
                        for n, m in files.items()}}
    except OSError as e:
        return {'error': f'{name}: {e}'}
    finally:
        for fd in ro:
            os.close(fd)


class Stress(unittest.TestCase):

    def setUp(self):
        sp.require_env()
        for tool in ('stress-ng', 'fio'):
            if not shutil.which(tool):
                raise unittest.SkipTest(f'{tool} is missing')
        self.scratch = tempfile.mkdtemp(prefix='h-stress-')
        self.addCleanup(shutil.rmtree, self.scratch, True)
        self.xfs = sp.XfsImage(sp.XfsImage.MIN_MB)
        self.xfs.__enter__()
        self.addCleanup(self.xfs.__exit__)
        self.backing = os.path.join(self.xfs.dir, 'backing')
        os.mkdir(self.backing)
        self.base = os.urandom(BASE_SIZE)
        # Identical copies and reflinked clones of one file.
        sp.write_file(os.path.join(self.backing, 'base'), self.base)
        for k in range(NWORKERS):
            sp.write_file(os.path.join(self.backing, f'copy{k}'), self.base)
            sp.reflink(os.path.join(self.backing, 'base'),
                       os.path.join(self.backing, f'ref{k}'))
        sp.write_file(os.path.join(self.backing, 'ro_copy'), self.base)
        sp.reflink(os.path.join(self.backing, 'base'),
                   os.path.join(self.backing, 'ro_ref'))
        self.m = sp.Mount(opts=('cache_size=8M', 'writeback_ms=200'),
                          backing=self.backing)
        self.addCleanup(self.m.cleanup)
        self.m.start()
        self.m.set('pages_to_scan', 100000)
        self.m.set('sleep_millisecs', 0)
        for d in ('sng', 'fio'):
            os.mkdir(self.m.path(d))

    def start_stress_ng(self, r):
        d = self.m.path('sng')
        cmd = ['stress-ng', '--temp-path', d, '--timeout', f'{ROUND_S}s',
               '--verify', '--hdd', '2', '--hdd-bytes', '4M',
               '--rename', '1', '--dentry', '1', '--link', '1',
               '--seek', '1', '--seek-size', '4M']
        log = open(os.path.join(self.scratch, f'stress-ng{r}.log'), 'w')
        p = subprocess.Popen(cmd, cwd=d, stdout=log, stderr=log)
        log.close()
        return p

    def start_fio(self, r):
        cmd = ['fio', '--output-format=json', f'--name=round{r}',
               f'--directory={self.m.path("fio")}', '--rw=randrw',
               '--numjobs=3', '--size=4M', '--bsrange=1k-64k',
               '--ioengine=psync', '--verify=crc32c', '--verify_fatal=1',
               '--do_verify=1', '--verify_backlog=64',
               '--verify_state_save=0', '--loops=4']
        out = open(os.path.join(self.scratch, f'fio{r}.json'), 'w')
        p = subprocess.Popen(cmd, cwd=self.scratch, stdout=out,
                             stderr=subprocess.STDOUT)
        out.close()
        return p

    def wait_proc(self, p, deadline, what):
        try:
            return p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            self.m.kill9()
            self.fail(f'{what} still running {DEADLINE_S} s after the '
                      'round started: deadlock?')

    def one_round(self, r):
        t0 = time.monotonic()
        deadline = t0 + DEADLINE_S
        sng = self.start_stress_ng(r)
        fio = self.start_fio(r)
        kids = [sp.fork_json(worker, self.m.mnt, k, ROUND_S, self.base)
                for k in range(NWORKERS)]
        # The control interface answers while all of that runs.
        slow = []
        while time.monotonic() < t0 + ROUND_S:
            t = time.monotonic()
            self.m.stats()
            if time.monotonic() - t > 5:
                slow.append(time.monotonic() - t)
            time.sleep(0.5)
        results = [collect_child(pid, rd, deadline) for pid, rd in kids]
        rc_sng = self.wait_proc(sng, deadline, 'stress-ng')
        rc_fio = self.wait_proc(fio, deadline, 'fio')
        stuck = [k for k, res in enumerate(results) if res is None]
        if stuck:
            self.m.kill9()
            self.fail(f'round {r}: workers {stuck} missed the deadline')
        for k, res in enumerate(results):
            self.assertNotIn('error', res, f'round {r} worker {k}: {res}')
            # What a worker left is what the next round finds.
            self.assertEqual(res['start'], self.hashes.get(k, res['start']),
                             f'round {r} worker {k}: files changed between '
                             'rounds')
            self.hashes[k] = res['end']
        with open(os.path.join(self.scratch, f'stress-ng{r}.log')) as f:
            sng_log = f.read()
        self.assertEqual(rc_sng, 0, f'round {r}: stress-ng:\n{sng_log}')
        with open(os.path.join(self.scratch, f'fio{r}.json')) as f:
            text = f.read()
        self.assertEqual(rc_fio, 0, f'round {r}: fio:\n{text[-3000:]}')
        jobs = json.loads(text[text.find('{'):])['jobs']
        for j in jobs:
            self.assertEqual(j['error'], 0, f'round {r} fio job: {j}')
        self.assertFalse(slow, f'stats took {slow} s during the load')
        for name in ('ro_copy', 'ro_ref', 'base'):
            self.assertEqual(sp.read_file(self.m.path(name)), self.base,
                             f'round {r}: {name} changed')

    def test_stress_ng_fio_shared_reflinked_writers_max_scan_two_rounds(self):
        self.hashes = {}
        rss = []
        for r in range(2):
            self.one_round(r)
            self.m.scan()
            time.sleep(0.5)
            rss.append(self.m.anon_bytes())
        st = self.m.stats()
        self.assertLessEqual(st['cache_bytes'], 8 * MiB, st)
        self.assertGreater(st['evictions'], 0, st)
        self.assertGreater(st['full_scans'], 2, st)
        if not sp.SANITIZED:
            self.assertLessEqual(
                rss[1] - rss[0], RSS_GROWTH_MAX,
                f'daemon Pss_Anon grew from {rss[0] >> 20} MiB after round 1 to '
                f'{rss[1] >> 20} MiB after round 2 (stats {st})')
        self.assertEqual(self.m.stop(), 0, self.m.log()[-3000:])
        for name in ('ro_copy', 'ro_ref', 'base'):
            self.assertEqual(sp.read_file(os.path.join(self.backing, name)),
                             self.base, f'backing {name}')
        for k, ends in self.hashes.items():
            for name, h in ends.items():
                got = hashlib.sha1(sp.read_file(
                    os.path.join(self.backing, name))).hexdigest()
                self.assertEqual(got, h, f'backing {name} after unmount')


if __name__ == '__main__':
    sp.main()
