"""The ModelshareError hierarchy: one class per MS_E* code of the library.

Every failing call raises the class of its code, carrying ``.code`` (the
negative MS_E* value), ``.name`` ("MS_EINVAL"...) and ``.message`` (the
library's last-error message for the object, or its description of the
code).  Codes the package does not know by name (a newer library) still get
a class of their own, named after the library's symbol.
"""
from ._lib import lib


class ModelshareError(Exception):
    """Base class of every error the library reports."""

    code = None  # set on each subclass

    def __init__(self, code, message=""):
        self.code = code
        self.name = lib.ms_err_name(code).decode()
        self.strerror = lib.ms_strerror(code).decode()
        self.message = message or self.strerror
        super().__init__(code, self.message)

    def __str__(self):
        return f"{self.name}: {self.message}"


# Known codes get readable names, and a builtin base where a caller would
# naturally catch one (``except ValueError`` around bad input, ``except
# MemoryError``).  The numbers are the library's, checked at import.
_KNOWN = {
    "MS_EINVAL": ("InvalidArgument", (ValueError,)),
    "MS_ENOMEM": ("OutOfMemory", (MemoryError,)),
    "MS_ETIMEDOUT": ("TimedOut", ()),
    "MS_EDEADLK": ("Deadlock", ()),
    "MS_EBUSY": ("Busy", ()),
    "MS_ENOENT": ("NotFound", ()),
    "MS_ELOAD": ("LoadFailed", ()),
    "MS_EIO": ("InputOutputError", ()),
    "MS_ENOSPC": ("NoSpace", ()),
    "MS_EQUOTA": ("QuotaExceeded", ()),
    "MS_EBADREGION": ("BadRegion", ()),
    "MS_ESTALE": ("StaleDescriptor", ()),
    "MS_ENOTSUP": ("NotSupported", ()),
    "MS_EACCES": ("PermissionDenied", ()),
    "MS_ERANGE": ("OutOfRange", (ValueError,)),
    "MS_ECANCELED": ("Cancelled", ()),  # 1.1
    "MS_EPIPE": ("ProducerGone", ()),  # 1.1
    "MS_EDISCONNECTED": ("Disconnected", (ConnectionError,)),  # 1.2
}
_V1_0 = [n for n in _KNOWN
         if n not in ("MS_ECANCELED", "MS_EPIPE", "MS_EDISCONNECTED")]

by_code = {}  # negative code -> class
by_name = {}  # "MS_EINVAL" -> class


def _generate():
    code = -1
    while True:
        name = lib.ms_err_name(code).decode()
        if name == "MS_UNKNOWN":
            break
        cls_name, bases = _KNOWN.get(name, (name[3:], ()))
        cls = type(cls_name, (ModelshareError,) + bases, {
            "code": code,
            "__doc__": f"{name} ({lib.ms_strerror(code).decode()}).",
            "__module__": __name__,
        })
        by_code[code] = cls
        by_name[name] = cls
        globals()[cls_name] = cls
        code -= 1


_generate()
missing = set(_V1_0) - set(by_name)
if missing:  # every library has had these
    raise ImportError(f"modelshare: library lacks error codes {missing}")


def error(code, message=""):
    """The exception instance for a negative MS_E* code."""
    cls = by_code.get(code, ModelshareError)
    return cls(code, message)


__all__ = ["ModelshareError", "error", "by_code", "by_name"] + [
    c.__name__ for c in by_code.values()]
