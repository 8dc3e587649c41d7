"""modelshare: libmodelshare's shared-memory tensors from Python (ctypes).

    import modelshare, numpy as np
    with modelshare.Shm() as shm:
        a = shm.open(descriptor).numpy()    # zero copy, read-only

See Shm, Tensor, serialize/deserialize, capabilities and the errors module.
``library_path`` says which libmodelshare.so.1 was loaded and
``library_source`` how it was found; ``python3 -m modelshare`` prints both.
"""
from ._lib import library_path, library_source, version_string
from ._core import Shm, Tensor, capabilities, deserialize, serialize
from . import errors
from .errors import *  # noqa: F401,F403 (the exception classes)

__version__ = "1.2.0"
library_version = version_string()

__all__ = ["Shm", "Tensor", "serialize", "deserialize", "capabilities",
           "library_path", "library_source", "library_version",
           "errors"] + errors.__all__
