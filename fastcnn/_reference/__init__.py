"""Plain-NumPy reference implementations of every fastcnn kernel.

These functions are the test oracle and the benchmark baseline, never the fast path. Each
convolution comes in two independent versions so that they can check each other:

* ``*_loops``: course-style, with explicit Python loops over output positions. Slow, but each
  line is one term of the formula in DESIGN.md section 3.
* ``*_im2col``: the input windows are copied into a column matrix (im2col) and the convolution
  becomes one matrix product; the input gradient scatters the columns back (col2im).

The reference functions assume valid input (matching shapes, one floating dtype, a kernel that fits
the padded input) and do not check it: the public ``fastcnn.functional`` API validates. They accept
any array layout and return arrays of the input dtype.

Notation (DESIGN.md section 2): ``x`` is ``(N, C, H, W)``, ``weight`` is ``(F, C, KH, KW)``,
``bias`` is ``(F,)``, stride ``(sh, sw)``, zero padding ``(ph, pw)``,
``OH = (H + 2*ph - KH) // sh + 1`` and ``OW = (W + 2*pw - KW) // sw + 1``.
"""

from .activation import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .lenet import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
