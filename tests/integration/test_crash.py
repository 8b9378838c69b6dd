"""The daemon killed with SIGKILL in the middle of a write load.

What fsync acknowledged must survive the crash: a checker process writes
blocks whose content is a function of (file, block), fsyncs every 32
writes and only then logs the blocks as durable; fio runs a verified
random-write load with fsync=32 next to it. After SIGKILL the mount is
made again on the same backing and state directories: the store must open
without complaint, every logged block must read back exactly, and files
served before the crash must be served unchanged.
"""

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 4096
FILE_BLOCKS = 512             # 2 MiB per checker file
FSYNC_EVERY = 32


def block_content(fileno, block):
    """The only content block `block` of checker file `fileno` may have."""
    head = b'chk %6d %8d|' % (fileno, block)
    body = hashlib.sha256(head).digest() * (BLOCK // 32)
    return head + body[len(head):]


def checker(mnt, logpath, seed):
    """Child process: write checker files until the mount dies. Each line
    of the log names a block that an fsync acknowledged."""
    rng = random.Random(seed)
    fileno = 0
    with open(logpath, 'w', buffering=1) as log:
        try:
            while True:
                fd = os.open(os.path.join(mnt, 'chk', f'c{fileno}'),
                             os.O_WRONLY | os.O_CREAT, 0o644)
                order = list(range(FILE_BLOCKS))
                rng.shuffle(order)
                pending = []
                for b in order:
                    os.pwrite(fd, block_content(fileno, b), b * BLOCK)
                    pending.append(b)
                    if len(pending) == FSYNC_EVERY:
                        os.fsync(fd)
                        log.write(''.join(f'{fileno} {p}\n'
                                          for p in pending))
                        pending = []
                os.close(fd)
                fileno += 1
        except OSError:
            # The daemon is gone (ENOTCONN): what was logged is the
            # contract.
            return 0


def fork_checker(mnt, logpath, seed):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = checker(mnt, logpath, seed)
        finally:
            os._exit(code)
    return pid


def wait_pid(pid, timeout):
    """Exit status of pid, or None after SIGKILLing it at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def fio_load(mnt, cwd):
    args = ['fio', '--name=load', f'--directory={os.path.join(mnt, "fio")}',
            '--rw=randwrite', '--bs=4k', '--size=8M', '--numjobs=2',
            '--ioengine=psync', f'--fsync={FSYNC_EVERY}', '--verify=crc32c',
            '--do_verify=0', '--time_based', '--runtime=60',
            '--verify_state_save=0']
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def durable_blocks(logpath):
    out = []
    with open(logpath) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:  # the last line may be cut by the kill
                out.append((int(parts[0]), int(parts[1])))
    return out


class KillDuringWrites(unittest.TestCase):
    rounds = 2

    def setUp(self):
        sp.require_env()
        if not shutil.which('fio'):
            raise unittest.SkipTest('fio is missing')
        self.scratch = tempfile.mkdtemp(prefix='h-crash-')
        self.addCleanup(shutil.rmtree, self.scratch, True)

    def new_log_lines(self, m, since):
        return [ln for ln in m.log()[since:].splitlines() if ln.strip()]

    def test_kill9_during_fsync32_writes_fsynced_blocks_survive(self):
        m = sp.Mount(opts=('cache_size=32M', 'writeback_ms=1000'))
        self.addCleanup(m.cleanup)
        # Served before the crash: written through the mount and synced,
        # and copies placed in the backing directory and read (so that
        # the store holds their fingerprints).
        before = {'synced': os.urandom(3 * MiB + 5)}
        copy = os.urandom(2 * MiB)
        for i in range(4):
            sp.write_file(m.bpath(f'copy{i}'), copy)
            before[f'copy{i}'] = copy
        m.start()
        with open(m.path('synced'), 'wb') as f:
            f.write(before['synced'])
            f.flush()
            os.fsync(f.fileno())
        for name, data in before.items():
            self.assertEqual(sp.read_file(m.path(name)), data, name)
        os.mkdir(m.path('chk'))
        os.mkdir(m.path('fio'))

        rng = random.Random(7)
        for r in range(self.rounds):
            logpath = os.path.join(self.scratch, f'durable{r}.log')
            log_at = len(m.log())
            fio = fio_load(m.mnt, self.scratch)
            pid = fork_checker(m.mnt, logpath, r)
            try:
                # Let the load run into writeback, then crash.
                time.sleep(1.5 + rng.random())
                self.assertIsNone(fio.poll(), 'fio ended before the crash')
                m.kill9()
            finally:
                code = wait_pid(pid, 30)
                try:
                    fio.wait(30)
                except subprocess.TimeoutExpired:
                    fio.kill()
                    fio.wait()
            self.assertIsNotNone(code, f'round {r}: the checker hung after '
                                 'the daemon was killed')
            durable = durable_blocks(logpath)
            self.assertGreater(len(durable), 4 * FSYNC_EVERY,
                               f'round {r}: the checker made no progress')

            m.start()
            lines = self.new_log_lines(m, log_at)
            odd = [ln for ln in lines if 'mounted' not in ln]
            self.assertFalse(odd, f'round {r}: the store or the mount '
                             f'complained after the crash: {odd}')
            self.verify_durable(m, durable, f'round {r}')
            for name, data in before.items():
                self.assertEqual(sp.read_file(m.path(name)), data,
                                 f'round {r}: {name} changed by the crash')
            # Files of the interrupted load read to the end without error.
            for d in ('fio', 'chk'):
                for name in os.listdir(m.path(d)):
                    sp.read_file(m.path(d, name))
            # Start the next round from empty checker files.
            for name in os.listdir(m.path('chk')):
                os.unlink(m.path('chk', name))

        # After the crashes the mount still runs a verified load cleanly.
        res = sp.fio(['--name=after', f'--directory={m.path("fio")}',
                      '--rw=randwrite', '--bs=4k', '--size=4M',
                      '--ioengine=psync', '--fsync=32', '--verify=crc32c',
                      '--do_verify=1', '--verify_fatal=1',
                      '--verify_state_save=0'], self.scratch)
        self.assertEqual(res['jobs'][0]['error'], 0, res['jobs'][0])
        self.assertEqual(m.stop(), 0, m.log()[-3000:])

    def verify_durable(self, m, durable, what):
        by_file = {}
        for fileno, block in durable:
            by_file.setdefault(fileno, []).append(block)
        bad = []
        for fileno, blocks in sorted(by_file.items()):
            fd = os.open(m.path('chk', f'c{fileno}'), os.O_RDONLY)
            try:
                for b in blocks:
                    got = os.pread(fd, BLOCK, b * BLOCK)
                    if got != block_content(fileno, b):
                        kind = ('zeros' if got == bytes(len(got)) else
                                f'{len(got)} bytes of other data')
                        bad.append(f'c{fileno} block {b}: {kind}')
            finally:
                os.close(fd)
        self.assertFalse(bad, f'{what}: {len(bad)} of {len(durable)} '
                         f'fsynced blocks lost, first {bad[:5]}')


if __name__ == '__main__':
    sp.main()
