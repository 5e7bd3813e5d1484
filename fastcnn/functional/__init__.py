"""Validated functional API over the compiled kernels, one module per layer family.

Every public function checks its arguments in Python (raising ``ValueError`` or ``TypeError``
that names the offending value or shape), makes inputs C-contiguous (non-contiguous and read-only
arrays are accepted and copied only when needed), allocates the outputs and calls a kernel from
``fastcnn._kernels`` with the current thread count. Arrays are NCHW; one call uses one dtype,
float32 or float64, and returns that dtype. Each forward sits beside its backward:

* ``conv``: convolutions (``_kernels/conv.pyx``)
* ``pooling``: max and average pooling (``_kernels/pool.pyx``)
* ``activation``: element-wise activations (``_kernels/elementwise.pyx``)
* ``normalization``: batch norm; ``dropout``: dropout masks
* ``linear``: the matrix product of dense layers; ``loss``: losses

Shapes (``stride``, ``padding`` and ``kernel_size`` take an int or an ``(h, w)`` pair)::

    x (N, C, H, W)   weight (F, C, KH, KW)   bias (F,)   y (N, F, OH, OW)
    OH = (H + 2*padding_h - KH) // stride_h + 1
    OW = (W + 2*padding_w - KW) // stride_w + 1
"""

from . import activation as _activation
from . import conv as _conv
from . import dropout as _dropout
from . import linear as _linear
from . import loss as _loss
from . import normalization as _normalization
from . import pooling as _pooling
from .activation import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403

# A function may share its module's name (``linear``): the function wins, as in
# ``torch.nn.functional``; the module stays importable as ``fastcnn.functional.linear``.
__all__ = [name for m in (_activation, _conv, _dropout, _linear, _loss, _normalization, _pooling)
           for name in m.__all__]
