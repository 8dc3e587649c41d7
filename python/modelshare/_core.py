"""Shm (an allocator), Tensor (a held tensor) and the zero-copy views."""
import ctypes
import json

import numpy as np

from . import _dlpack, _dtype
from ._lib import (MS_DESCRIPTOR_MAX, MS_MAX_NDIM, MS_OPEN_WRITE,
                   Capabilities, ShmOptions, ShmStats, lib)
from .errors import InvalidArgument, error

_release = lib.ms_tensor_release
_retain = lib.ms_tensor_retain


def _closed(what):
    return InvalidArgument(InvalidArgument.code, f"{what} is closed")


def _cstr(value, what):
    """value as a C string; an embedded NUL would silently cut it short."""
    if value is None:
        return None
    b = value if isinstance(value, bytes) else str(value).encode()
    if b"\0" in b:
        raise InvalidArgument(InvalidArgument.code, f"NUL byte in {what}")
    return b


def _shm_error(rc, shm_handle):
    msg = lib.ms_shm_errmsg(shm_handle).decode(errors="replace")
    return error(rc, msg)


class _Ref:
    """Keeps a tensor alive for numpy arrays on its memory.

    It holds its own reference (ms_tensor_retain), dropped when the last
    array using the memory goes away, so arrays stay valid after
    Tensor.release().  Arrays reach it through their base chain: array ->
    (read-only memoryview ->) ctypes buffer over the data -> this object.
    Read-only data gets a read-only memoryview, so numpy refuses to make
    such an array writable (setflags(write=True) raises ValueError).
    """

    __slots__ = ("_h", "_shm")

    def __init__(self, handle, shm):
        self._h = _retain(handle)
        self._shm = shm  # the allocator outlives its tensors

    def __del__(self, release=_release):
        h, self._h = self._h, None
        if h:
            release(h)


