"""The CUDA runtime Holoscan's core library links (``libcudart.so.13``), loaded from where pip puts it."""

from __future__ import annotations

import ctypes
import sys
import sysconfig
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


# one line of a .pth file: Python runs it at every start of the environment, before any import of Holoscan
STARTUP_HOOK = (
    f"import ctypes, os, sysconfig; p = os.path.join(sysconfig.get_path('purelib'), {str(CUDA_RUNTIME)!r}); "
    "os.path.isfile(p) and ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)\n"
)


def install_startup_hook() -> Path:
    """Writes ``STARTUP_HOOK`` as ``motfm_cuda_runtime.pth`` into this Python's site-packages, so that every process of
    the environment (``import monai`` in a bundle workflow or a test, not only the app) finds pip's CUDA runtime on a
    machine without the CUDA 13 toolkit. Returns the file written."""
    path = Path(sysconfig.get_path("purelib"), "motfm_cuda_runtime.pth")
    path.write_text(STARTUP_HOOK)
    return path


if __name__ == "__main__":  # python deploy_app/motfm_deploy/cuda.py: install the hook into the running environment
    print(f"wrote {install_startup_hook()}")
