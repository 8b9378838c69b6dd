"""fio with data verification on a mount.

Four jobs, four files each, random mixed reads and writes; every block fio
writes carries a crc32c header that fio checks when it reads the block back
(interleaved with verify_backlog, and again at the end). Run with psync and
with libaio + O_DIRECT at iodepth 8, on a roomy cache and on an 8 MiB one
that forces eviction and writeback while the jobs run.
"""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

MiB = 1 << 20
NJOBS = 4
NRFILES = 4
FILESIZE = 4 * MiB


def job_args(directory, name, engine_args):
    return [f'--name={name}', f'--directory={directory}',
            '--rw=randrw', '--rwmixread=50',
            f'--numjobs={NJOBS}', f'--nrfiles={NRFILES}',
            f'--filesize={FILESIZE}', f'--size={NRFILES * FILESIZE}',
            '--verify=crc32c', '--verify_fatal=1', '--do_verify=1',
            '--verify_backlog=256', '--verify_state_save=0',
            ] + engine_args


def persist_args(directory):
    """Random writes only: fio can replay them later with --verify_only,
    which it cannot do for a randrw mix."""
    return ['--name=persist', f'--directory={directory}', '--rw=randwrite',
            f'--numjobs={NJOBS}', f'--nrfiles={NRFILES}',
            f'--filesize={FILESIZE}', f'--size={NRFILES * FILESIZE}',
            '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0',
            '--ioengine=psync', '--bs=4k']


PSYNC = ['--ioengine=psync', '--bsrange=1k-32k']
LIBAIO = ['--ioengine=libaio', '--direct=1', '--iodepth=8', '--bs=4k']


class FioMixin:
    def scratch(self):
        if not shutil.which('fio'):
            self.skipTest('fio is missing')
        # fio writes its state files into cwd: keep them off the mount.
        cwd = tempfile.mkdtemp(prefix='sp-fio-')
        self.addCleanup(shutil.rmtree, cwd, ignore_errors=True)
        return cwd

    def check_jobs(self, res):
        jobs = res['jobs']
        self.assertEqual(len(jobs), NJOBS)
        for j in jobs:
            self.assertEqual(j['error'], 0, f'fio job {j["jobname"]}: {j}')
        return jobs

    def run_fio(self, name, engine_args):
        res = sp.fio(job_args(self.m.mnt, name, engine_args), self.scratch())
        jobs = res['jobs']
        self.assertEqual(len(jobs), NJOBS)
        for j in jobs:
            self.assertEqual(j['error'], 0, f'fio job {j["jobname"]}: {j}')
            self.assertGreater(j['write']['io_bytes'], 0)
            # the verify reads are counted as reads: at least all written
            self.assertGreaterEqual(j['read']['io_bytes'],
                                    j['write']['io_bytes'])
        files = sorted(os.listdir(self.m.mnt))
        self.assertEqual(len([f for f in files if f.startswith(name)]),
                         NJOBS * NRFILES, files)
        return res


class FioDefaultCache(FioMixin, sp.MountTestCase):
    mount_opts = ('cache_size=64M',)

    def test_fio_psync_randrw_4jobs_verify_crc32c(self):
        self.run_fio('psync', PSYNC)

    def test_fio_libaio_direct_iodepth8_randrw_verify_crc32c(self):
        self.run_fio('aio', LIBAIO)


class FioSmallCache(FioMixin, sp.MountTestCase):
    # 64 MiB of files through 8 MiB of cache.
    mount_opts = ('cache_size=8M', 'writeback_ms=100')

    def test_fio_psync_and_libaio_verify_through_8m_cache(self):
        self.run_fio('psync', PSYNC)
        self.run_fio('aio', LIBAIO)
        st = self.m.stats()
        self.assertGreater(st['evictions'], 0, st)
        self.assertLessEqual(st['cache_bytes'], 8 * MiB, st)

    def test_fio_randwrite_8m_cache_then_unmount_backing_verifies(self):
        cwd = self.scratch()
        for j in self.check_jobs(sp.fio(persist_args(self.m.mnt)
                                        + ['--do_verify=1'], cwd)):
            self.assertEqual(j['write']['io_bytes'], NRFILES * FILESIZE)
        self.assertEqual(self.m.stop(), 0, self.m.log())
        # The same workload replayed on the backing directory, without the
        # mount: every block fio wrote must be on disk.
        self.check_jobs(sp.fio(persist_args(self.m.backing)
                               + ['--verify_only'], cwd))


if __name__ == '__main__':
    sp.main()
