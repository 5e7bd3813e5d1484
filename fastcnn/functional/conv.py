"""Convolutions and transposed convolutions: forward, input gradient and weight gradient
(kernels: ``_kernels/conv.pyx``; formulas: DESIGN.md section 3; twins: ``fastcnn._reference.conv``).

Every function accepts stride, padding, dilation and groups as PyTorch does. Internally the
padding is always four numbers (top, bottom, left, right): ``padding='same'`` with an even
effective kernel puts the extra row/column at the bottom/right, as PyTorch.

Algorithms (chosen by shape; ``_force_algo`` forces one, for tests):

* ``"tiles"``: the positions-on-lanes register tiles (phase planes, packed weights, wide
  rows), any shape;
* ``"lanes"``: the filters-on-lanes register tiles over the real output positions, for the
  forward pass and the stride-1 input gradient (a forward pass over the zero-bordered output
  gradient with the weight turned by 180 degrees and channels and filters exchanged); chosen
  over ``"tiles"`` by a product count weighted with measured speeds (``_LANES_EDGE``);
* ``"direct"``: the plain definitions, leaving out every product with padding or a stride gap;
  used automatically for the input gradient when a weight is inf or NaN, so that such a weight
  poisons only the input positions it really touches (as in PyTorch);
* ``"matmul"``: a kernel that covers the whole unpadded input (LeNet's C5, groups 1) is one
  matrix product over the batch.

Size limits: every padded plane and every output plane must hold fewer than 2**31 elements and
every hyper-parameter must be below 2**31; anything larger is refused with a ValueError before
any allocation (whatever the batch size, N = 0 included).

Workspaces: the kernels never allocate. Their scratch (phase planes, packed weights, partial
sums) comes from a ``_Workspace``: a fresh one per call for these public functions, one owned
by the layer for ``Conv2d`` / ``ConvTranspose2d``, so a training step reuses its buffers. A
layer (and so a model) must therefore not run forward/backward from two Python threads at once;
the public functions here are safe to call concurrently.

Plans: what a call works out from the shapes alone (the algorithm, tile shapes, tap offsets,
buffer views, the dtype's kernel functions) is a ``_Plan`` kept on the geometry object, which a
layer reuses while its input shape stays the same; a repeated call then runs only the kernels
(issue 9: at batch 1 this Python was as long as the kernels). The key holds the thread count
and the forced algorithm, so changing either plans again; results are the same kernels' either
way (tested bitwise).
"""

import contextlib

import numpy as np

from .. import _kernels
from .._threads import get_num_threads
from ._snapshot import _Snapshot
from ._validate import _array, _check_grad, _int, _nonempty
from ._validate import _pair as _vpair
from .linear import _bind_linear, _gemm_into, _linear_into

__all__ = ["conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_output_size",
           "conv_transpose2d", "conv_transpose2d_backward_input",
           "conv_transpose2d_backward_weight", "conv_transpose2d_output_size"]

_LIMIT = 2 ** 31  # largest plane (elements) and hyper-parameter accepted
_SLACK = 256      # elements after each scratch buffer: the last tile's vector loads stay inside
_ALGOS = ("tiles", "lanes", "direct", "matmul", "rows", "dw")
_forced = None


@contextlib.contextmanager
def _force_algo(name):
    """Test-only: run every convolution kernel with algorithm ``name`` (``"tiles"``,
    ``"direct"``, ``"lanes"`` for the forward pass and the stride-1 input gradient, ``"matmul"``
    where the kernel covers the input; where a forced algorithm does not apply, ``"tiles"``)."""
    global _forced
    if name not in _ALGOS:
        raise ValueError(f"algo must be one of {_ALGOS}, got {name!r}")
    old, _forced = _forced, name
    try:
        yield
    finally:
        _forced = old


class _Workspace:
    """Grow-only scratch buffers by name (flat arrays); ``get`` returns a view of the size asked.
    Not thread-safe: one workspace per layer, used by one call at a time. ``writers[name]`` is
    the _PackCache that last packed weights into a buffer of that name."""

    def __init__(self):
        self._bufs = {}
        self.writers = {}

    def get(self, name, size, dtype):
        size = int(size) + _SLACK
        buf = self._bufs.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(size, dtype=dtype)
            self._bufs[name] = buf
        return buf[:size]


class _PackCache:
    """Whether a planned forward's packed-weight buffer still holds the packing of this weight
    (and bias), so that an eval-mode layer packs once, not at every call: 73,728 weights of a
    64 -> 128 3x3 layer take longer to pack than the batch-1 convolution takes to run.

    Valid when the caller asks for it (``keep``: an eval-mode layer with reused buffers), the
    arrays hold the same bytes as when they were packed (snapshots, one memcmp each) and no
    other plan has packed into a buffer of the same name since (``_Workspace.writers``: plans
    of other input shapes may share the buffer, or hold an older one; any other writer makes
    the next call pack again)."""

    __slots__ = ("ws", "name", "snaps")

    def __init__(self, ws, name):
        self.ws, self.name, self.snaps = ws, name, None

    def valid(self, keep, arrays):
        snaps = self.snaps
        if not keep or snaps is None or self.ws.writers.get(self.name) is not self:
            return False
        for snap, a in zip(snaps, arrays):
            if not snap.same(a):
                return False
        return True

    def packed(self, keep, arrays):
        """Record that the buffer now holds the packing of ``arrays``."""
        self.ws.writers[self.name] = self
        if not keep:
            self.snaps = None
        elif self.snaps is not None and all(s.same_layout(a) for s, a in zip(self.snaps, arrays)):
            for s, a in zip(self.snaps, arrays):
                s.update(a)
        else:
            self.snaps = tuple(_Snapshot(a) for a in arrays)


# ---------------------------------------------------------------------------------------------
# Argument handling
# ---------------------------------------------------------------------------------------------

def _hyper(value, name, minimum):
    pair = _vpair(value, name, minimum)
    if max(pair) >= _LIMIT:
        raise ValueError(f"{name} must be < 2**31, got {value!r}")
    return pair


