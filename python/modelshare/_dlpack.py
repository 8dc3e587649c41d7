"""DLPack capsules for the Python DLPack protocol (``__dlpack__``).

The library's ms_tensor_to_dlpack() gives a DLManagedTensor (DLPack 0.6)
holding its own reference to the tensor; its deleter drops it.  It goes to
the consumer in a PyCapsule named "dltensor".  A consumer that takes it
renames the capsule "used_dltensor" and calls the deleter itself when done;
an unconsumed capsule must call the deleter when it is destroyed.

The capsule destructor receives the capsule while it is being deallocated
(refcount 0).  It must therefore never turn that pointer into a Python
object (ctypes.py_object would take a reference to a dying object and free
it twice: the segfault of the hand-written glue).  It handles the pointer as
a plain address, asks the C API whether the capsule is still "dltensor",
and if so calls the deleter.

A destructor may also run while an exception is pending (a consumer that
fails after taking the capsule, e.g. numpy 1.24 refusing a bool or
bfloat16 tensor).  ctypes then raises that exception out of the first
foreign call the destructor makes, after the call has run.  The destructor
catches it (which makes C calls possible again), does its work, and
re-raises it; ctypes reports it as "Exception ignored" because a callback
cannot hand it back to the failing consumer, which then raises
SystemError.  The tensor is released either way.  No state is shared
between calls, so destructors on several threads cannot mix up their
exceptions.
"""
import ctypes

from ._lib import lib

CAPSULE_NAME = b"dltensor"  # module constant: outlives every capsule
KDLCPU = 1


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice),
                ("ndim", ctypes.c_int), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


def _api(name, restype, argtypes):
    f = getattr(ctypes.pythonapi, name)
    f.restype, f.argtypes = restype, argtypes
    return f


_capsule_new = _api("PyCapsule_New", ctypes.py_object,
                    [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p])
_capsule_is_valid = _api("PyCapsule_IsValid", ctypes.c_int,
                         [ctypes.c_void_p, ctypes.c_char_p])
_capsule_get_pointer = _api("PyCapsule_GetPointer", ctypes.c_void_p,
                            [ctypes.c_void_p, ctypes.c_char_p])


def _release_unconsumed(capsule, is_valid, get_pointer, name, managed_t,
                        deleter_t):
    if is_valid(capsule, name):  # still "dltensor": nobody consumed it
        managed = get_pointer(capsule, name)
        deleter = managed_t.from_address(managed).deleter
        if deleter:
            deleter_t(deleter)(managed)


# Everything the destructor uses is bound as a default argument, so it still
# works during interpreter shutdown, after module globals are cleared.
def _destroy(capsule, is_valid=_capsule_is_valid,
             get_pointer=_capsule_get_pointer, name=CAPSULE_NAME,
             managed_t=DLManagedTensor, deleter_t=_Deleter,
             release=_release_unconsumed):
    try:
        # PyCapsule_IsValid cannot fail: an exception here was pending
        # when the destructor started.
        is_valid(capsule, name)
    except BaseException:
        release(capsule, is_valid, get_pointer, name, managed_t, deleter_t)
        raise
    release(capsule, is_valid, get_pointer, name, managed_t, deleter_t)


# Kept alive for as long as the module: capsules point at it.
_destructor = _Deleter(_destroy)
_destructor_address = ctypes.cast(_destructor, ctypes.c_void_p).value


def capsule(handle):
    """A "dltensor" capsule for the tensor handle (a new export each time)."""
    managed = ctypes.c_void_p()
    rc = lib.ms_tensor_to_dlpack(handle, ctypes.byref(managed))
    if rc != 0:
        from .errors import error
        raise error(rc, "ms_tensor_to_dlpack failed")
    try:
        return _capsule_new(managed.value, CAPSULE_NAME, _destructor_address)
    except BaseException:
        m = DLManagedTensor.from_address(managed.value)
        _Deleter(m.deleter)(managed.value)
        raise
