"""DLPack zero-copy into NumPy, across processes.

A separate C process (shm_helper dlpack) allocates a float32 [4, 256] tensor
in shared memory and prints its descriptor.  This process opens it through
libmodelshare (ctypes), exports it with ms_tensor_to_dlpack, imports it with
numpy.from_dlpack, checks the values, then asks the producer to write and
sees the write through the same array without importing again.

usage: test_dlpack_numpy.py LIBMODELSHARE_SO SHM_HELPER
"""
import ctypes
import gc
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

# The checks below are asserts: under python -O (or PYTHONOPTIMIZE) they
# would vanish and the test could not fail.  Any failure exits non-zero.
if not __debug__:
    raise SystemExit("test_dlpack_numpy.py: run without -O, the checks are asserts")

lib = ctypes.CDLL(sys.argv[1])
helper = sys.argv[2]


class ShmOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("dir", ctypes.c_char_p),
                ("prefix", ctypes.c_char_p), ("max_bytes", ctypes.c_uint64),
                ("max_session_bytes", ctypes.c_uint64),
                ("pool_bytes", ctypes.c_uint64), ("open_cache", ctypes.c_uint32)]


lib.ms_shm_create.argtypes = [ctypes.POINTER(ShmOptions),
                              ctypes.POINTER(ctypes.c_void_p)]
lib.ms_shm_destroy.argtypes = [ctypes.c_void_p]
lib.ms_tensor_open.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint,
                               ctypes.POINTER(ctypes.c_void_p)]
lib.ms_tensor_to_dlpack.argtypes = [ctypes.c_void_p,
                                    ctypes.POINTER(ctypes.c_void_p)]
lib.ms_tensor_release.argtypes = [ctypes.c_void_p]
lib.ms_tensor_data.argtypes = [ctypes.c_void_p]
lib.ms_tensor_data.restype = ctypes.c_void_p
lib.ms_err_name.argtypes = [ctypes.c_int]
lib.ms_err_name.restype = ctypes.c_char_p

capsule_new = ctypes.pythonapi.PyCapsule_New
capsule_new.restype = ctypes.py_object
capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
CAPSULE_NAME = ctypes.c_char_p(b"dltensor")  # must outlive the capsule


def check(rc, what):
    if rc != 0:
        raise SystemExit(f"{what}: {lib.ms_err_name(rc).decode()}")


class Exported:
    """The minimal DLPack producer protocol numpy.from_dlpack expects."""

    def __init__(self, managed):
        self.capsule = capsule_new(managed, CAPSULE_NAME, None)

    def __dlpack__(self, stream=None):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU


def main():
    ns = tempfile.mkdtemp(prefix="ms-dlpack-", dir="/dev/shm")
    try:
        producer = subprocess.Popen([helper, "dlpack", ns], text=True,
                                    stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
        desc = producer.stdout.readline().strip()
        assert desc.startswith("ms1:"), desc

        opts = ShmOptions(ctypes.sizeof(ShmOptions), ns.encode(), None, 0, 0,
                          256 << 20, 64)
        shm = ctypes.c_void_p()
        check(lib.ms_shm_create(ctypes.byref(opts), ctypes.byref(shm)),
              "ms_shm_create")
        tensor = ctypes.c_void_p()
        check(lib.ms_tensor_open(shm, desc.encode(), 0, ctypes.byref(tensor)),
              "ms_tensor_open")
        data_ptr = lib.ms_tensor_data(tensor)
        managed = ctypes.c_void_p()
        check(lib.ms_tensor_to_dlpack(tensor, ctypes.byref(managed)),
              "ms_tensor_to_dlpack")
        lib.ms_tensor_release(tensor)  # the export holds its own reference

        arr = np.from_dlpack(Exported(managed.value))
        assert arr.shape == (4, 256), arr.shape
        assert arr.dtype == np.float32, arr.dtype
        want = np.arange(4 * 256, dtype=np.float32).reshape(4, 256) / 2
        assert np.array_equal(arr, want), "values differ"
        # The array is the shared memory itself, not a copy.
        assert arr.ctypes.data == data_ptr, (hex(arr.ctypes.data), hex(data_ptr))

        producer.stdin.write("bump\n")
        producer.stdin.flush()
        assert producer.stdout.readline().strip() == "bumped"
        assert arr[0, 0] == 1000.0, arr[0, 0]   # seen without re-importing
        assert arr[0, 1] == 0.5

        # Dropping the array runs the DLPack deleter, which releases the
        # tensor: only then can the allocator be destroyed.
        del arr
        gc.collect()
        check(lib.ms_shm_destroy(shm), "ms_shm_destroy after deleter")
        producer.stdin.close()
        assert producer.wait(timeout=30) == 0
        left = os.listdir(ns)
        assert left == [], left
        print("dlpack zero-copy: ok")
    finally:
        shutil.rmtree(ns, ignore_errors=True)


main()
