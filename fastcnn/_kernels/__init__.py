"""Compiled kernels, picked at import time for the running CPU.

Every kernel module is built from one ``.pyx`` source up to three times (see ``setup.py``):
``_generic`` for any CPU, ``_avx2`` with AVX2 + FMA, ``_avx512`` with AVX-512 as well. The widest
variant that was built and that the CPU supports is used. ``FASTCNN_KERNELS=generic`` (or
``avx2``, ``avx512``) overrides the choice, e.g. to compare them; asking for one the CPU or the
build lacks is an ImportError.
"""

import importlib
import os

try:
    from ._generic import _openmp as _probe
except ImportError:
    import pathlib as _pathlib

    _root = _pathlib.Path(__file__).resolve().parents[2]
    if (_root / "setup.py").exists():
        raise ImportError(
            f"fastcnn's compiled kernels are not built in this source tree ({_root}): Python "
            "imported the checkout's fastcnn/ instead of the installed package. Run fastcnn from "
            "another directory after `pip install .`, or build the kernels in place with "
            "`python setup.py build_ext --inplace`.") from None
    raise ImportError("fastcnn's compiled kernels are missing from this installation; reinstall "
                      "it with `pip install --force-reinstall fastcnn`") from None

_ORDER = ("avx512", "avx2", "generic")  # widest first
_CPU_OK = {"avx512": _probe.cpu_has_avx512, "avx2": _probe.cpu_has_avx2_fma,
           "generic": lambda: True}


def _built(variant):
    try:
        importlib.import_module(f"{__name__}._{variant}._openmp")
    except ImportError:
        return False
    return True


def _choose_variant():
    wanted = os.environ.get("FASTCNN_KERNELS", "").strip().lower()
    if wanted not in ("", "auto") + _ORDER:
        raise ImportError("FASTCNN_KERNELS must be 'generic', 'avx2', 'avx512' or 'auto', "
                          f"got {wanted!r}")
    if wanted in _ORDER:
        if not _built(wanted):
            raise ImportError(f"FASTCNN_KERNELS={wanted} but that variant was not built")
        if not _CPU_OK[wanted]():
            raise ImportError(f"FASTCNN_KERNELS={wanted} but this CPU does not support it")
        return wanted
    return next(v for v in _ORDER if _CPU_OK[v]() and _built(v))


VARIANT = _choose_variant()
_openmp = importlib.import_module(f"{__name__}._{VARIANT}._openmp")


def __getattr__(name):
    """Kernel modules (``conv``, ``pool``, ...) of the chosen variant, imported on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        module = importlib.import_module(f"{__name__}._{VARIANT}.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"no kernel module {name!r} in the {VARIANT} build") from None
    globals()[name] = module
    return module
