"""Compiled kernels, picked at import time for the running CPU.

Every kernel module is built twice from one ``.pyx`` source (see ``setup.py``): ``_generic``
for any x86-64 (or other) CPU, and ``_avx2`` with AVX2 + FMA. The AVX2 build is used when it
was built and the CPU supports both instruction sets; ``FASTCNN_KERNELS=generic`` (or ``avx2``)
overrides the choice, e.g. to compare the two.
"""

import importlib
import os

from ._generic import _openmp as _probe

_NAMES = ("conv", "pool", "elementwise", "_openmp")


def _choose_variant():
    wanted = os.environ.get("FASTCNN_KERNELS", "").strip().lower()
    if wanted not in ("", "auto", "generic", "avx2"):
        raise ImportError(f"FASTCNN_KERNELS must be 'generic', 'avx2' or 'auto', got {wanted!r}")
    if wanted == "generic":
        return "generic"
    try:
        importlib.import_module(f"{__name__}._avx2._openmp")
    except ImportError:
        if wanted == "avx2":
            raise ImportError("FASTCNN_KERNELS=avx2 but the AVX2 kernels were not built") from None
        return "generic"
    if not _probe.cpu_has_avx2_fma():
        if wanted == "avx2":
            raise ImportError("FASTCNN_KERNELS=avx2 but this CPU lacks AVX2 or FMA")
        return "generic"
    return "avx2"


VARIANT = _choose_variant()
conv, pool, elementwise, _openmp = (
    importlib.import_module(f"{__name__}._{VARIANT}.{name}") for name in _NAMES
)

__all__ = ["VARIANT", "conv", "pool", "elementwise", "_openmp"]
