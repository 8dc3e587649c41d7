"""A new user's consumer: a script written the way the README tells a user
to write it reads a C producer's tensor with numpy in at most 10 lines,
imports included.  It runs as its own /usr/bin/python3 process."""
import os
import subprocess
import sys
import tempfile

import msutil
import numpy as np

USER_SCRIPT = """\
import sys
import modelshare

shm = modelshare.Shm()
frame = shm.open(sys.argv[1]).numpy()
print(frame.shape, frame.dtype, frame.mean())
"""


class UserScript(msutil.NamespaceTest):
    def test_ten_line_consumer(self):
        self.assertLessEqual(len(USER_SCRIPT.splitlines()), 10)
        # The C producer (shm_helper dlpack, float32 [4, 256] = i / 2) in
        # the default namespace, as a user's producer would be.
        p = subprocess.Popen([msutil.HELPER, "dlpack", "-"], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.peers.append(p)
        desc = p.stdout.readline().strip()
        with tempfile.NamedTemporaryFile("w", suffix=".py") as f:
            f.write(USER_SCRIPT)
            f.flush()
            r = subprocess.run([sys.executable, f.name, desc],
                               capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        want = np.arange(1024, dtype=np.float32) / 2
        self.assertEqual(r.stdout.strip(),
                         f"(4, 256) float32 {want.mean()}")
        self.assertEqual(r.stderr, "")  # no warning, no leak report
        self.assertEqual(self.finish(p), 0)
        # Neither process left anything in the default namespace.
        self.assertFalse([n for n in os.listdir("/dev/shm")
                          if desc.split(":")[1] in n])


if __name__ == "__main__":
    msutil.main()
