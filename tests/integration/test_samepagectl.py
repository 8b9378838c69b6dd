"""samepagectl against real mounts: every command, its output formats and
its errors.

Eight identical copies of a file are read through the mount and the
counters must say so (pages_sharing about 7 x the pages of one copy), in
the human view, JSON, Prometheus text and the per-file report. The error
paths are tested as seriously: a path that is not a samepage mount, one
that does not exist, usage errors (exit 2), a non-root user who may not
change settings, and a daemon that does not answer (SIGSTOPped), which
must cost a timeout and a message, never a hang.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sp  # noqa: E402

PAGE = 4096
NPAGES = 256                  # pages of one copy (1 MiB)
NCOPIES = 8

# The counters DESIGN.md promises, with their JSON key names.
DOCUMENTED = {
    'pages_shared', 'pages_sharing', 'pages_unshared', 'pages_volatile',
    'full_scans', 'cache_bytes', 'cache_limit_bytes', 'metadata_bytes',
    'reflink_merges', 'content_merges', 'zero_pages', 'cow_breaks',
    'hashes_computed', 'backing_read_bytes', 'backing_write_bytes',
    'evictions',
}
GAUGES = {
    'cache_bytes', 'cache_limit_bytes', 'metadata_bytes', 'pages_shared',
    'pages_sharing', 'pages_unshared', 'pages_volatile', 'zero_pages',
    'frames_dirty', 'files_cached', 'general_profit', 'stable_chains',
    'files_kept', 'uring_fallbacks', 'free_frame_bytes', 'store_files',
    'store_pages', 'store_distinct', 'store_bytes', 'store_paused',
    'files_kernel_mode', 'files_shared_mode',
}
# What persistence reports (the state store's counters).
STORE_COUNTERS = {
    'digests_computed', 'store_hits', 'store_merges', 'store_files',
    'store_pages', 'store_distinct', 'store_bytes', 'store_paused',
    'store_queue_full',
}
KNOBS = {'run', 'pages_to_scan', 'sleep_millisecs', 'max_page_sharing',
         'use_zero_pages', 'smart_scan', 'cache_size'}

METRIC_NAME = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*$')
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)'
                    r'(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?'
                    r' (\S+)(?: (-?\d+))?$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def ctl(*args, timeout=60, **kw):
    """Run samepagectl; the CompletedProcess (text)."""
    return subprocess.run([sp.SAMEPAGECTL] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout,
                          **kw)


def unescape_label(v):
    out, i = [], 0
    while i < len(v):
        if v[i] == '\\' and i + 1 < len(v):
            out.append({'n': '\n', '\\': '\\', '"': '"'}.get(v[i + 1],
                                                            v[i + 1]))
            i += 2
        else:
            out.append(v[i])
            i += 1
    return ''.join(out)


def parse_prometheus(text):
    """Check the text exposition format; {metric: (type, labels, value)}.

    Every sample must follow a HELP and a TYPE line of its own metric.
    """
    helps, types, samples = {}, {}, {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith('# HELP '):
            name, _, doc = line[7:].partition(' ')
            assert METRIC_NAME.match(name), f'line {n}: bad name {name!r}'
            assert doc, f'line {n}: HELP without text'
            helps[name] = doc
            continue
        if line.startswith('# TYPE '):
            name, _, typ = line[7:].partition(' ')
            assert METRIC_NAME.match(name), f'line {n}: bad name {name!r}'
            assert typ in ('counter', 'gauge', 'untyped', 'summary',
                           'histogram'), f'line {n}: bad type {typ!r}'
            assert name not in types, f'line {n}: second TYPE for {name}'
            types[name] = typ
            continue
        assert not line.startswith('#') or line.startswith('# '), \
            f'line {n}: {line!r}'
        if line.startswith('#'):
            continue
        m = SAMPLE.match(line)
        assert m, f'line {n}: not a sample: {line!r}'
        name, labels_text, value = m.group(1), m.group(2) or '', m.group(3)
        assert name in helps, f'line {n}: {name} has no HELP before it'
        assert name in types, f'line {n}: {name} has no TYPE before it'
        labels = {}
        pos = 0
        while pos < len(labels_text):
            lm = LABEL.match(labels_text, pos)
            assert lm, f'line {n}: bad labels {labels_text!r}'
            labels[lm.group(1)] = unescape_label(lm.group(2))
            pos = lm.end()
        float(value)   # raises on a value that is not a float
        samples[name] = (types[name], labels, float(value))
    return samples


def write_copies(backing, npages=NPAGES, ncopies=NCOPIES):
    """ncopies real copies (no reflink) of random pages; their names."""
    data = os.urandom(npages * PAGE)
    names = [f'copy{i}.img' for i in range(ncopies)]
    for n in names:
        sp.write_file(os.path.join(backing, n), data)
    return names


class CtlMountTestCase(sp.MountTestCase):
    mount_opts = ('cache_size=64M',)

    def setUp(self):
        if not os.access(sp.SAMEPAGECTL, os.X_OK):
            raise unittest.SkipTest(f'{sp.SAMEPAGECTL} is not built')
        super().setUp()

    def tearDown(self):
        # Files held open would keep the unmount in tearDown waiting.
        for fd in getattr(self, '_held', ()):
            os.close(fd)
        self._held = []
        super().tearDown()

    def stats(self):
        r = ctl('stats', '--json', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def read_copies_and_hold(self, names):
        """Read every copy through the mount, keep them open until
        tearDown (a closed file may lose its pages), and wait until the
        copies are merged."""
        self._held = getattr(self, '_held', [])
        for n in names:
            fd = os.open(self.m.path(n), os.O_RDONLY)
            self._held.append(fd)
            while os.read(fd, 1 << 20):
                pass
        want = (len(names) - 1) * NPAGES
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = self.stats()
            if st['pages_sharing'] >= want * 0.95:
                return st
            ctl('scan', '--wait', self.m.mnt, timeout=30)
        return self.stats()


class StatsTest(CtlMountTestCase):

    def test_json_keys_are_the_documented_counters(self):
        st = self.stats()
        missing = DOCUMENTED - set(st)
        self.assertFalse(missing, f'counters missing from --json: {missing}')
        for k, v in st.items():
            self.assertIsInstance(v, int, f'{k} is not an integer')
        self.assertEqual(st['cache_limit_bytes'], 64 << 20)

    def test_eight_identical_copies_share_seven_of_eight(self):
        names = write_copies(self.m.backing)
        st = self.read_copies_and_hold(names)
        want = (NCOPIES - 1) * NPAGES
        self.assertGreaterEqual(st['pages_sharing'], want * 0.95, st)
        self.assertLessEqual(st['pages_sharing'], want + 16, st)
        self.assertLessEqual(st['cache_bytes'], (NPAGES + 64) * PAGE, st)

        # The human view leads with what the numbers mean.
        r = ctl('stats', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout
        self.assertTrue(out.startswith('samepage '), out)
        for label in ('memory used', 'memory saved', 'dedup ratio',
                      'hit rate', 'backing read', 'backing write'):
            self.assertIn(label, out)
        saved = re.search(r'memory saved\s+([\d.]+) (KiB|MiB)', out)
        self.assertTrue(saved, out)
        saved_mib = float(saved.group(1)) / (1024 if saved.group(2) == 'KiB'
                                             else 1)
        self.assertAlmostEqual(saved_mib, want * PAGE / (1 << 20), delta=0.5)
        ratio = re.search(r'dedup ratio\s+([\d.]+)x', out)
        self.assertTrue(ratio, out)
        self.assertGreater(float(ratio.group(1)), 7.0)
        self.assertLessEqual(float(ratio.group(1)), 8.05)
        # ... then every counter, one per line.
        for k in DOCUMENTED:
            self.assertRegex(out, rf'\n  {k} +-?\d+')

        # The histogram: the frames mapped 8 times sit in the 5-8 row.
        r = ctl('histogram', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r'refcnt +frames +referenced +resident')
        row = re.search(r'^ *5-8 +(\d+) ', r.stdout, re.M)
        self.assertTrue(row, r.stdout)
        self.assertGreaterEqual(int(row.group(1)), NPAGES * 0.95)
        self.assertRegex(r.stdout, r'\n +total +\d+ ')

        # The per-file report names the seven other copies.
        r = ctl('file', self.m.path(names[0]))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, rf'resident +{NPAGES} pages')
        shared = re.search(r'shared +(\d+) pages', r.stdout)
        self.assertGreaterEqual(int(shared.group(1)), NPAGES * 0.95)
        for n in names[1:]:
            self.assertRegex(r.stdout, rf'\d+ pages .* {re.escape(n)}\n')
        self.assertNotIn(f' {names[0]}\n', r.stdout)

    def test_prometheus_output_follows_the_exposition_format(self):
        names = write_copies(self.m.backing, ncopies=2)
        self.read_copies_and_hold(names)
        r = ctl('stats', '--prometheus', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        samples = parse_prometheus(r.stdout)
        st = self.stats()
        for name in st:
            metric = 'samepage_' + name
            self.assertIn(metric, samples)
            typ, labels, _ = samples[metric]
            self.assertEqual(typ, 'gauge' if name in GAUGES else 'counter',
                             metric)
            self.assertEqual(labels, {'mountpoint':
                                      os.path.realpath(self.m.mnt)})
        self.assertEqual(samples['samepage_cache_limit_bytes'][2], 64 << 20)
        # A relative mount point is labelled with its absolute path.
        r = ctl('stats', '--prometheus', './' + os.path.basename(self.m.mnt),
                cwd=os.path.dirname(self.m.mnt))
        self.assertEqual(r.returncode, 0, r.stderr)
        labels = parse_prometheus(r.stdout)['samepage_full_scans'][1]
        self.assertEqual(labels['mountpoint'], os.path.realpath(self.m.mnt))

    def test_json_and_prometheus_exclude_each_other(self):
        r = ctl('stats', '--json', '--prometheus', self.m.mnt)
        self.assertEqual(r.returncode, 2)
        self.assertIn('exclude', r.stderr)


class StoreCountersTest(CtlMountTestCase):
    """The state store's counters are in every view of stats, and a warm
    restart moves them: the second copy is mapped on the stored digests
    (store_merges), not merged by comparing contents (content_merges)."""

    def test_warm_restart_shows_store_counters(self):
        names = write_copies(self.m.backing, ncopies=2)
        self.read_copies_and_hold(names)
        for fd in self._held:
            os.close(fd)
        self._held = []
        self.m.stop()
        sp.drop_caches()
        self.m.start()
        before = self.stats()
        self.assertFalse(STORE_COUNTERS - set(before), before)
        self.assertEqual(before['store_files'], 2, before)
        self.assertGreaterEqual(before['store_pages'], 2 * NPAGES * 0.95,
                                before)
        self.assertLessEqual(before['store_distinct'], NPAGES + 16, before)
        self.assertGreater(before['store_bytes'], 0, before)
        self.assertEqual(before['store_paused'], 0, before)
        for n in names:
            sp.read_file(self.m.path(n))
        st = self.stats()
        merged = st['store_merges'] - before['store_merges']
        self.assertGreaterEqual(merged, NPAGES * 0.95, st)
        self.assertGreaterEqual(st['store_hits'], st['store_merges'], st)
        self.assertLess(st['content_merges'] - before['content_merges'],
                        NPAGES * 0.05, st)
        self.assertEqual(st['store_queue_full'], 0, st)

        r = ctl('stats', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        for k in STORE_COUNTERS:
            self.assertRegex(r.stdout, rf'\n  {k} +\d+', k)
        r = ctl('stats', '--prometheus', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        samples = parse_prometheus(r.stdout)
        for k in STORE_COUNTERS:
            self.assertEqual(samples['samepage_' + k][0],
                             'gauge' if k in GAUGES else 'counter', k)


class AwkwardMountpointTest(CtlMountTestCase):
    """The Prometheus label escapes '"', '\\' of the mount's path."""

    def setUp(self):
        self._tmp = tempfile.mkdtemp(prefix='sp-ctl-')
        self.addCleanup(shutil.rmtree, self._tmp, True)
        self.mount_kwargs = {'mnt': os.path.join(self._tmp, 'a "b" \\c')}
        os.mkdir(self.mount_kwargs['mnt'])
        super().setUp()

    def test_label_is_escaped(self):
        r = ctl('stats', '--prometheus', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(r'a \"b\" \\c"}', r.stdout)
        samples = parse_prometheus(r.stdout)
        self.assertEqual(samples['samepage_full_scans'][1]['mountpoint'],
                         self.m.mnt)


class CommandsTest(CtlMountTestCase):

    def test_watch_prints_one_line_per_sample_when_not_a_tty(self):
        r = ctl('watch', '-n', '0.2', '--count', '3', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 4, r.stdout)
        for col in ('reads/s', 'hits/s', 'misses/s', 'rdMiB/s', 'wrMiB/s',
                    'merges/s', 'cow/s', 'scans', 'used', 'saved'):
            self.assertIn(col, lines[0])
        for line in lines[1:]:
            self.assertRegex(line, r'^\d\d:\d\d:\d\d +[\d.]+ ')
        self.assertNotIn('\033', r.stdout)

    def test_watch_counts_reads_while_they_happen(self):
        names = write_copies(self.m.backing, ncopies=1)
        proc = subprocess.Popen([sp.SAMEPAGECTL, 'watch', '-n', '0.5',
                                 '--count', '4', self.m.mnt],
                                stdout=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                with open(self.m.path(names[0]), 'rb') as f:
                    f.read()
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertEqual(proc.returncode, 0)
        reads = [float(l.split()[1]) for l in out.splitlines()[1:]]
        self.assertTrue(any(r > 0 for r in reads), out)

    def test_get_and_set_settings(self):
        r = ctl('get', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        keys = {l.split()[0] for l in r.stdout.splitlines()}
        self.assertLessEqual(KNOBS, keys)

        r = ctl('set', self.m.mnt, 'pages_to_scan=123', 'cache_size=32M',
                'smart_scan=off')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(ctl('get', self.m.mnt, 'pages_to_scan').stdout,
                         '123\n')
        self.assertEqual(ctl('get', self.m.mnt, 'smart_scan').stdout, '0\n')
        self.assertEqual(ctl('get', self.m.mnt, 'cache_size').stdout,
                         f'{32 << 20}\n')
        self.assertEqual(self.stats()['cache_limit_bytes'], 32 << 20)

        r = ctl('set', self.m.mnt, 'no_such_knob=1')
        self.assertEqual(r.returncode, 1)
        self.assertIn(self.m.mnt, r.stderr)
        self.assertIn('no_such_knob=1', r.stderr)
        r = ctl('set', self.m.mnt, 'cache_size=12Q')
        self.assertEqual(r.returncode, 2)
        r = ctl('set', self.m.mnt, 'pages_to_scan')
        self.assertEqual(r.returncode, 2)
        r = ctl('get', self.m.mnt, 'no_such_knob')
        self.assertEqual(r.returncode, 1)
        self.assertIn('no_such_knob', r.stderr)
        # A refused value changed nothing.
        self.assertEqual(ctl('get', self.m.mnt, 'pages_to_scan').stdout,
                         '123\n')

    def test_scan_wait_returns_after_a_full_scan(self):
        before = self.stats()['full_scans']
        r = ctl('scan', '--wait', self.m.mnt, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('finished', r.stdout)
        self.assertGreater(self.stats()['full_scans'], before)
        r = ctl('scan', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('started', r.stdout)

    def test_file_errors(self):
        os.mkdir(self.m.path('dir'))
        r = ctl('file', self.m.path('dir'))
        self.assertEqual(r.returncode, 1)
        self.assertIn(self.m.path('dir'), r.stderr)
        r = ctl('file', self.m.path('missing'))
        self.assertEqual(r.returncode, 1)
        self.assertIn('No such file', r.stderr)
        with tempfile.NamedTemporaryFile() as f:
            r = ctl('file', f.name)
            self.assertEqual(r.returncode, 1)
            self.assertIn(f'{f.name}: not a file on a samepage mount',
                          r.stderr)

    def test_a_subdirectory_is_not_the_mount(self):
        os.mkdir(self.m.path('sub'))
        r = ctl('stats', self.m.path('sub'))
        self.assertEqual(r.returncode, 1)
        self.assertIn(f'{self.m.path("sub")}: not a samepage mount', r.stderr)


class ErrorsWithoutMountTest(unittest.TestCase):

    def setUp(self):
        if not os.access(sp.SAMEPAGECTL, os.X_OK):
            raise unittest.SkipTest(f'{sp.SAMEPAGECTL} is not built')

    def test_not_a_samepage_mount(self):
        with tempfile.TemporaryDirectory() as d:
            for cmd in (('stats',), ('stats', '--json'), ('histogram',),
                        ('get',), ('watch', '--count', '1'), ('scan',)):
                r = ctl(*cmd, d)
                self.assertEqual(r.returncode, 1, cmd)
                self.assertIn(f'{d}: not a samepage mount', r.stderr, cmd)
                self.assertEqual(r.stdout, '', cmd)
            r = ctl('set', d, 'run=1')
            self.assertEqual(r.returncode, 1)
            self.assertIn(f'{d}: not a samepage mount', r.stderr)

    def test_nonexistent_path(self):
        p = '/nonexistent/samepage/mnt'
        r = ctl('stats', p)
        self.assertEqual(r.returncode, 1)
        self.assertIn(p, r.stderr)
        self.assertIn('No such file or directory', r.stderr)

    def test_usage_errors_exit_2(self):
        for args in ((), ('frobnicate',), ('stats',), ('stats', 'a', 'b'),
                     ('stats', '--bogus', '/'), ('--bogus',),
                     ('--timeout', 'x', 'stats', '/'),
                     ('stats', '--timeout', '0', '/'),
                     ('stats', '--timeout'), ('watch', '-n', '0', '/'),
                     ('watch', '--count', '0', '/'), ('file',),
                     ('set', '/'), ('set', '/', 'novalue'),
                     ('get', '/', 'a', 'b'), ('scan',), ('store',),
                     ('help', 'frobnicate')):
            r = ctl(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertTrue(r.stderr.startswith('samepagectl: '), args)
            self.assertIn('--help', r.stderr, args)
            self.assertEqual(r.stdout, '', args)

    def test_help_and_version(self):
        r = ctl('--help')
        self.assertEqual(r.returncode, 0)
        for cmd in ('stats', 'histogram', 'file', 'watch', 'get', 'set',
                    'scan', 'store', 'help'):
            self.assertIn(f'  {cmd} ', r.stdout)
            a = ctl(cmd, '--help')
            b = ctl('help', cmd)
            self.assertEqual(a.returncode, 0, cmd)
            self.assertEqual(a.stdout, b.stdout, cmd)
            self.assertTrue(a.stdout.startswith(f'Usage: samepagectl {cmd}'),
                            cmd)
            self.assertEqual(ctl(cmd, '-h').stdout, a.stdout, cmd)
        self.assertEqual(ctl('help').stdout, r.stdout)
        v = ctl('--version')
        self.assertEqual(v.returncode, 0)
        self.assertRegex(v.stdout, r'^samepagectl \d+\.\d+\.\d+\n$')

    def test_store_errors(self):
        r = ctl('store', '/nonexistent/state')
        self.assertEqual(r.returncode, 1)
        self.assertIn('/nonexistent/state: No such file or directory',
                      r.stderr)
        with tempfile.TemporaryDirectory() as d:
            r = ctl('store', d)
            self.assertEqual(r.returncode, 1)
            self.assertIn(f'{d}: not an LMDB store', r.stderr)
            sp.write_file(os.path.join(d, 'data.mdb'), os.urandom(8192))
            r = ctl('store', d)
            self.assertEqual(r.returncode, 1)
            self.assertIn(f'{d}: not an LMDB store', r.stderr)
            # Refused without leaving anything behind.
            self.assertEqual(os.listdir(d), ['data.mdb'])

    def test_store_lists_named_databases(self):
        if not shutil.which('mdb_load'):
            raise unittest.SkipTest('mdb_load (lmdb-utils) is missing')
        dump = ('VERSION=3\nformat=bytevalue\ntype=btree\nHEADER=END\n'
                + ''.join(f' {(b"k%03d" % i).hex()}\n {b"value".hex()}\n'
                          for i in range(10))
                + 'DATA=END\n')
        with tempfile.TemporaryDirectory() as d:
            for db in ('fingerprints', 'files'):
                subprocess.run(['mdb_load', '-s', db, d], input=dump,
                               text=True, check=True)
            before = sorted(os.listdir(d))
            r = ctl('store', d)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f'store {d}\n', r.stdout)
            self.assertRegex(r.stdout, r'\(main\) +2 ')
            self.assertRegex(r.stdout, r'\nfingerprints +10 ')
            self.assertRegex(r.stdout, r'\nfiles +10 ')
            self.assertEqual(sorted(os.listdir(d)), before)


class PermissionTest(CtlMountTestCase):
    """Only root and the user who mounted may change settings."""

    mount_opts = ('cache_size=64M', 'allow_other')

    def as_nobody(self, *args):
        # Let nobody reach the mount point through our private temp dir;
        # the root directory is writable so that the kernel lets the
        # request through and the daemon is the one that refuses.
        os.chmod(self.m.tmp, 0o755)
        os.chmod(self.m.mnt, 0o777)
        return ctl(*args, user=65534, group=65534, extra_groups=[])

    def test_nobody_may_read_but_not_change(self):
        r = self.as_nobody('stats', '--json', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('pages_sharing', json.loads(r.stdout))
        before = ctl('get', self.m.mnt, 'pages_to_scan').stdout
        r = self.as_nobody('set', self.m.mnt, 'pages_to_scan=7')
        self.assertEqual(r.returncode, 1)
        self.assertIn(f'{self.m.mnt}: permission denied: only root or the '
                      'user who mounted may change settings', r.stderr)
        self.assertEqual(ctl('get', self.m.mnt, 'pages_to_scan').stdout,
                         before)
        r = self.as_nobody('scan', self.m.mnt)
        self.assertEqual(r.returncode, 1)
        self.assertIn('permission denied', r.stderr)

    def test_nobody_may_not_read_the_store_of_a_mount(self):
        r = self.as_nobody('store', self.m.mnt)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f'{self.m.mnt}: permission denied: only root or the '
                      'user who mounted may read the store of a mount',
                      r.stderr)
        self.assertEqual(r.stdout, '')


class HungDaemonTest(CtlMountTestCase):
    """A stopped daemon costs a timeout and a message, never a hang."""

    def stop_daemon(self):
        """SIGSTOP, and wait until every thread has stopped: a thread
        still running could take the next request, and a request taken
        is one its caller can no longer abandon."""
        os.kill(self.m.pid, signal.SIGSTOP)
        tasks = f'/proc/{self.m.pid}/task'
        for _ in range(1000):
            states = []
            for t in os.listdir(tasks):
                try:
                    with open(f'{tasks}/{t}/stat') as f:
                        states.append(f.read().rsplit(')', 1)[1].split()[0])
                except OSError:
                    pass
            if all(st in ('T', 't') for st in states):
                return
            time.sleep(0.005)
        self.fail(f'daemon threads not stopped: {states}')

    def resume_daemon(self):
        try:
            os.kill(self.m.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def tearDown(self):
        # Resume it whatever happened, or the unmount would wait for it.
        if self.m.pid:
            self.resume_daemon()
        super().tearDown()

    def test_stats_times_out(self):
        self.stop_daemon()
        t0 = time.monotonic()
        r = ctl('stats', '--timeout', '1', self.m.mnt, timeout=20)
        took = time.monotonic() - t0
        self.assertEqual(r.returncode, 1)
        self.assertIn(f'{self.m.mnt}: daemon does not answer (timed out '
                      'after 1 s)', r.stderr)
        self.assertLess(took, 5)
        self.resume_daemon()
        # The daemon answers again, and the killed call left no harm.
        self.assertEqual(ctl('stats', '--json', self.m.mnt).returncode, 0)

    def test_every_command_times_out(self):
        sp.write_file(self.m.path('f'), b'x' * PAGE)
        self.stop_daemon()
        for args in (('--timeout', '0.5', 'histogram', self.m.mnt),
                     ('--timeout', '0.5', 'get', self.m.mnt),
                     ('set', '--timeout', '0.5', self.m.mnt, 'run=1'),
                     ('scan', '--timeout', '0.5', self.m.mnt),
                     ('watch', '--timeout', '0.5', '--count', '1',
                      self.m.mnt),
                     ('file', '--timeout', '0.5', self.m.path('f'))):
            r = ctl(*args, timeout=20)
            self.assertEqual(r.returncode, 1, args)
            self.assertIn('daemon does not answer', r.stderr, args)


class StoreOfMountTest(CtlMountTestCase):
    """store reads the state directory the daemon left behind, or the one
    of a live mount, given its mount point."""

    def test_store_of_a_live_mount_by_its_mount_point(self):
        names = write_copies(self.m.backing, ncopies=2)
        self.read_copies_and_hold(names)
        deadline = time.monotonic() + 20
        while (self.stats()['store_files'] < 2 and
               time.monotonic() < deadline):
            time.sleep(0.1)
        state = os.path.join(os.path.realpath(self.m.backing), '.samepage')
        r = ctl('store', self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith(f'store {state}\n'), r.stdout)
        self.assertRegex(r.stdout,
                         rf'\n  of the mount +{re.escape(self.m.mnt)}\n')
        files = re.search(r'^files +(\d+) ', r.stdout, re.M)
        self.assertTrue(files, r.stdout)
        self.assertEqual(int(files.group(1)), 2, r.stdout)
        # The same store as named by its directory.
        r = ctl('store', state)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r'(?m)^files +2 ')
        self.assertNotIn('of the mount', r.stdout)

    def test_store_after_unmount(self):
        names = write_copies(self.m.backing, ncopies=2)
        for n in names:
            sp.read_file(self.m.path(n))
        self.m.stop()
        state = os.path.join(self.m.backing, '.samepage')
        if not os.path.exists(os.path.join(state, 'data.mdb')):
            raise unittest.SkipTest('the daemon left no store in '
                                    f'{state}')
        r = ctl('store', state)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('(main)', r.stdout)
        self.assertRegex(r.stdout, r'map size +[\d.]+ [KMGT]?i?B')


if __name__ == '__main__':
    sp.main()
