"""fastcnn: fast CPU training of small convolutional networks.

Cython + OpenMP kernels (``fastcnn.functional``) under PyTorch-style layers, a LeNet-5 model,
optimisers and a trainer.
"""

import sys as _sys

try:
    from ._kernels import _openmp as _omp
except ImportError as _exc:
    if _sys.argv[:1] == ["-m"]:  # `python -m fastcnn ...`: one sentence, no traceback
        _sys.exit(f"fastcnn: error: {_exc}")
    raise

from . import checkpoint, datasets, functional, io, nn
from ._threads import get_num_threads, set_num_threads
from .checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from .model import LeNet5
from .nn import *  # noqa: F401,F403  (every layer, as fastcnn.Conv2d and fastcnn.nn.Conv2d)
from .optim import SGD, Adam
from .train import Trainer, TrainingInterrupted, evaluate, plot_history

__version__ = "0.1.0"


def openmp_enabled():
    """True when the installed kernels were compiled with OpenMP (multithreaded)."""
    return _omp.openmp_enabled()


def kernel_isa():
    """The instruction set of the kernels in use: 'avx2+fma' or 'sse2' (or 'generic')."""
    return _omp.compiled_isa()


__all__ = [
    "functional", "datasets", "io", "get_num_threads", "set_num_threads", "openmp_enabled",
    "kernel_isa", "nn", *nn.__all__, "LeNet5", "SGD", "Adam", "Trainer", "TrainingInterrupted",
    "evaluate", "plot_history", "save_model", "load_model", "save_checkpoint", "load_checkpoint",
    "checkpoint", "__version__",
]