def _padding4(padding, kernel_size, dilation, stride):
    """(top, bottom, left, right) from an int, a pair, 'valid' or 'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' is not supported for strided convolutions "
                                 f"(stride {stride})")
            th = dilation[0] * (kernel_size[0] - 1)
            tw = dilation[1] * (kernel_size[1] - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = _hyper(padding, "padding", 0)
    return (ph, ph, pw, pw)


def _out_size(H, W, kernel_size, stride, pad4, dilation):
    """(OH, OW), or ValueError when the dilated kernel does not fit the padded input or a plane
    would exceed the size limit."""
    pt, pb, pl, pr = pad4
    HP, WP = H + pt + pb, W + pl + pr
    eh = dilation[0] * (kernel_size[0] - 1) + 1
    ew = dilation[1] * (kernel_size[1] - 1) + 1
    if HP * WP >= _LIMIT:
        raise ValueError(f"padded input plane {HP}x{WP} is too large (input {(H, W)}, padding "
                         f"{pad4}): at most 2**31 - 1 elements per plane")
    if eh > HP or ew > WP:
        raise ValueError(f"kernel {tuple(kernel_size)} is larger than the padded input "
                         f"{(HP, WP)} (dilation {tuple(dilation)}: extent {(eh, ew)}; input "
                         f"{(H, W)}, padding (top, bottom, left, right) {pad4})")
    return (HP - eh) // stride[0] + 1, (WP - ew) // stride[1] + 1


def conv2d_output_size(input_size, kernel_size, stride=1, padding=0, dilation=1):
    """(OH, OW) of a convolution; ValueError if the kernel does not fit.

    ``OH = (H + pad_top + pad_bottom - dilation*(KH-1) - 1) // stride + 1``, the same for OW;
    ``padding`` may be an int, a pair, 'valid' or 'same'.
    """
    H, W = _hyper(input_size, "input_size", 1)
    kernel_size = _hyper(kernel_size, "kernel_size", 1)
    stride = _hyper(stride, "stride", 1)
    dilation = _hyper(dilation, "dilation", 1)
    pad4 = _padding4(padding, kernel_size, dilation, stride)
    return _out_size(H, W, kernel_size, stride, pad4, dilation)


def _groups(groups, C, F, what="x"):
    groups = _int(groups, "groups")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if C % groups:
        raise ValueError(f"groups={groups} does not divide the {C} input channels of {what}")
    if F % groups:
        raise ValueError(f"groups={groups} does not divide the {F} output channels")
    return groups


class _Conv:
    """The validated geometry of one convolution (private: fields are trusted downstream)."""

    __slots__ = ("N", "C", "H", "W", "F", "KH", "KW", "OH", "OW", "stride", "pad4", "dilation",
                 "groups", "plans")

    def __init__(self, N, C, H, W, F, KH, KW, stride, pad4, dilation, groups):
        self.N, self.C, self.H, self.W, self.F, self.KH, self.KW = N, C, H, W, F, KH, KW
        self.stride, self.pad4, self.dilation, self.groups = stride, pad4, dilation, groups
        self.plans = None  # _Plan by (kind, dtype, threads, forced algorithm, ...): see _plan
        self.OH, self.OW = _out_size(H, W, (KH, KW), stride, pad4, dilation)
        if self.OH * self.OW >= _LIMIT:
            raise ValueError(f"output plane {self.OH}x{self.OW} is too large")

    def covers_input(self):
        return (self.pad4 == (0, 0, 0, 0) and self.groups == 1 and self.KH == self.H
                and self.KW == self.W)


def _geometry(x_shape, w_shape, stride, padding, dilation, groups, pad4=None):
    """Validate hyper-parameters against the shapes; return a _Conv (for conv2d's view).
    ``pad4`` (top, bottom, left, right), when given, replaces ``padding``."""
    stride = _hyper(stride, "stride", 1)
    dilation = _hyper(dilation, "dilation", 1)
    KH, KW = w_shape[2], w_shape[3]
    if pad4 is None:
        pad4 = _padding4(padding, (KH, KW), dilation, stride)
    N, C, H, W = x_shape
    F = w_shape[0]
    groups = _groups(groups, C, F)
    if w_shape[1] * groups != C:
        raise ValueError(f"weight {tuple(w_shape)} expects {w_shape[1] * groups} input channels "
                         f"(weight.shape[1] * groups = {w_shape[1]} * {groups}) but x has {C} "
                         f"(shape {tuple(x_shape)})")
    return _Conv(N, C, H, W, F, KH, KW, stride, pad4, dilation, groups)


def _algo(g, kind, dtype=None, weight=None):
    """Algorithm for one kernel call (see the module docstring); ``weight`` None: a finite one.
    ``dtype`` is needed for the forward pass and the input gradient."""
    if _forced is not None:
        if (_forced == "matmul" and not g.covers_input()
                or _forced == "lanes" and not _lanes_ok(g, kind)):
            return "tiles"
        if _forced == "rows" and kind != "weight" or _forced == "dw" and not _dw_ok(g, kind):
            return "tiles"
        return _forced
    if g.covers_input():
        return "matmul"
    if kind == "input" and weight is not None and \
            not _kernels.conv.all_finite(weight.reshape(-1)):
        return "direct"
    if kind != "weight" and _lanes_ok(g, kind):
        lanes, tiles = _lanes_cost(g, kind, dtype), _tiles_cost(g, kind, dtype)
        return "lanes" if lanes < tiles else "tiles"
    return "tiles"


def _lanes_ok(g, kind):
    """The filters-on-lanes kernel runs the forward pass, and the input gradient at stride 1."""
    return kind == "forward" or kind == "input" and g.stride == (1, 1)


# Measured (1 thread, AVX2, batch 64): per product computed, the filters-on-lanes tiles run
# 1.5-3x faster than the positions-on-lanes tiles (scalar broadcasts of the input instead of
# unaligned vector loads, only real output positions, the epilogue in C); the latter win only
# when few filters (forward) or few channels (input gradient) leave most filter lanes empty,
# e.g. LeNet's C1 (6 filters) and the input gradients of C1, C3 and 1->16 @28. The
# one-vector tile (fc_flanes6x1, for at most a vector's lanes of filters) has that edge with
# 64-byte vectors only: with 32-byte vectors its 6 accumulators leave the FMA pipes waiting
# (AVX2 build, batch 64: LeNet's C1 forward and C3 input gradient 1.8-2x the time of the
# positions-on-lanes tiles with it, at 6 of 8 filter lanes used).
_LANES_EDGE = 1.5


def _tiles_cost(g, kind, dtype):
    """Products the positions-on-lanes tiles compute (wide rows, padded filter or channel rows)."""
    M = (g.F if kind == "forward" else g.C) // g.groups
    MR, NR = _kernels.conv.gtile_shape(M, dtype == np.float64)
    if kind == "forward":
        _, WPh = _phase_sizes(g)
        T = (g.OH - 1) * WPh + g.OW
    else:  # stride 1: wide rows of the zero-bordered dy
        GW = (g.KW - 1) * g.dilation[1] + max(g.pad4[2] + g.W, g.OW)
        T = (g.pad4[0] + g.H - 1) * GW + g.pad4[2] + g.W
    return -(-T // NR) * NR * -(-M // MR) * MR


def _lanes_cost(g, kind, dtype):
    """Products the filters-on-lanes tiles compute (whole tiles of output positions, padded
    filter vectors), divided by their speed per product relative to the positions-on-lanes
    tiles (``_LANES_EDGE``)."""
    M, P = (g.F, g.OH * g.OW) if kind == "forward" else (g.C, g.H * g.W)
    M //= g.groups
    NP, NF = _kernels.conv.ftile_shape(dtype == np.float64, M)
    edge = _LANES_EDGE if NF * np.dtype(dtype).itemsize >= 64 else 1.0  # 64 bytes of filters
    return -(-P // NP) * NP * -(-M // NF) * NF / edge


def _phase_sizes(g):
    sh, sw = g.stride
    pt, pb, pl, pr = g.pad4
    return -(-(g.H + pt + pb) // sh), -(-(g.W + pl + pr) // sw)


def _phase_planes(x, g, ws, NR):
    """The input as zero-padded stride-phase planes (flat), and their (HPh, WPh). A stride-1,
    unpadded input whose wide rows hold at least one tile is used as it is."""
    xs, HPh, WPh = _phase_plan(g, x.dtype, ws, NR)
    if xs is None:
        return x.reshape(-1), HPh, WPh, True
    _kernels.conv.pad_split(x, xs, g.pad4[0], g.pad4[2], g.stride[0], g.stride[1], HPh, WPh,
                            get_num_threads())
    return xs, HPh, WPh, False


def _phase_plan(g, dtype, ws, NR):
    """(xs, HPh, WPh): the buffer for the phase planes of the input (None when the input is
    read as it is: stride 1, no padding, wide rows of at least NR positions) and their size."""
    sh, sw = g.stride
    if (sh, sw) == (1, 1) and g.pad4 == (0, 0, 0, 0) and (g.OH - 1) * g.W + g.OW >= NR:
        return None, g.H, g.W
    HPh, WPh = _phase_sizes(g)
    return ws.get("xs", g.N * g.C * sh * sw * HPh * WPh, dtype), HPh, WPh


# ---------------------------------------------------------------------------------------------
# Kernels on validated arguments (used by the layers)
# ---------------------------------------------------------------------------------------------

def _conv2d_into(x, weight, bias, y, g, relu=False, ws=None, keep=False):
    """y = conv2d(x, weight, bias) (then ReLU); arguments validated, y preallocated, ``g`` the
    geometry.
    ``keep``: the weight and bias are likely the same at the next call (an eval-mode layer), so
    keep their packing and reuse it while they hold the same bytes (``_PackCache``)."""
    if bias is None:
        bias = np.zeros(g.F, dtype=x.dtype)
    if g.N == 0:
        return y
    _plan(g, "forward", x.dtype, ws).run(weight)(x, weight, bias, y, bool(relu), keep)
    return y


def _conv2d_backward_input_into(grad_y, weight, grad_x, g, ws=None):
    """grad_x = input gradient of conv2d; arguments validated, grad_x preallocated."""
    if g.N == 0:
        return grad_x
    _plan(g, "input", grad_y.dtype, ws).run(weight)(grad_y, weight, grad_x)
    return grad_x


class _Plan:
    """One kernel kind (forward, input gradient or weight gradient) planned for one geometry,
    dtype and thread count: the algorithm and everything that depends on the shapes only (tile
    shapes, tap offsets, work buffers, the dtype's kernels), made once and kept on the geometry,
    so that a layer's repeated calls run only the kernels (issue 9: less Python per step).

    ``run(weight)`` gives the call to make: the planned one, or, when the choice depends on the
    weight holding only finite values (the depthwise kernels; the input gradient, whose
    "direct" path keeps a NaN weight's effect to the positions it touches) and it does not,
    the one planned for a non-finite weight."""

    __slots__ = ("ws", "algo", "fallback_algo", "n_threads", "_check", "_runs", "_g", "_kind",
                 "_dtype")

    def __init__(self, g, kind, dtype, ws, n_threads):
        self.ws, self._g, self._kind, self._dtype, self.n_threads = ws, g, kind, dtype, n_threads
        if kind == "weight":
            self.algo, self._check = _weight_algo(g), False
        elif _dw_ok(g, kind) and (_forced is None or _forced == "dw"):
            self.algo, self._check = "dw", _forced is None
        else:
            self.algo = _algo(g, kind, dtype)
            self._check = kind == "input" and _forced is None and self.algo != "matmul"
        # what a non-finite weight gets (only when _check): the general kernels (the dw kernels
        # multiply weights with padding zeros), "direct" for the input gradient
        self.fallback_algo = self.algo if not self._check else \
            "direct" if kind == "input" else _algo(g, kind, dtype)
        self._runs = {self.algo: _BUILD[kind](self.algo, g, dtype, ws, n_threads)}

    def algo_for(self, weight):
        """The algorithm a call with this weight runs."""
        if not self._check or _kernels.conv.all_finite(weight.reshape(-1)):
            return self.algo
        return self.fallback_algo

    def bind(self, y, relu):
        """f(x, weight, bias): the forward with y and relu fixed, for a layer's
        repeated eval-mode calls (``_build_forward``), or None when the algorithm has no bound
        form or depends on the weight (then ``run``)."""
        if self._kind != "forward" or self._check:
            return None
        bind = getattr(self._runs[self.algo], "bind", None)
        return None if bind is None else bind(y, relu)

    def run(self, weight):
        """The call to make with this weight: ``run(weight)(x, weight, ...)``."""
        algo = self.algo_for(weight)
        fn = self._runs.get(algo)
        if fn is None:
            fn = self._runs[algo] = _BUILD[self._kind](algo, self._g, self._dtype, self.ws,
                                                       self.n_threads)
        return fn


_generation = 0  # part of every plan's key: _invalidate_plans makes all of them stale


def _invalidate_plans():
    """Make every plan stale, so that the next call plans again (and looks the kernels up
    again: a benchmark's call timer replaces them with wrappers)."""
    global _generation
    _generation += 1


def _plan(g, kind, dtype, ws):
    """The _Plan of this call, from ``g``'s cache when a plan was made for the same kind, dtype,
    thread count, forced algorithm and workspace (a layer's repeated calls)."""
    key = (kind, dtype, get_num_threads(), _forced, _generation)
    plans = g.plans
    if plans is None:
        plans = g.plans = {}
    plan = plans.get(key)
    if plan is None or plan.ws is not ws or ws is None:
        plan = plans[key] = _Plan(g, kind, dtype, ws if ws is not None else _Workspace(),
                                  key[2])
    return plan


def _spec(fn, dtype):
    """The dtype's specialisation of a fused-type kernel (skips the per-call dispatch)."""
    return fn["double" if dtype == np.float64 else "float"]


def _build_forward(algo, g, dtype, ws, n_threads):
    """run(x, weight, bias, y, relu, keep) of one planned forward algorithm. The tiled, lanes
    and matmul algorithms also have ``run.bind(y, relu)``: f(x, weight, bias), the same call
    with y and relu fixed and keep on, through the kernels' bound calls
    (``_kernels/_bound.pxi``: the arrays' pointers taken once, not at every call)."""
    K = _kernels.conv
    sh, sw = g.stride
    pt, pb, pl, pr = g.pad4
    dh, dw = g.dilation
    G, C, F, N = g.groups, g.C, g.F, g.N
    Fg, Cg = F // G, C // G
    Kg = Cg * g.KH * g.KW
    if algo == "dw":
        HPh, WPh = _phase_sizes(g)
        fwd = _spec(_kernels.dwconv.forward, dtype)
        return lambda x, w, b, y, relu, keep: fwd(x, w, b, y, sh, sw, pt, pl, dh, dw, HPh,
                                                      WPh, relu, n_threads)
    if algo == "matmul":
        def run(x, w, b, y, relu, keep):
            y2 = y.reshape(N, F)
            _linear_into(x.reshape(N, -1), w.reshape(F, -1), y2)
            y2 += b
            if relu:
                np.maximum(y2, 0, out=y2)  # NaN stays NaN

        def bind(y, relu):
            bound = [None, None, None]  # (w, b, the bound product made for them)

            def product(w, b):
                if bound[0] is not w or bound[1] is not b:
                    bound[:] = w, b, _bind_linear(w.reshape(F, -1), b, y.reshape(N, F), relu)
                return bound[2]

            def f(x, w, b):
                product(w, b)(x)

            def link(w, b):  # (chain link, its owner, checks): see nn.container
                call = product(w, b)
                return call.link(), call, []
            f.link = link
            return f
        run.bind = bind
        return run
    if algo == "direct":
        fd = _spec(K.forward_direct, dtype)
        return lambda x, w, b, y, relu, keep: fd(x, w, b, y, sh, sw, pt, pl, dh, dw, G,
                                                     relu, n_threads)
    split = _spec(K.pad_split, dtype)
    off = np.empty(Kg, dtype=np.intp)  # the plan's own: filled once
    if algo == "lanes":
        _, NF = K.ftile_shape(dtype == np.float64, Fg)
        xs, HPh, WPh = _phase_plan(g, dtype, ws, 0)  # reads real outputs' taps only
        nfb = -(-Fg // NF)
        wpk = ws.get("apack", G * nfb * NF * Kg, dtype)
        bpk = ws.get("bpack", G * nfb * NF, dtype)
        pack, fwd = _spec(K.pack_forward_lanes, dtype), _spec(K.forward_lanes, dtype)
        packed = _PackCache(ws, "apack")

        def ensure_packed(keep, w, b):
            if not packed.valid(keep, (w, b)):
                pack(w, b, wpk, bpk, G, NF, False)
                packed.packed(keep, (w, b))

        def run(x, w, b, y, relu, keep):
            if xs is not None:
                split(x, xs, pt, pl, sh, sw, HPh, WPh, n_threads)
            ensure_packed(keep, w, b)
            fwd(x.reshape(-1) if xs is None else xs, wpk, bpk, off, y, C, sh, sw, HPh, WPh,
                G, NF, relu, n_threads)

        def bind(y, relu):
            call = K.BoundForward(True, (N, C, g.H, g.W), xs, wpk, bpk, off, y, sh, sw, HPh,
                                  WPh, G, 0, 0, NF, pt, pl, relu, n_threads)
            return _bound_forward(call, ensure_packed, ws, packed)
    else:
        MR, NR = K.gtile_shape(Fg, dtype == np.float64)
        xs, HPh, WPh = _phase_plan(g, dtype, ws, NR)
        apack = ws.get("apack", G * -(-Fg // MR) * MR * Kg, dtype)
        pack, fwd = _spec(K.pack_forward, dtype), _spec(K.forward, dtype)
        packed = _PackCache(ws, "apack")

        def ensure_packed(keep, w, b):  # (the tiles read the bias unpacked)
            if not packed.valid(keep, (w,)):
                pack(w, apack, G, MR)
                packed.packed(keep, (w,))

        def run(x, w, b, y, relu, keep):
            if xs is not None:
                split(x, xs, pt, pl, sh, sw, HPh, WPh, n_threads)
            ensure_packed(keep, w, b)
            fwd(x.reshape(-1) if xs is None else xs, apack, off, b, y, C, sh, sw, HPh, WPh, G,
                MR, NR, relu, n_threads)

        def bind(y, relu):
            call = K.BoundForward(False, (N, C, g.H, g.W), xs, apack, None, off, y, sh, sw,
                                  HPh, WPh, G, MR, NR, 0, pt, pl, relu, n_threads)
            return _bound_forward(call, ensure_packed, ws, packed)
    K.forward_offsets(Cg, g.KH, g.KW, sh, sw, dh, dw, HPh, WPh, off)
    run.bind = bind
    return run


def _bound_forward(call, ensure_packed, ws, packed):
    """f(x, w, b) of a tiled forward's bound call: the weights packed when they changed, then
    the call; ``f.link(w, b)``: the same call as a chain link (nn.container's frozen forward),
    its owner and the check that the packed buffer still holds these weights."""
    def f(x, w, b):
        ensure_packed(True, w, b)
        call(x, b)

    def link(w, b):
        ensure_packed(True, w, b)
        return call.link(b), call, [lambda: ws.writers.get(packed.name) is packed]
    f.link = link
    return f


def _build_input(algo, g, dtype, ws, n_threads):
    """run(grad_y, weight, grad_x) of one planned input-gradient algorithm."""
    K = _kernels.conv
    sh, sw = g.stride
    pt, pb, pl, pr = g.pad4
    dh, dw = g.dilation
    G, C, F, N = g.groups, g.C, g.F, g.N
    Fg, Cg = F // G, C // G
    Kf = Fg * g.KH * g.KW
    split = _spec(K.pad_split, dtype)
    if algo == "dw":
        bi = _spec(_kernels.dwconv.backward_input, dtype)
        return lambda gy, w, gx: bi(gy, w, gx, pt, pl, dh, dw, n_threads)
    if algo == "matmul":
        return lambda gy, w, gx: _gemm_into(gy.reshape(N, F), w.reshape(F, -1),
                                            gx.reshape(N, -1))
    if algo == "direct":
        bd = _spec(K.backward_input_direct, dtype)
        return lambda gy, w, gx: bd(gy, w, gx, sh, sw, pt, pl, dh, dw, G, n_threads)
    if algo == "lanes":  # stride 1: full correlation of padded dy with the turned weight
        _, NF = K.ftile_shape(dtype == np.float64, Cg)
        eh, ew = (g.KH - 1) * dh, (g.KW - 1) * dw
        HPh, WPh = g.H + eh, g.W + ew
        # top/left border eh - pt, ew - pl (< 0: rows/columns of dy no dx reaches)
        gs = None if (eh - pt, ew - pl, HPh, WPh) == (0, 0, g.OH, g.OW) else \
            ws.get("gpad", N * F * HPh * WPh, dtype)
        off = np.empty(Kf, dtype=np.intp)
        K.forward_offsets(Fg, g.KH, g.KW, 1, 1, dh, dw, HPh, WPh, off)
        ncb = -(-Cg // NF)
        wpk = ws.get("apack_in", G * ncb * NF * Kf, dtype)
        bpk = ws.get("bpack_in", G * ncb * NF, dtype)
        zeros = np.zeros(C, dtype=dtype)
        pack, fwd = _spec(K.pack_forward_lanes, dtype), _spec(K.forward_lanes, dtype)

        def run(gy, w, gx):
            if gs is not None:
                split(gy, gs, eh - pt, ew - pl, 1, 1, HPh, WPh, n_threads)
            pack(w, zeros, wpk, bpk, G, NF, True)
            fwd(gy.reshape(-1) if gs is None else gs, wpk, bpk, off, gx, F, 1, 1, HPh, WPh, G,
                NF, False, n_threads)
        return run
    MR, NR = K.gtile_shape(Cg, dtype == np.float64)
    HPh, WPh = -(-(pt + g.H) // sh), -(-(pl + g.W) // sw)
    A, B = (g.KH - 1) * dh // sh, (g.KW - 1) * dw // sw
    GH, GW = A + max(HPh, g.OH), B + max(WPh, g.OW)
    gpad = ws.get("gpad", N * F * GH * GW, dtype)
    apack = ws.get("apack_in", G * -(-Cg // MR) * MR * Kf, dtype)
    off = ws.get("off_in", Kf, np.intp)  # filled with apack at every call
    starts = ws.get("phase_start", sh * sw + 1, np.intp)
    rows = ws.get("row_start", sh * sw * (g.KH + 1), np.intp)
    pack, bi = _spec(K.pack_backward_input, dtype), _spec(K.backward_input, dtype)

    def run(gy, w, gx):
        split(gy, gpad, A, B, 1, 1, GH, GW, n_threads)
        pack(w, apack, off, starts, rows, G, MR, sh, sw, dh, dw, GH, GW)
        bi(gpad, apack, off, starts, rows, gx, F, GH, GW, HPh, WPh, sh, sw, pt, pl, G, MR, NR,
           g.KH, dh, g.OH, n_threads)
    return run


def _conv2d_backward_weight_into(x, grad_y, grad_w, grad_b, g, ws=None):
    """(grad_w, grad_b) of conv2d; arguments validated, outputs preallocated (grad_b may be
    None: not computed)."""
    if g.N == 0:
        grad_w[...] = 0
        if grad_b is not None:
            grad_b[...] = 0
        return grad_w, grad_b
    plan = _plan(g, "weight", x.dtype, ws)
    algo = plan.algo
    if grad_b is not None:
        if algo == "matmul":  # one value per (image, filter): a column sum, in image order
            np.sum(grad_y.reshape(g.N, g.F), axis=0, out=grad_b)
        else:
            _kernels.conv.bias_grad(grad_y, grad_b, plan.n_threads)
    plan.run(None)(x, grad_y, grad_w)
    if _needs_exact_weight(g, algo, grad_w):
        _backward_weight_algo("direct", x, grad_y, grad_w, g, plan.ws, plan.n_threads)
    return grad_w, grad_b


def _build_weight(algo, g, dtype, ws, n_threads):
    """run(x, grad_y, grad_w) of one planned weight-gradient algorithm (N > 0)."""
    if algo != "tiles":
        return lambda x, gy, gw: _backward_weight_algo(algo, x, gy, gw, g, ws, n_threads)
    K = _kernels.conv
    sh, sw = g.stride
    pt, pb, pl, pr = g.pad4
    G, C, F, N = g.groups, g.C, g.F, g.N
    Fg, Cg = F // G, C // G
    Kg = Cg * g.KH * g.KW
    MR, NF = K.wtile_shape(Fg, dtype == np.float64)
    # The tiles read the zero-bordered input with the stride itself (no phase planes); an
    # unpadded input as it is.
    HP, WP = g.H + pt + pb, g.W + pl + pr
    xs = None if g.pad4 == (0, 0, 0, 0) else ws.get("xs", N * C * HP * WP, dtype)
    off = np.empty(Kg, dtype=np.intp)
    K.forward_offsets(Cg, g.KH, g.KW, 1, 1, g.dilation[0], g.dilation[1], HP, WP, off)
    gt = ws.get("gt", N * g.OH * g.OW * F, dtype)
    NB = _tiles_chunk(g, dtype.itemsize)
    part = ws.get("part", -(-N // NB) * G * -(-Kg // MR) * MR * -(-Fg // NF) * NF, dtype)
    split, to_pm = _spec(K.pad_split, dtype), _spec(K.to_pixels_major, dtype)
    bw = _spec(K.backward_weight, dtype)

    def run(x, gy, gw):
        if xs is not None:
            split(x, xs, pt, pl, 1, 1, HP, WP, n_threads)
        to_pm(gy, gt, n_threads)
        bw(x.reshape(-1) if xs is None else xs, gt, off, part, gw, N, C, sh, sw, HP, WP,
           g.OH, g.OW, G, MR, NF, NB, n_threads)
    return run


def _backward_weight_algo(algo, x, grad_y, grad_w, g, ws, n_threads):
    """grad_w of conv2d by ``algo`` (N > 0), unplanned (the tiles: see _build_weight)."""
    sh, sw = g.stride
    pt, pb, pl, pr = g.pad4
    dh, dw = g.dilation
    if algo == "matmul":
        _gemm_into(grad_y.reshape(g.N, g.F).T, x.reshape(g.N, -1), grad_w.reshape(g.F, -1))
    elif algo == "direct":
        _kernels.conv.backward_weight_direct(x, grad_y, grad_w, sh, sw, pt, pl, dh, dw,
                                             g.groups, n_threads)
    elif algo == "rows":
        _backward_weight_rows(x, grad_y, grad_w, g, ws, n_threads)
    elif algo == "dw":
        HPh, WPh = _phase_sizes(g)
        _kernels.dwconv.backward_weight(x, grad_y, grad_w, sh, sw, pt, pl, dh, dw, HPh, WPh,
                                        n_threads)
    else:
        _build_weight(algo, g, x.dtype, ws, n_threads)(x, grad_y, grad_w)


_BUILD = {"forward": _build_forward, "input": _build_input, "weight": _build_weight}


def _dw_ok(g, kind):
    """Whether the depthwise kernels (``_kernels/dwconv.pyx``) can run this call: groups == C
    >= 2 (any channel multiplier F/C), at most DWK taps, one plane's buffers within DWBUF
    elements (float64 sizes, so both dtypes agree); the input gradient at stride 1 only."""
    if g.groups != g.C or g.C < 2:
        return False
    buf, max_taps, slack = _kernels.dwconv.limits()
    NL = _kernels.dwconv.lanes(False)  # the wider count: sizes fit for float64 too
    if g.KH * g.KW > max_taps:
        return False
    sh, sw = g.stride
    if kind == "input":
        if (sh, sw) != (1, 1):
            return False
        GW = g.W + (g.KW - 1) * g.dilation[1]
        GH = g.H + (g.KH - 1) * g.dilation[0]
        return GH * GW + slack <= buf and -(-((g.H - 1) * GW + g.W) // NL) * NL <= buf
    HPh, WPh = _phase_sizes(g)
    P = -(-((g.OH - 1) * WPh + g.OW) // NL) * NL
    return sh * sw * HPh * WPh + slack <= buf and P <= buf


def _rows_geometry(g):
    """(HPh, WPh, P, in_place, exact) of the positions-on-lanes weight gradient: the phase
    planes' size, the wide-row positions per image P = (OH-1)*WPh + OW, whether x is read as it
    is (stride 1, no padding), and whether every product formed is one of the definition (else
    zeros of the padding or of the wide-row gaps are multiplied with real values)."""
    sh, sw = g.stride
    HPh, WPh = _phase_sizes(g)
    in_place = (sh, sw) == (1, 1) and g.pad4 == (0, 0, 0, 0)
    return HPh, WPh, (g.OH - 1) * WPh + g.OW, in_place, in_place and WPh == g.OW


def _rows_wins(g):
    """Whether the positions-on-lanes weight gradient beats the filters-on-lanes tiles: on long
    rows (at least 128 wide-row positions per image) with few taps per group (at most 32), where
    the tiles' transposed dy and short tap blocks cost most. Measured (1 thread, batch 64):
    LeNet C1, 3x3 1->16 @28, 1x1 32->128 @14 and depthwise 3x3 @14 are faster by rows; C3,
    3x3 16->32 @14 and every shape with hundreds of taps per group (small planes) by tiles."""
    P = _rows_geometry(g)[2]
    return P >= 128 and g.C // g.groups * g.KH * g.KW <= 32


def _weight_algo(g):
    """Algorithm of the weight gradient: "dw" for depthwise shapes, "rows" where
    :func:`_rows_wins`, else "tiles" (or "matmul", or the forced one)."""
    algo = _algo(g, "weight")
    if _forced is not None or algo != "tiles" or g.N == 0:
        return algo
    if _dw_ok(g, "weight"):
        return "dw"
    return "rows" if _rows_wins(g) else "tiles"


def _needs_exact_weight(g, algo, grad_w):
    """Whether a weight gradient computed by ``algo`` must be computed again by the exact
    "direct" definition. "tiles", "rows" and "dw" multiply zeros of the padding (and "rows" /
    "dw" zeros of the wide-row gaps) with real values; with finite x and dy those products are
    zeros and the result is exact, but an inf or NaN in x or dy turns such a product into NaN.
    Any NaN reaches the element's sum and stays there, so a finite result is exact, and only a
    non-finite one (rare: inf or NaN in the data) needs the exact path. Checking the small
    result instead of scanning x and dy saves a pass over both every step."""
    return (_forced is None and algo in ("tiles", "rows", "dw") and not _rows_geometry(g)[4]
            and not _kernels.conv.all_finite(grad_w.reshape(-1)))


def _even_chunks(N, cap):
    """Images per chunk for a batch of N cut into chunks of at most ``cap``: the fewest chunks,
    an even number of them when there are several (where a size down to half gives one), as
    equal as N allows. Their tasks run in chunk order, a static half to each of two threads,
    so equal chunks give both threads the same work (LeNet's C3 at batch 64 was cut 40 + 24:
    its 2-thread weight gradient ran at 1.06x one thread's speed). By shape only, so results
    do not depend on the thread count."""
    n = -(-N // max(1, cap))
    if n == 1:
        return N
    nb = -(-N // (n + n % 2))
    for size in range(nb, max(1, nb // 2) - 1, -1):  # an even count where one is near
        if -(-N // size) % 2 == 0:
            return size
    return nb


def _tiles_chunk(g, itemsize):
    """Images per chunk of the filters-on-lanes weight gradient, by shape only: the batch cut
    evenly (:func:`_even_chunks`) under a cap of 8 images, raised while one chunk's transposed
    dy stays within 256 KiB, so that shapes with small planes and many weights (3x3 64->128 @4)
    run fewer, longer tasks and add fewer partial sums."""
    per_image = g.OH * g.OW * g.F * itemsize
    return _even_chunks(g.N, max(8, min(g.N, (256 << 10) // per_image)))


def _rows_chunk(g, P, HPh, WPh, itemsize):
    """Images per chunk of the positions-on-lanes weight gradient, by shape only: the batch cut
    evenly (:func:`_even_chunks`) under a cap of as many images as keep one chunk's dy and x
    within about 256 KiB (L2)."""
    sh, sw = g.stride
    per_image = (g.F * P + g.C * sh * sw * HPh * WPh) * itemsize
    return _even_chunks(g.N, max(1, min(g.N, (256 << 10) // per_image)))


def _backward_weight_rows(x, grad_y, grad_w, g, ws, n_threads):
    """grad_w by dot products along wide rows (kernel ``backward_weight_rows``)."""
    sh, sw = g.stride
    dh, dw = g.dilation
    G = g.groups
    Fg, Cg = g.F // G, g.C // G
    Kg = Cg * g.KH * g.KW
    HPh, WPh, P, in_place, _ = _rows_geometry(g)
    img = g.C * sh * sw * HPh * WPh
    # The tile reads up to NL - 1 elements past a row (masked to 0), except in the batch's last
    # image: within x and dy themselves, or within the workspace buffers' slack.
    xs = x.reshape(-1) if in_place else _phase_planes(x, g, ws, 1 << 62)[0]
    off = ws.get("off", Kg, np.intp)[:Kg]
    _kernels.conv.forward_offsets(Cg, g.KH, g.KW, sh, sw, dh, dw, HPh, WPh, off)
    if WPh == g.OW:
        gw = grad_y.reshape(-1)
    else:
        gw = ws.get("gw", g.N * g.F * P, x.dtype)
        _kernels.conv.to_wide_rows(grad_y, gw, WPh, P, n_threads)
    MF, MK = _kernels.conv.rtile_shape(Fg, Kg)
    NB = _rows_chunk(g, P, HPh, WPh, x.itemsize)
    n_chunks = -(-g.N // NB)
    part = ws.get("part", n_chunks * g.F * Kg if n_chunks > 1 else 0, x.dtype)
    _kernels.conv.backward_weight_rows(xs, gw, off, part, grad_w, g.N, img, P, P, G, MF, MK,
                                       NB, n_threads)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------

def _check_bias(bias, F, dtype):
    if bias is None:
        return None
    bias = _array(bias, "bias", 1, dtype)
    if bias.shape != (F,):
        raise ValueError(f"bias must have shape ({F},), got {bias.shape}")
    return bias


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation, as in PyTorch's ``torch.nn.functional.conv2d``).

    ``y[n,f,i,j] = bias[f] + sum_{c,p,q} weight[f,c,p,q] * xp[n, gC + c, i*sh + p*dh, j*sw + q*dw]``
    where ``xp`` is ``x`` zero-padded, ``g = f // (F/G)`` is the group of filter ``f`` and
    ``gC = g * C/G`` its first channel.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    weight : ndarray, shape (F, C/groups, KH, KW), same dtype
    bias : ndarray, shape (F,), same dtype, optional
    stride : int or (int, int), >= 1
    padding : int, (int, int), 'valid' or 'same'
        'same' requires stride 1; with an even effective kernel the extra row/column of padding
        goes at the bottom/right (as PyTorch).
    dilation : int or (int, int), >= 1
    groups : int, >= 1, dividing C and F (``groups == C``: depthwise)

    Returns
    -------
    y : ndarray, shape (N, F, OH, OW)

    Shape
    -----
    ``OH = (H + pad_top + pad_bottom - dilation*(KH-1) - 1) // stride + 1``, the same for OW.
    """
    x = _array(x, "x", 4)
    weight = _array(weight, "weight", 4, x.dtype)
    _nonempty(x.shape, "x")
    _nonempty(weight.shape, "weight", 0)
    g = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    bias = _check_bias(bias, g.F, x.dtype)
    y = np.empty((g.N, g.F, g.OH, g.OW), dtype=x.dtype)
    return _conv2d_into(x, weight, bias, y, g)


def conv2d_backward_input(grad_y, weight, input_size, stride=1, padding=0, dilation=1,
                          groups=1):
    """Gradient of :func:`conv2d` with respect to its input.

    ``grad_x[n,c,h,w] = sum grad_y[n,f,i,j] * weight[f,c',p,q]`` over the filters ``f`` of
    ``c``'s group and the taps with ``i*sh + p*dh = h + pad_top``, ``j*sw + q*dw = w + pad_left``
    (DESIGN.md section 3). Only products the forward pass formed are added: an inf or NaN
    weight reaches only the positions it is applied to (not padding, not stride gaps).

    Parameters
    ----------
    grad_y : ndarray, shape (N, F, OH, OW)
    weight : ndarray, shape (F, C/groups, KH, KW), same dtype
    input_size : (int, int) or (N, C, H, W)
        ``(H, W)`` of the forward input (with stride > 1 several sizes give the same OH, OW).
    stride, padding, dilation, groups : as :func:`conv2d`

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W) with ``C = weight.shape[1] * groups``

    Shape
    -----
    ``grad_y`` must have the shape conv2d gives for ``input_size``.
    """
    grad_y = _array(grad_y, "grad_y", 4)
    weight = _array(weight, "weight", 4, grad_y.dtype)
    _nonempty(weight.shape, "weight", 0)
    if isinstance(input_size, (tuple, list)) and len(input_size) == 4:
        input_size = tuple(input_size)[2:]
    H, W = _hyper(input_size, "input_size", 1)
    G = _int(groups, "groups")
    if G < 1:
        raise ValueError(f"groups must be >= 1, got {G}")
    C = weight.shape[1] * G
    g = _geometry((grad_y.shape[0], C, H, W), weight.shape, stride, padding, dilation, G)
    _check_grad(grad_y, (grad_y.shape[0], g.F, g.OH, g.OW))
    grad_x = np.empty((g.N, C, H, W), dtype=grad_y.dtype)
    return _conv2d_backward_input_into(grad_y, weight, grad_x, g)


def conv2d_backward_weight(x, grad_y, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of :func:`conv2d` with respect to its weight and bias.

    ``grad_weight[f,c,p,q] = sum_{n,i,j} grad_y[n,f,i,j] * xp[n, gC + c, i*sh + p*dh, j*sw + q*dw]``
    (``gC`` the first channel of f's group) and ``grad_bias[f] = sum_{n,i,j} grad_y[n,f,i,j]``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    grad_y : ndarray, shape (N, F, OH, OW), same dtype
    kernel_size : int or (int, int)
    stride, padding, dilation, groups : as :func:`conv2d`

    Returns
    -------
    grad_weight : ndarray, shape (F, C/groups, KH, KW)
    grad_bias : ndarray, shape (F,)
    """
    x = _array(x, "x", 4)
    grad_y = _array(grad_y, "grad_y", 4, x.dtype)
    _nonempty(x.shape, "x")
    KH, KW = _hyper(kernel_size, "kernel_size", 1)
    F = grad_y.shape[1]
    if F < 1:
        raise ValueError(f"grad_y has no output channels: shape {grad_y.shape}")
    G = _int(groups, "groups")
    if G < 1:
        raise ValueError(f"groups must be >= 1, got {G}")
    if x.shape[1] % G:
        raise ValueError(f"groups={G} does not divide the {x.shape[1]} input channels of x")
    g = _geometry(x.shape, (F, x.shape[1] // G, KH, KW), stride, padding, dilation, G)
    _check_grad(grad_y, (g.N, F, g.OH, g.OW))
    grad_w = np.empty((F, g.C // G, KH, KW), dtype=x.dtype)
    grad_b = np.empty(F, dtype=x.dtype)
    return _conv2d_backward_weight_into(x, grad_y, grad_w, grad_b, g)


# ---------------------------------------------------------------------------------------------
# Transposed convolution: conv2d's input gradient as a forward pass
# ---------------------------------------------------------------------------------------------

def _transpose_geometry(x_shape, w_shape, stride, padding, output_padding, groups, dilation):
    """(_Conv of the adjoint conv2d, (Hout, Wout)) for a transposed convolution of x."""
    if isinstance(padding, str):
        raise ValueError(f"conv_transpose2d takes an int or a pair as padding, got {padding!r}")
    stride = _hyper(stride, "stride", 1)
    dilation = _hyper(dilation, "dilation", 1)
    ph, pw = _hyper(padding, "padding", 0)
    oph, opw = _hyper(output_padding, "output_padding", 0)
    if not (oph < max(stride[0], dilation[0]) and opw < max(stride[1], dilation[1])):
        raise ValueError(f"output_padding {(oph, opw)} must be smaller than either stride "
                         f"{stride} or dilation {dilation}")
    N, Cin, H, W = x_shape
    if w_shape[0] != Cin:
        raise ValueError(f"weight {tuple(w_shape)} expects {w_shape[0]} input channels "
                         f"(weight.shape[0]) but x has {Cin} (shape {tuple(x_shape)})")
    G = _int(groups, "groups")
    if G < 1:
        raise ValueError(f"groups must be >= 1, got {G}")
    G = _groups(G, Cin, w_shape[1] * G)
    KH, KW = w_shape[2], w_shape[3]
    Hout = (H - 1) * stride[0] - 2 * ph + dilation[0] * (KH - 1) + oph + 1
    Wout = (W - 1) * stride[1] - 2 * pw + dilation[1] * (KW - 1) + opw + 1
    if Hout < 1 or Wout < 1:
        raise ValueError(f"conv_transpose2d output size {(Hout, Wout)} is not positive "
                         f"(input {(H, W)}, padding {(ph, pw)})")
    Cout = w_shape[1] * G
    g = _Conv(N, Cout, Hout, Wout, Cin, KH, KW, stride, (ph, ph, pw, pw), dilation, G)
    return g, (Hout, Wout)


def _fit(a, OH, OW):
    """a (N, F, H, W) zero-extended or cropped to (OH, OW) (output_padding >= stride only)."""
    if a.shape[2:] == (OH, OW):
        return a
    out = np.zeros(a.shape[:2] + (OH, OW), dtype=a.dtype)
    h, w = min(OH, a.shape[2]), min(OW, a.shape[3])
    out[:, :, :h, :w] = a[:, :, :h, :w]
    return out


def conv_transpose2d_output_size(input_size, kernel_size, stride=1, padding=0,
                                 output_padding=0, dilation=1):
    """``(Hout, Wout)`` of a transposed convolution:
    ``Hout = (H-1)*stride - 2*padding + dilation*(KH-1) + output_padding + 1``."""
    H, W = _hyper(input_size, "input_size", 1)
    KH, KW = _hyper(kernel_size, "kernel_size", 1)
    g, size = _transpose_geometry((1, 1, H, W), (1, 1, KH, KW), stride, padding,
                                  output_padding, 1, dilation)
    return size


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """2-D transposed convolution (PyTorch's ``conv_transpose2d``): the input gradient of
    :func:`conv2d` used as a forward pass, plus a bias.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    weight : ndarray, shape (C_in, C_out/groups, KH, KW), same dtype
    bias : ndarray, shape (C_out,), optional
    stride, padding, output_padding, dilation : int or (int, int)
        ``output_padding`` must be smaller than stride or dilation.
    groups : int, dividing C_in and C_out

    Returns
    -------
    y : ndarray, shape (N, C_out, Hout, Wout)

    Shape
    -----
    ``Hout = (H-1)*stride - 2*padding + dilation*(KH-1) + output_padding + 1``, the same for Wout.
    """
    x = _array(x, "x", 4)
    weight = _array(weight, "weight", 4, x.dtype)
    _nonempty(x.shape, "x")
    _nonempty(weight.shape, "weight", 0)
    g, (Hout, Wout) = _transpose_geometry(x.shape, weight.shape, stride, padding,
                                          output_padding, groups, dilation)
    bias = _check_bias(bias, g.C, x.dtype)
    y = np.empty((g.N, g.C, Hout, Wout), dtype=x.dtype)
    _conv2d_backward_input_into(_fit(x, g.OH, g.OW), weight, y, g)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y


def conv_transpose2d_backward_input(grad_y, weight, stride=1, padding=0, output_padding=0,
                                    groups=1, dilation=1, input_size=None):
    """Gradient of :func:`conv_transpose2d` with respect to its input: ``conv2d(grad_y, weight)``.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C_out, Hout, Wout)
    weight : ndarray, shape (C_in, C_out/groups, KH, KW)
    stride, padding, output_padding, groups, dilation : as :func:`conv_transpose2d`
    input_size : (int, int), optional
        ``(H, W)`` of the forward input; by default the size conv2d gives back.

    Returns
    -------
    grad_x : ndarray, shape (N, C_in, H, W)
    """
    grad_y = _array(grad_y, "grad_y", 4)
    weight = _array(weight, "weight", 4, grad_y.dtype)
    _nonempty(weight.shape, "weight", 0)
    G = _int(groups, "groups")
    stride_, dil_ = _hyper(stride, "stride", 1), _hyper(dilation, "dilation", 1)
    if input_size is None:
        ph, pw = _hyper(padding, "padding", 0)
        Hout, Wout = grad_y.shape[2:]
        input_size = ((Hout + 2 * ph - dil_[0] * (weight.shape[2] - 1) - 1) // stride_[0] + 1,
                      (Wout + 2 * pw - dil_[1] * (weight.shape[3] - 1) - 1) // stride_[1] + 1)
    H, W = _hyper(input_size, "input_size", 1)
    g, size = _transpose_geometry((grad_y.shape[0], weight.shape[0], H, W), weight.shape,
                                  stride, padding, output_padding, G, dilation)
    _check_grad(grad_y, (grad_y.shape[0], g.C) + size)
    y = np.empty((g.N, g.F, g.OH, g.OW), dtype=grad_y.dtype)
    _conv2d_into(grad_y, weight, None, y, g)
    return _fit(y, H, W) if (g.OH, g.OW) != (H, W) else y


def conv_transpose2d_backward_weight(x, grad_y, kernel_size, stride=1, padding=0,
                                     output_padding=0, groups=1, dilation=1):
    """Gradients of :func:`conv_transpose2d` with respect to its weight and bias: conv2d's
    weight gradient with the roles of input and output gradient exchanged.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    grad_y : ndarray, shape (N, C_out, Hout, Wout)
    kernel_size : int or (int, int)

    Returns
    -------
    grad_weight : ndarray, shape (C_in, C_out/groups, KH, KW)
    grad_bias : ndarray, shape (C_out,)
    """
    x = _array(x, "x", 4)
    grad_y = _array(grad_y, "grad_y", 4, x.dtype)
    _nonempty(x.shape, "x")
    KH, KW = _hyper(kernel_size, "kernel_size", 1)
    G = _int(groups, "groups")
    if G < 1:
        raise ValueError(f"groups must be >= 1, got {G}")
    if grad_y.shape[1] % G:
        raise ValueError(f"groups={G} does not divide the {grad_y.shape[1]} output channels")
    g, size = _transpose_geometry(x.shape, (x.shape[1], grad_y.shape[1] // G, KH, KW), stride,
                                  padding, output_padding, G, dilation)
    _check_grad(grad_y, (g.N, g.C) + size)
    grad_w = np.empty((g.F, g.C // G, KH, KW), dtype=x.dtype)
    grad_b = np.empty(g.C, dtype=x.dtype)
    # conv2d's weight gradient with input grad_y and output gradient x: (F=C_in, C_out/G, ...)
    _conv2d_backward_weight_into(grad_y, _fit(x, g.OH, g.OW), grad_w, None, g)
    if g.N == 0:
        grad_b[...] = 0
    else:
        _kernels.conv.bias_grad(grad_y, grad_b, get_num_threads())
    return grad_w, grad_b
