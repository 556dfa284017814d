"""Choosing and loading libnvrtc, the runtime compiler the CUDA path builds its kernels with.

The CUDA major version of the NVRTC matters, not just which one is newest. NVRTC emits code for
its own CUDA release: a CUBIN (or PTX) from an NVRTC of a newer major version than the driver
supports can be rejected when the driver loads it (``CUDA_ERROR_UNSUPPORTED_PTX_VERSION``, "no
kernel image is available", ...), even though it compiled fine. An environment may hold several
(``nvidia/cuda_nvrtc/lib/libnvrtc.so.12`` from a CUDA 12 wheel next to
``nvidia/cu13/lib/libnvrtc.so.13`` pulled in by another package), and "newest first" then picks
one the driver may not run. The CUDA major torch was built with is the best evidence available
without touching the GPU: torch's own kernels, built with that toolkit, run on the user's driver.
So the NVRTC of that major comes first, then the others, newest first. torch is never imported
here for this (it is slow, and torch may be absent); its version is read only if the caller has
imported it already.

``$SGPO_RS_NVRTC`` (a path to a libnvrtc) overrides the choice.

The library is loaded with ``RTLD_GLOBAL``; the Rust core then opens libnvrtc by soname, and the
dynamic loader answers with the already loaded library whose soname matches. The core tries, in
order, ``libnvrtc.so``, then ``libnvrtc.so.<major it was built for>`` (13), ``.12``, ``.11``,
``.10``, ``.9``, ``.1``: a library found under an earlier name on the loader's search path
(``LD_LIBRARY_PATH``, ``ldconfig``) wins over the one loaded here.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import sys
import threading
from typing import List, Optional, Tuple

# Where the NVIDIA wheels put libnvrtc: ``nvidia-cuda-nvrtc`` for CUDA 13 (and the ``cu13``
# metapackages) in ``nvidia/cu13/lib``, the CUDA 12 and 11 wheels in ``nvidia/cuda_nvrtc/lib``.
_PATTERNS = ("nvidia/cu[0-9]*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*")
_SONAME_MAJOR = re.compile(r"^libnvrtc\.so\.(\d+)")
_FOLDER_MAJOR = re.compile(r"(?:^|/)nvidia/cu(\d+)/lib/[^/]*$")

_LOCK = threading.Lock()
_HANDLE: Optional[ctypes.CDLL] = None
_PATH: Optional[str] = None


def _major(path: str) -> Optional[int]:
    """The CUDA major version of a libnvrtc: from its soname, else from its ``nvidia/cuXY/``
    folder; None when neither tells."""
    found = _SONAME_MAJOR.match(os.path.basename(path))
    if found is None:
        found = _FOLDER_MAJOR.search(path.replace(os.sep, "/"))
    return int(found.group(1)) if found else None


def candidates(preferred_major: Optional[int] = None) -> List[str]:
    """The libnvrtc files to try, best first: ``$SGPO_RS_NVRTC``, then those of the
    Python environment (``sys.path``) whose CUDA major is ``preferred_major``, then the others,
    newest major first (those of unknown major last). libnvrtc-builtins is left out; within one
    major, ``sys.path`` order is kept and the soname (``libnvrtc.so.12``) comes before fuller
    names (``libnvrtc.so.12.8.93``)."""
    out: List[str] = []
    explicit = os.environ.get("SGPO_RS_NVRTC")
    if explicit:
        out.append(explicit)
    found: List[Tuple[Tuple[int, int, int, int, str], str]] = []
    seen = set(out)
    for order, entry in enumerate(sys.path):
        if not isinstance(entry, str) or not entry:
            continue
        for pattern in _PATTERNS:
            for path in glob.glob(os.path.join(entry, pattern)):
                if "builtins" in os.path.basename(path) or path in seen:
                    continue
                seen.add(path)
                major = _major(path)
                rank = 0 if major is not None and major == preferred_major else 1
                newest = -major if major is not None else 1
                key = (rank, newest, order, len(os.path.basename(path)), path)
                found.append((key, path))
    found.sort()
    out.extend(path for _, path in found)
    return out


def torch_cuda_major() -> Optional[int]:
    """The CUDA major version torch was built with, if torch is already imported and is a CUDA
    build; None otherwise. Never imports torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    if not isinstance(cuda, str):
        return None
    try:
        return int(cuda.split(".")[0])
    except ValueError:
        return None


def load() -> Optional[str]:
    """Loads the best libnvrtc (see :func:`candidates`, preferring torch's CUDA major) globally,
    once per process, and returns its path; None when none loads (then the system's library
    path has to provide it). A failure is not remembered: a later call tries again."""
    global _HANDLE, _PATH
    with _LOCK:
        if _HANDLE is not None:
            return _PATH
        for path in candidates(torch_cuda_major()):
            try:
                handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            _HANDLE, _PATH = handle, path
            return path
        return None
