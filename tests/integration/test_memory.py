"""The daemon's memory figures are all of it.

The frames the daemon says hold memory (cache_bytes in use,
free_frame_bytes free) are what the kernel finds resident in its frame
arena, and metadata_bytes is the rest of its anonymous memory (Pss_Anon),
within 10 % + 8 MiB, for identical copies (merged by content) and
reflinked clones (by extent) alike.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

MiB = 1 << 20


def pss_anon(pid):
    with open(f'/proc/{pid}/smaps_rollup') as f:
        for line in f:
            if line.startswith('Pss_Anon:'):
                return int(line.split()[1]) * 1024
    raise AssertionError('no Pss_Anon')


def arena_rss(pid):
    """Rss of the frame arena: the largest anonymous mapping."""
    best = (0, 0)
    size = rss = 0
    anon = False
    with open(f'/proc/{pid}/smaps') as f:
        for line in f:
            head = line.split()
            if '-' in head[0] and len(head) >= 5:
                if anon and size > best[0]:
                    best = (size, rss)
                anon = len(head) == 5
            elif head[0] == 'Size:':
                size = int(head[1]) * 1024
            elif head[0] == 'Rss:':
                rss = int(head[1]) * 1024
    if anon and size > best[0]:
        best = (size, rss)
    return best[1]


def read_all(path):
    with open(path, 'rb', buffering=0) as f:
        while f.read(MiB):
            pass


class Accounting:
    def check(self, m):
        st = m.stats()
        frames = arena_rss(m.pid)
        anon = pss_anon(m.pid)
        self.assertLessEqual(abs(frames - st['cache_bytes'] -
                                 st['free_frame_bytes']), MiB,
                             f'frame arena holds {frames >> 10} KiB, '
                             f'stats say {st["cache_bytes"] >> 10} + '
                             f'{st["free_frame_bytes"] >> 10} KiB')
        rest = anon - st['cache_bytes'] - st['free_frame_bytes']
        meta = st['metadata_bytes']
        print(f'Pss_Anon {anon / MiB:.1f} MiB = cache {st["cache_bytes"] / MiB:.1f}'
              f' + free frames {st["free_frame_bytes"] / MiB:.1f} + rest '
              f'{rest / MiB:.1f}; metadata_bytes {meta / MiB:.1f} MiB',
              file=sys.stderr)
        self.assertLessEqual(abs(rest - meta), 0.1 * rest + 8 * MiB,
                             f'Pss_Anon {anon >> 20} MiB, cache '
                             f'{st["cache_bytes"] >> 20} MiB, free frames '
                             f'{st["free_frame_bytes"] >> 20} MiB: rest '
                             f'{rest / MiB:.1f} MiB, metadata_bytes '
                             f'{meta / MiB:.1f} MiB')
        return st


class TestCopies(Accounting, sp.MountTestCase):
    mount_opts = ('cache_size=256M',)

    def setUp(self):
        if sp.SANITIZED:
            raise unittest.SkipTest('sanitizers add memory of their own')
        super().setUp()

    def test_metadata_agrees_with_anon_memory_8_copies(self):
        data = os.urandom(32 * MiB)
        for i in range(8):
            sp.write_file(os.path.join(self.m.backing, f'c{i}'), data)
        for i in range(8):
            read_all(self.m.path(f'c{i}'))
        st = self.check(self.m)
        self.assertGreater(st['pages_sharing'], 6 * 8192, st)


class TestClones(Accounting, unittest.TestCase):

    def setUp(self):
        sp.require_env()
        if sp.SANITIZED:
            raise unittest.SkipTest('sanitizers add memory of their own')
        self.xfs = sp.XfsImage()
        self.xfs.__enter__()
        self.addCleanup(self.xfs.__exit__)

    def test_metadata_agrees_with_anon_memory_8_clones(self):
        b = os.path.join(self.xfs.dir, 'b')
        os.mkdir(b)
        with open(os.path.join(b, 'c0'), 'wb') as f:
            f.write(os.urandom(32 * MiB))
            os.fsync(f.fileno())
        for i in range(1, 8):
            sp.reflink(os.path.join(b, 'c0'), os.path.join(b, f'c{i}'))
        m = sp.Mount(opts=('cache_size=256M',), backing=b)
        m.start()
        self.addCleanup(m.cleanup)
        for i in range(8):
            read_all(m.path(f'c{i}'))
        st = self.check(m)
        self.assertGreater(st['reflink_merges'], 6 * 8192, st)


if __name__ == '__main__':
    sp.main()
