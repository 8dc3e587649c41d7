"""Shared parts of the Python tests.

Each test file is a unittest program run by ctest with /usr/bin/python3:
    test_x.py SHM_HELPER
with MODELSHARE_LIBRARY naming the built library and PYTHONPATH the
package's source directory (tests/CMakeLists.txt sets both).  Every test
uses its own namespace directory under /dev/shm and checks it is empty at
the end, so nothing is left behind.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HELPER = None  # the shm_helper binary (C peer process)


def main():
    global HELPER
    if len(sys.argv) < 2 or not os.access(sys.argv[1], os.X_OK):
        sys.exit("usage: test_*.py SHM_HELPER [unittest args]")
    HELPER = sys.argv.pop(1)
    unittest.main(verbosity=2)


def pattern(n, seed):
    """shm_helper's fill pattern: ((i * 2654435761) >> 13 ^ seed) & 0xff."""
    i = np.arange(n, dtype=np.uint64)
    return (((i * np.uint64(2654435761)) >> np.uint64(13)) ^
            np.uint64(seed)).astype(np.uint8)


class NamespaceTest(unittest.TestCase):
    """A private namespace (a directory on /dev/shm) per test."""

    def setUp(self):
        self.ns = tempfile.mkdtemp(prefix="ms-py-", dir="/dev/shm")
        self.peers = []

    def tearDown(self):
        for p in self.peers:
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout):
                if not f.closed:
                    f.close()
        import gc
        gc.collect()
        left = os.listdir(self.ns)
        shutil.rmtree(self.ns, ignore_errors=True)
        self.assertEqual(left, [], "objects left in the namespace")

    def helper(self, *args):
        """Starts shm_helper MODE NS ARGS... with pipes on stdin/stdout."""
        p = subprocess.Popen([HELPER, args[0], self.ns] + [str(a) for a in
                                                           args[1:]],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        self.peers.append(p)
        return p

    def finish(self, p):
        """Closes the peer's stdin and returns its exit status."""
        p.stdin.close()
        rc = p.wait(timeout=60)
        p.stdout.close()
        return rc


def run_python(code, *args, timeout=300):
    """Runs code in a fresh /usr/bin/python3 (same environment), so that a
    crash fails the test instead of killing the runner."""
    return subprocess.run([sys.executable, "-c", code] + list(args),
                          capture_output=True, text=True, timeout=timeout)
