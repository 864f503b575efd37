"""Page-locked ("pinned") host buffers for the GPU path, without PyTorch or CuPy.

A numpy array's memory is registered with the CUDA runtime (cudaHostRegister), so ONNX Runtime's
host-to-device copies from it are direct DMA instead of a staged copy. Where no CUDA runtime loads
(a CPU-only machine) nothing is pinned and the same buffers work as ordinary memory.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys

import numpy as np

log = logging.getLogger(__name__)

_SONAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")
_cudart: ctypes.CDLL | None | bool = False  # False = not looked for yet


def cuda_runtime() -> ctypes.CDLL | None:
    """The CUDA runtime library, from the system or from the nvidia-* wheels onnxruntime-gpu uses."""
    global _cudart
    if _cudart is not False:
        return _cudart
    wheels = [p for base in sys.path for pattern in ("cu*", "cuda_runtime")
              for p in sorted(glob.glob(os.path.join(base, "nvidia", pattern, "lib", "libcudart.so*")))]
    for name in (*_SONAMES, *wheels):
        try:
            _cudart = ctypes.CDLL(name)
            _cudart.cudaHostRegister.restype = ctypes.c_int
            _cudart.cudaHostUnregister.restype = ctypes.c_int
            return _cudart
        except OSError:
            continue
    _cudart = None
    return None


def pin(array: np.ndarray) -> bool:
    """Page-lock `array`'s memory; False (and nothing changed) when CUDA cannot do it here."""
    lib = cuda_runtime()
    if lib is None or array.nbytes == 0:
        return False
    rc = lib.cudaHostRegister(ctypes.c_void_p(array.ctypes.data), ctypes.c_size_t(array.nbytes), ctypes.c_uint(0))
    if rc != 0:
        log.debug("cudaHostRegister failed (CUDA error %d); host buffers stay pageable", rc)
    return rc == 0


def unpin(array: np.ndarray) -> None:
    lib = cuda_runtime()
    if lib is not None:
        lib.cudaHostUnregister(ctypes.c_void_p(array.ctypes.data))
