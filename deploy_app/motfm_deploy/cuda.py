"""The CUDA runtime Holoscan's core library links (``libcudart.so.13``), loaded from where pip puts it."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

# pip's nvidia-cuda-runtime (deploy_app/requirements.txt), under site-packages
CUDA_RUNTIME = Path("nvidia", "cu13", "lib", "libcudart.so.13")


def load_cuda_runtime() -> Path | None:
    """Loads pip's CUDA runtime into the process (``RTLD_GLOBAL``), so that Holoscan finds it on a machine without the
    CUDA 13 toolkit: the dynamic loader does not look in site-packages. Call it before anything imports Holoscan (the
    SDK, or ``import monai`` with the SDK installed). Returns the file loaded; None where pip's runtime is not on
    ``sys.path`` (the loader's own search then applies)."""
    for folder in sys.path:
        path = Path(folder) / CUDA_RUNTIME
        if path.is_file():
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            return path
    return None
