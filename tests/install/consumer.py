"""The Python consumer of the install check: imports the installed package
(through PYTHONPATH) and must find the installed library by itself.

usage: consumer.py PREFIX
"""
import os
import sys

import numpy as np

prefix = os.path.realpath(sys.argv[1])
assert "MODELSHARE_LIBRARY" not in os.environ
import modelshare  # noqa: E402

assert os.path.realpath(modelshare.__file__).startswith(prefix + os.sep), \
    modelshare.__file__
assert modelshare.library_source == "install prefix", modelshare.library_source
assert modelshare.library_path.startswith(prefix + os.sep), \
    modelshare.library_path
with modelshare.Shm(prefix="msinst-") as shm:
    with shm.alloc((2, 8), np.float32) as t:
        t.numpy()[:] = np.arange(16).reshape(2, 8)
        with shm.open(t.descriptor) as r:
            a = r.numpy()
            assert not a.flags.writeable
            assert np.array_equal(np.from_dlpack(r), a)
            assert a.sum() == 120
            del a
print("python consumer: ok")
