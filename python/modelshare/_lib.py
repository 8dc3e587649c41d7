"""Finds and loads libmodelshare.so.1 and declares the C functions it uses.

Lookup order (the first that exists wins; see ``library_path`` and
``library_source`` for the outcome):

1. ``$MODELSHARE_LIBRARY``: a path to the library.  When it is set, it is
   used or the import fails: it never falls back silently.
2. ``libmodelshare.so.1`` in this package's directory.
3. The library directory of the prefix this package was installed into by
   ``cmake --install`` (recorded in ``_install.py`` at install time).
4. The system loader (``ldconfig`` paths, ``LD_LIBRARY_PATH``).
"""
import ctypes
import os

SONAME = "libmodelshare.so.1"
_here = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    env = os.environ.get("MODELSHARE_LIBRARY")
    if env:
        return [(env, "MODELSHARE_LIBRARY")], True
    found = [(os.path.join(_here, SONAME), "package directory")]
    try:
        from . import _install  # written by cmake --install only
        found.append((os.path.normpath(os.path.join(_here, _install.LIBDIR,
                                                    SONAME)),
                      "install prefix"))
    except ImportError:
        pass
    found.append((SONAME, "system loader"))
    return found, False


def _load():
    candidates, forced = _candidates()
    errors = []
    for path, source in candidates:
        if os.sep in path and not os.path.exists(path) and not forced:
            continue
        try:
            return ctypes.CDLL(path), source
        except OSError as e:
            errors.append(f"{path} ({source}): {e}")
            if forced:
                break
    raise ImportError("modelshare: cannot load libmodelshare: " +
                      "; ".join(errors))


lib, library_source = _load()


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p),
                ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p),
                ("dli_saddr", ctypes.c_void_p)]


def _real_path():
    """The file the loader actually mapped, from dladdr()."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except AttributeError:
        return lib._name
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    dladdr.restype = ctypes.c_int
    info = _DlInfo()
    addr = ctypes.cast(lib.ms_version, ctypes.c_void_p)
    if dladdr(addr, ctypes.byref(info)) and info.dli_fname:
        return os.path.realpath(info.dli_fname.decode())
    return lib._name


library_path = _real_path()

# ---------------------------------------------------------------- structs
# Mirrors of include/modelshare.h, field for field.  struct_size is always
# set to ctypes.sizeof() of these definitions: the library accepts every
# size from 1.0's up and copies min(struct_size, its own size).


class ShmOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("dir", ctypes.c_char_p),
                ("prefix", ctypes.c_char_p),
                ("max_bytes", ctypes.c_uint64),
                ("max_session_bytes", ctypes.c_uint64),
                ("pool_bytes", ctypes.c_uint64),
                ("open_cache", ctypes.c_uint32),
                ("reserved0", ctypes.c_uint32),
                # 1.1
                ("open_cache_bytes", ctypes.c_uint64),
                ("allowed_uid", ctypes.c_int64)]


class ShmStats(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t)] + [
        (name, ctypes.c_uint64) for name in (
            "regions_active", "regions_pooled", "regions_opened",
            "bytes_mapped", "bytes_allocated", "allocations", "pool_hits",
            "frees", "opens", "open_cache_hits")]


class Capabilities(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("shm_available", ctypes.c_int),
                ("shm_free_bytes", ctypes.c_uint64),
                ("shm_total_bytes", ctypes.c_uint64),
                ("page_size", ctypes.c_uint64),
                ("max_region_bytes", ctypes.c_uint64)]


# ---------------------------------------------------------------- functions
_p = ctypes.c_void_p
_pp = ctypes.POINTER(ctypes.c_void_p)
_i64p = ctypes.POINTER(ctypes.c_int64)
_sizep = ctypes.POINTER(ctypes.c_size_t)
_SIGNATURES = {
    "ms_version": (ctypes.c_uint, []),
    "ms_version_string": (ctypes.c_char_p, []),
    "ms_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "ms_err_name": (ctypes.c_char_p, [ctypes.c_int]),
    "ms_free": (None, [_p]),
    "ms_shm_create": (ctypes.c_int, [ctypes.POINTER(ShmOptions), _pp]),
    "ms_shm_destroy": (ctypes.c_int, [_p]),
    "ms_shm_errmsg": (ctypes.c_char_p, [_p]),
    "ms_shm_stats": (ctypes.c_int, [_p, ctypes.POINTER(ShmStats)]),
    "ms_shm_sweep": (ctypes.c_int, [_p, _sizep]),
    "ms_capabilities": (ctypes.c_int,
                        [ctypes.c_char_p, ctypes.POINTER(Capabilities)]),
    "ms_dtype_size": (ctypes.c_size_t, [ctypes.c_uint32]),
    "ms_tensor_alloc": (ctypes.c_int, [_p, ctypes.c_uint32, ctypes.c_int,
                                       _i64p, ctypes.c_char_p, _pp]),
    "ms_tensor_open": (ctypes.c_int, [_p, ctypes.c_char_p, ctypes.c_uint,
                                      _pp]),
    "ms_tensor_retain": (_p, [_p]),
    "ms_tensor_release": (None, [_p]),
    "ms_tensor_data": (_p, [_p]),
    "ms_tensor_dtype": (ctypes.c_uint32, [_p]),
    "ms_tensor_ndim": (ctypes.c_int, [_p]),
    "ms_tensor_shape": (_i64p, [_p]),
    "ms_tensor_strides": (_i64p, [_p]),
    "ms_tensor_nbytes": (ctypes.c_size_t, [_p]),
    "ms_tensor_is_writable": (ctypes.c_int, [_p]),
    "ms_tensor_descriptor": (ctypes.c_int, [_p, ctypes.c_char_p,
                                            ctypes.c_size_t]),
    "ms_tensor_serialize": (ctypes.c_int, [_p, ctypes.c_char_p,
                                           ctypes.c_char_p, _pp, _sizep]),
    "ms_tensor_deserialize": (ctypes.c_int, [_p, _p, ctypes.c_size_t, _pp]),
    "ms_tensor_to_dlpack": (ctypes.c_int, [_p, _pp]),
}
for _name, (_res, _args) in _SIGNATURES.items():
    try:
        _f = getattr(lib, _name)
    except AttributeError:
        raise ImportError(f"modelshare: {library_path} has no {_name}: "
                          "this package needs libmodelshare 1.1 or later")
    _f.restype, _f.argtypes = _res, _args

MS_OPEN_WRITE = 1
MS_DESCRIPTOR_MAX = 96
MS_MAX_NDIM = 16


def version_string():
    return lib.ms_version_string().decode()
