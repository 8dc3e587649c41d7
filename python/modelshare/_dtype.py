"""numpy dtypes <-> the library's packed DLPack (code, bits, lanes) dtypes."""
import numpy as np

from .errors import InvalidArgument, NotSupported

_CODES = {  # DLPack type codes: 0 int, 1 uint, 2 float, 4 bfloat, 6 bool
    "i": 0, "u": 1, "f": 2, "b": 6,
}
BFLOAT16 = 4 | (16 << 8) | (1 << 16)


def pack(code, bits, lanes=1):
    return code | (bits << 8) | (lanes << 16)


_TO_NUMPY = {}
for _t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
           np.uint32, np.uint64, np.float16, np.float32, np.float64,
           np.bool_):
    _dt = np.dtype(_t)
    _TO_NUMPY[pack(_CODES[_dt.kind], _dt.itemsize * 8)] = _dt
_FROM_NUMPY = {dt: code for code, dt in _TO_NUMPY.items()}


def to_code(dtype):
    """The packed dtype of anything numpy.dtype() accepts, or "bfloat16"."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return BFLOAT16
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise InvalidArgument(InvalidArgument.code,
                              f"not a dtype: {dtype!r} ({e})") from None
    code = _FROM_NUMPY.get(dt)
    if code is None or not dt.isnative:
        raise InvalidArgument(InvalidArgument.code,
                              f"unsupported dtype {dt.str!r}: use a "
                              "native-endian bool, [u]int8..64 or "
                              "float16/32/64 (or 'bfloat16')")
    return code


def to_numpy(code):
    """The numpy dtype of a packed dtype; NotSupported for bfloat16."""
    dt = _TO_NUMPY.get(code)
    if dt is None:
        raise NotSupported(NotSupported.code, "numpy has no dtype for "
                           + ("bfloat16" if code == BFLOAT16 else hex(code))
                           + "; export it with __dlpack__ (e.g. to torch)")
    return dt


def name(code):
    """A printable name: the numpy name, or "bfloat16"."""
    dt = _TO_NUMPY.get(code)
    return dt.name if dt is not None else (
        "bfloat16" if code == BFLOAT16 else hex(code))
