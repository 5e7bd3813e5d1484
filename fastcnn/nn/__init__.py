"""Layers with PyTorch's names, arguments and layouts, one module per family (as
``torch/nn/modules/``): each layer sits one hop from its functional form
(``fastcnn.functional.<family>``), its kernel (``fastcnn/_kernels``), its NumPy twin
(``fastcnn._reference.<family>``) and its tests (``tests/test_<family>.py``).

* ``module``: ``Module`` (the contract every layer follows) and ``Parameter``
* ``container``: ``Sequential`` (plans fusions, owns reused work arrays)
* ``conv``, ``pooling``, ``activation``, ``normalization``, ``dropout``, ``linear``, ``loss``
"""

from . import activation, container, conv, dropout, linear, loss, module, normalization, pooling
from .activation import *  # noqa: F401,F403
from .container import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .module import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403

__all__ = (module.__all__ + container.__all__ + conv.__all__ + pooling.__all__
           + activation.__all__ + normalization.__all__ + dropout.__all__ + linear.__all__
           + loss.__all__)