class Tensor:
    """A tensor held by this process: allocated here, opened from a
    descriptor, or deserialized.  Holds one reference, dropped by release(),
    by leaving a ``with`` block, or when the object is garbage collected.
    numpy() arrays and DLPack exports hold references of their own.
    Not for concurrent release() from several threads."""

    __slots__ = ("_h", "_shm", "_meta", "__weakref__")

    def __init__(self, handle, shm):
        self._h = handle
        self._shm = shm
        self._meta = None

    # ---------------------------------------------------------- lifetime
    def release(self):
        """Drops this handle's reference (idempotent).  Arrays and DLPack
        exports made from it stay valid: they hold their own."""
        h, self._h = self._h, None
        if h:
            _release(h)

    def __del__(self, release=_release):
        h, self._h = self._h, None
        if h:
            release(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    @property
    def released(self):
        return not self._h

    def _handle(self):
        h = self._h
        if not h:
            raise _closed("tensor")
        return h

    def _info(self):
        """(data address, shape, packed dtype, writable, nbytes): fixed for
        the tensor's life (the library keeps validated private copies)."""
        h = self._handle()  # a released tensor has no properties
        m = self._meta
        if m is None:
            ndim = lib.ms_tensor_ndim(h)
            m = self._meta = (lib.ms_tensor_data(h) or 0,
                              tuple(lib.ms_tensor_shape(h)[:ndim]),
                              lib.ms_tensor_dtype(h),
                              lib.ms_tensor_is_writable(h) == 1,
                              lib.ms_tensor_nbytes(h))
        return m

    # ---------------------------------------------------------- properties
    @property
    def shape(self):
        return self._info()[1]

    @property
    def ndim(self):
        return len(self._info()[1])

    @property
    def dtype(self):
        """The numpy dtype, or the string "bfloat16" (numpy has none)."""
        code = self._info()[2]
        return (_dtype.name(code) if code == _dtype.BFLOAT16 else
                _dtype.to_numpy(code))

    @property
    def nbytes(self):
        return self._info()[4]

    @property
    def writable(self):
        """False for a handle opened read-only: its memory faults on write."""
        return self._info()[3]

    @property
    def data_ptr(self):
        """The address of the data (in this process's mapping)."""
        return self._info()[0]

    @property
    def descriptor(self):
        """The string another process passes to Shm.open()."""
        buf = ctypes.create_string_buffer(MS_DESCRIPTOR_MAX)
        rc = lib.ms_tensor_descriptor(self._handle(), buf, MS_DESCRIPTOR_MAX)
        if rc:
            raise error(rc, "a heap tensor (deserialized without an "
                        "allocator) has no descriptor" if self._shm is None
                        else "")
        return buf.value.decode()

    def __repr__(self):
        if not self._h:
            return "<modelshare.Tensor released>"
        data, shape, code, writable, nbytes = self._info()
        return (f"<modelshare.Tensor shape={shape} dtype={_dtype.name(code)}"
                f" {'writable' if writable else 'read-only'}>")

    # ---------------------------------------------------------- zero copy
    def numpy(self):
        """A numpy array on the tensor's memory (no copy).  Read-only unless
        this handle is writable.  The array keeps the tensor alive."""
        h = self._handle()
        data, shape, code, writable, nbytes = self._info()
        dtype = _dtype.to_numpy(code)
        if nbytes == 0:  # nothing to share (the address may be NULL)
            a = np.empty(shape, dtype)
            a.flags.writeable = writable
            return a
        buf = (ctypes.c_char * nbytes).from_address(data)
        buf._ms_ref = _Ref(h, self._shm)
        mem = memoryview(buf) if writable else memoryview(buf).toreadonly()
        return np.frombuffer(mem, dtype).reshape(shape)

    def __array__(self, dtype=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __dlpack__(self, stream=None, max_version=None, dl_device=None,
                   copy=None):
        """A DLPack capsule ("dltensor", DLPack 0.6) on the same memory.

        The export holds its own reference to the tensor.  DLPack 0.6 has
        no read-only flag: do not hand a read-only tensor (writable False)
        to a consumer that writes; the write would fault.  numpy 1.24 makes
        every imported array read-only."""
        if stream is not None:
            raise BufferError("CPU tensors take no stream")
        if dl_device is not None and tuple(dl_device) != (_dlpack.KDLCPU, 0):
            raise BufferError("modelshare tensors live on the CPU")
        if copy:
            raise BufferError("modelshare exports without copying")
        return _dlpack.capsule(self._handle())

    def __dlpack_device__(self):
        return (_dlpack.KDLCPU, 0)


class Shm:
    """An allocator: creates tensors in shared memory and opens other
    processes' tensors by descriptor.  Defaults are MS_SHM_OPTIONS_INIT's.
    close() (or leaving a ``with`` block) destroys it; it refuses with
    Busy (MS_EBUSY) while tensors, arrays or DLPack exports from it live."""

    def __init__(self, prefix=None, pool_bytes=256 << 20, *, dir=None,
                 max_bytes=0, max_session_bytes=0, open_cache=64,
                 open_cache_bytes=1 << 30, allowed_uid=-1):
        o = ShmOptions()
        o.struct_size = ctypes.sizeof(ShmOptions)
        o.dir = _cstr(dir, "dir")
        o.prefix = _cstr(prefix, "prefix")
        o.max_bytes = max_bytes
        o.max_session_bytes = max_session_bytes
        o.pool_bytes = pool_bytes
        o.open_cache = open_cache
        o.reserved0 = 0
        o.open_cache_bytes = open_cache_bytes
        o.allowed_uid = allowed_uid
        h = ctypes.c_void_p()
        self._h = None
        rc = lib.ms_shm_create(ctypes.byref(o), ctypes.byref(h))
        if rc:
            raise _shm_error(rc, None)
        self._h = h.value

    def _handle(self):
        h = self._h
        if not h:
            raise _closed("Shm")
        return h

    @property
    def closed(self):
        return not self._h

    def close(self):
        """Destroys the allocator.  Idempotent.  Raises Busy, changing
        nothing, while anything obtained from it is alive."""
        h = self._h
        if not h:
            return
        rc = lib.ms_shm_destroy(h)
        if rc:
            raise _shm_error(rc, h)
        self._h = None

    def __del__(self):
        h, self._h = getattr(self, "_h", None), None
        if h and lib.ms_shm_destroy(h) != 0:
            self._h = h  # still busy (reference cycles at shutdown)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def alloc(self, shape, dtype, session=None):
        """A new writable C-contiguous tensor (contents unspecified).
        shape: an int or a sequence of ints; dtype: anything numpy.dtype()
        takes, or "bfloat16"; session: a label for per-session quotas."""
        h = self._handle()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if len(shape) > MS_MAX_NDIM:
            raise InvalidArgument(InvalidArgument.code,
                                  f"{len(shape)} dimensions (most: "
                                  f"{MS_MAX_NDIM})")
        try:
            dims = (ctypes.c_int64 * max(len(shape), 1))(*shape)
        except TypeError:
            raise InvalidArgument(InvalidArgument.code,
                                  f"shape must be integers: {shape!r}") \
                from None
        out = ctypes.c_void_p()
        rc = lib.ms_tensor_alloc(h, _dtype.to_code(dtype), len(shape),
                                 dims if shape else None,
                                 _cstr(session, "session"),
                                 ctypes.byref(out))
        if rc:
            raise _shm_error(rc, h)
        return Tensor(out.value, self)

    def open(self, descriptor, writable=False):
        """Opens another process's tensor in place.  Read-only unless
        writable=True.  Raises NotFound or StaleDescriptor once nobody holds
        it, InvalidArgument for a malformed descriptor, BadRegion for a
        hostile header."""
        h = self._handle()
        if not isinstance(descriptor, (str, bytes)):
            raise TypeError("descriptor must be str or bytes, not "
                            + type(descriptor).__name__)
        descriptor = _cstr(descriptor, "descriptor")
        out = ctypes.c_void_p()
        rc = lib.ms_tensor_open(h, descriptor,
                                MS_OPEN_WRITE if writable else 0,
                                ctypes.byref(out))
        if rc:
            raise _shm_error(rc, h)
        return Tensor(out.value, self)

    def stats(self):
        """The allocator's counters (ms_shm_stats) as a dict."""
        h = self._handle()
        s = ShmStats()
        s.struct_size = ctypes.sizeof(ShmStats)
        rc = lib.ms_shm_stats(h, ctypes.byref(s))
        if rc:
            raise _shm_error(rc, h)
        return {name: getattr(s, name) for name, _ in ShmStats._fields_[1:]}

    def sweep(self):
        """Reclaims what dead processes left; returns the regions unlinked."""
        h = self._handle()
        n = ctypes.c_size_t()
        rc = lib.ms_shm_sweep(h, ctypes.byref(n))
        if rc:
            raise _shm_error(rc, h)
        return n.value


def serialize(tensor, name=None, metadata=None):
    """The tensor as safetensors bytes (one tensor named ``name``, default
    "tensor"; ``metadata`` a dict of str to str)."""
    h = tensor._handle()
    meta = None if metadata is None else json.dumps(metadata).encode()
    buf, size = ctypes.c_void_p(), ctypes.c_size_t()
    rc = lib.ms_tensor_serialize(h, _cstr(name, "name"),
                                 meta, ctypes.byref(buf), ctypes.byref(size))
    if rc:
        raise error(rc, "bad name or metadata" if rc == InvalidArgument.code
                    else "")
    try:
        return ctypes.string_at(buf.value, size.value)
    finally:
        lib.ms_free(buf)


def deserialize(data, shm=None):
    """A tensor from safetensors bytes: in shared memory from ``shm``, or on
    the heap (no descriptor) when shm is None.  The input is untrusted:
    a malformed stream raises BadRegion."""
    sh = None if shm is None else shm._handle()
    if not isinstance(data, bytes):
        data = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        ptr, size = data.ctypes.data, data.nbytes
    else:
        ptr, size = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p), \
            len(data)
    out = ctypes.c_void_p()
    rc = lib.ms_tensor_deserialize(sh, ptr, size, ctypes.byref(out))
    if rc:
        raise _shm_error(rc, sh)
    return Tensor(out.value, shm)


def capabilities(dir=None):
    """What shared memory can do here (ms_capabilities) as a dict."""
    c = Capabilities()
    c.struct_size = ctypes.sizeof(Capabilities)
    rc = lib.ms_capabilities(_cstr(dir, "dir"),
                             ctypes.byref(c))
    if rc:
        raise error(rc)
    d = {name: getattr(c, name) for name, _ in Capabilities._fields_[1:]}
    d["shm_available"] = bool(d["shm_available"])
    return d
