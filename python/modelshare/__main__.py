"""python3 -m modelshare: which library was loaded, and the versions."""
import sys

import numpy as np

import modelshare


def main():
    caps = modelshare.capabilities()
    print(f"modelshare {modelshare.__version__} (Python package)")
    print(f"library:   {modelshare.library_path}")
    print(f"found by:  {modelshare.library_source}")
    print(f"libmodelshare {modelshare.library_version}")
    print(f"python {sys.version.split()[0]} ({sys.executable}), "
          f"numpy {np.__version__}")
    print("shared memory: " + (
        f"available, {caps['shm_free_bytes'] >> 20} MiB free of "
        f"{caps['shm_total_bytes'] >> 20} MiB" if caps["shm_available"]
        else "NOT available (use serialize/deserialize)"))
    return 0


sys.exit(main())
