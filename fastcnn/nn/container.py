"""``Sequential``: layers applied in order, and the one place that plans fusions.

The layers stay plain: a ``Conv2d`` used alone computes a convolution and nothing else. A
``Sequential`` sees the whole chain, so it alone decides which runs of layers execute together
(see ``_plan``): a ``Conv2d - ReLU`` pair applies the ReLU in the convolution's output loop (also
inside a ``Conv2d - ReLU - MaxPool2d`` triple, whose pool then reads the convolution's reused
buffer). Fused steps are bitwise equal to the separate layers (tested). New fusions are new
step classes here and one more rule in ``_plan``.

Work arrays are reused across steps; the output returned by ``forward`` and the gradient returned
by ``backward`` are fresh arrays unless ``copy=False``.

Less Python per step (issue 9). At batch 1 a step is mostly Python between the kernels, so:

* each layer validates its input once per shape: an input of the shape, dtype and layout the last
  call validated goes straight to the kernels (with the geometry, output buffer and workspace
  kept from that call); anything else is checked again and gets the same ValueError / TypeError;
* a convolution plans each of its kernel calls once per shape (algorithm, tap offsets, buffer
  views, the dtype's kernel functions: ``functional.conv._Plan``, kept on that geometry);
* in eval mode, ``Sequential`` binds its steps to the input's shape (``_forward_bound``; each
  layer's ``_bind``): a function per step with the validation, plan and buffers worked out
  once, so that an inference call runs little more than the kernels and their caches' checks
  (layers without a binding, and a user's layer, run their plain forward in between);
* a frozen model (``Module.freeze``) runs that bound forward as one compiled chain of its
  kernels, after identity checks of what the steps would check (``_chain``), and slices the
  batch through the convolution part when its feature maps outgrow the cache;
* ``Sequential`` packs the parameters of its built-in layers into one flat buffer and their
  gradients into another (``Module._pack_parameters``), so that an optimiser updates a whole
  parameter group with a few NumPy calls instead of a loop over parameters (bitwise the same
  result); a user's layer keeps its own arrays and runs through its public forward/backward;
* in eval mode, the transposed weight that a matrix product needs (Linear, a convolution whose
  kernel covers its input), a convolution's packed weights and the Conv-BN fold are reused
  while the arrays they were made from hold the same bytes (checked by a memcmp with a
  snapshot at every call, so an in-place change, however it was made, is seen; read-only
  arrays, such as a frozen model's (``Module.freeze``) and the folded weights themselves, by
  their identity: ``_kernels.conv.Snapshot``).

Threads: a model keeps per-call state (what backward needs, reused output buffers, work arrays,
convolution workspaces, the snapshots above), so one model must not run forward / backward (in
training or in eval mode) from two Python threads at once, nor be updated by an optimiser while
another thread runs it. Separate model instances in separate threads are safe (each owns its
buffers; the kernels release the GIL, so they run in parallel), and so are the functions of
``fastcnn.functional``, which allocate per call. For concurrent inference, give each thread its
own copy of the model (e.g. built from one ``state_dict``).
"""

from operator import attrgetter

import numpy as np

from .. import _kernels
from .._threads import get_num_threads
from ..functional import conv as _fconv
from ..functional._snapshot import _frozen, _Snapshot
from .activation import ReLU
from .conv import Conv2d
from .module import Module, _Unbound
from .normalization import BatchNorm2d
from .pooling import MaxPool2d

__all__ = ["Sequential"]

_training = attrgetter("training")


class _Step:
    """One layer run on its own (built-in layers with reused work arrays; a user's layer through
    its public forward/backward)."""

    def __init__(self, layer):
        self.layers = (layer,)

    def forward(self, x):
        return self.layers[0]._forward(x, reuse=True)

    def bind(self, shape):
        """(f, output shape) for Sequential's bound eval forward (f None: run ``forward``)."""
        layer = self.layers[0]
        return layer._bind(shape), layer.output_shape(shape)

    def backward(self, grad):
        return self.layers[0]._backward(grad, reuse=True)

    def relu_layer(self):
        """The ReLU whose output is this step's output, or None (see _ReLUMaxPool)."""
        return self.layers[0] if type(self.layers[0]) is ReLU else None

    def backward_below_relu(self, grad):
        """backward() from the gradient of that ReLU's input (its own pass left out)."""
        return grad


class _ConvReLU(_Step):
    """Conv2d then ReLU: the ReLU is applied in the convolution's output loop."""

    def __init__(self, conv, relu):
        self.layers = (conv, relu)

    def forward(self, x):
        conv, relu = self.layers
        x, y = conv._prepare(x, True)
        conv._conv_into(x, y, True, relu=True)
        relu._cache = y  # ReLU's backward needs only its output
        return y

    def backward(self, grad):
        conv, relu = self.layers
        return conv._backward(relu._backward(grad, reuse=True), reuse=True)

    def relu_layer(self):
        return self.layers[1]

    def backward_below_relu(self, grad):
        return self.layers[0]._backward(grad, reuse=True)

    def bind(self, shape):
        conv, relu = self.layers
        run = conv._bind(shape, relu=True)
        if run is None:
            return None, conv.output_shape(shape)

        def f(x):
            y = run(x)
            relu._cache = y
            return y
        f.links = run.links
        return f, conv.output_shape(shape)


class _ReLUMaxPool(_Step):
    """A step ending in a ReLU (Conv-ReLU, Conv-BN-ReLU, a ReLU alone), then a MaxPool2d: the
    pool runs on the step's own (reused) output buffer; backward, the pool's scatter masked by
    that buffer (``x > 0`` at each window's winner) gives the ReLU's input gradient in one
    pass, and the step continues below its ReLU. Bitwise equal to the layers (tested)."""

    def __init__(self, step, pool):
        self.step, self.layers = step, step.layers + (pool,)
        self.name = ("ReLU" if type(step) is _Step else type(step).__name__.lstrip("_")) \
            + "MaxPool"

    def forward(self, x):
        return self.layers[-1]._forward(self.step.forward(x), True)

    def backward(self, grad):
        pool, relu = self.layers[-1], self.step.relu_layer()
        if getattr(self.step, "folded", False):  # eval: the step reruns its layers first
            return self.step.backward(pool._backward(grad, True))
        return self.step.backward_below_relu(pool._backward(grad, True, relu_output=relu._cache))

    def bind(self, shape):
        run, shape = self.step.bind(shape)
        pool = self.layers[-1]._bind(shape)
        if run is None or pool is None:
            return None, self.layers[-1].output_shape(shape)

        def f(x):
            return pool(run(x))
        f.links = _joined_links(run, pool)
        return f, self.layers[-1].output_shape(shape)


class _ConvBN(_Step):
    """Conv2d then BatchNorm2d (then ReLU, with ``_ConvBNReLU``). In eval mode, when the batch
    norm has running statistics, the pair runs as one convolution with folded parameters

        s = gamma / sqrt(running_var + eps)    w' = w * s[f]    b' = (b - running_mean) * s + beta

    recomputed at every eval forward (it costs one pass over the weights), so it follows any
    change of the parameters or buffers. The result is within float tolerance of the unfolded
    pair, not bitwise (the products are rounded in another order). In training mode, or with
    batch statistics, the layers run one after the other, as without the fold. The choice is
    made at every forward, so ``train()`` / ``eval()`` switches need no re-planning.

    The convolution runs through the layer's own forward with its weight and bias temporarily
    replaced, so whatever the Conv2d supports (stride, padding, dilation, groups) is honoured.
    """

    relu = False

    def __init__(self, conv, bn, *rest):
        self.layers = (conv, bn) + rest
        self.folded = False  # whether the last forward ran folded
        self._w = self._b = None  # the folded weight and bias (reused)
        self._sources = None  # (eps, snapshots of the arrays _w and _b were folded from)
        self._conv_relu = _ConvReLU(conv, rest[0]) if self.relu else None

    def _foldable(self):
        conv, bn = self.layers[:2]
        return (not bn._uses_batch_stats()) and bn.num_features == conv.out_channels

    def _fold_sources(self):
        """The arrays the fold is made from."""
        conv, bn = self.layers[:2]
        return (conv.params["weight"], conv.params.get("bias"), bn.buffers["running_mean"],
                bn.buffers["running_var"]) + tuple(bn._gamma_beta())

    def _folded_params(self):
        conv, bn = self.layers[:2]
        sources = self._fold_sources()
        known = self._sources
        if known is not None and known[0] == bn.eps and len(known[1]) == len(sources) and all(
                (a is None and snap is None) or (a is not None and snap is not None and
                                                 snap.same(a))
                for snap, a in zip(known[1], sources)):
            return self._w, self._b  # folded from the same bytes: the same result
        self._sources = None
        mean, invstd = bn._running_stats()
        gamma, beta = (p.astype(np.float64) for p in bn._gamma_beta())
        scale = gamma * invstd
        weight = conv.params["weight"]
        bias = conv.params.get("bias")
        # New arrays at every fold, read-only once made: what the convolution derives from them
        # (its packed weights) is then checked by identity, not byte by byte (_Snapshot).
        w = np.empty_like(weight)
        b = np.empty(conv.out_channels, dtype=weight.dtype)
        np.multiply(weight, scale.reshape((-1,) + (1,) * (weight.ndim - 1)), out=w,
                    casting="unsafe")
        b[...] = ((0.0 if bias is None else bias.astype(np.float64)) - mean) * scale + beta
        w.flags.writeable = b.flags.writeable = False
        self._w, self._b = w, b
        self._sources = (bn.eps, tuple(None if a is None else _Snapshot(a) for a in sources))
        return w, b

    def _run_folded(self, x):
        conv = self.layers[0]
        saved = dict(conv.params)
        conv.params["weight"], conv.params["bias"] = self._folded_params()
        try:
            if self.relu:
                return self._conv_relu.forward(x)
            return conv._forward(x, reuse=True)
        finally:
            conv.params.clear()
            conv.params.update(saved)

    def forward(self, x):
        self.folded = self._foldable()
        if self.folded:
            self._x = x
            return self._run_folded(x)
        conv, bn = self.layers[:2]
        out = bn._forward(conv._forward(x, reuse=True), True, relu=self.relu)
        if self.relu:  # the ReLU applied in batch norm's output pass
            self.layers[2]._cache = out  # (ReLU's backward needs only its output)
        return out

    def bind(self, shape):
        conv, out = self.layers[0], self.layers[0].output_shape(shape)
        run = conv._bind(shape, relu=self.relu, weights=self._folded_params) \
            if self._foldable() else None
        if run is None:
            return None, out

        def f(x):
            if not self._foldable():
                raise _Unbound
            self.folded, self._x = True, x
            return run(x)

        def links():  # the convolution's, valid while the fold is made from the same arrays
            got = run.links() if self._foldable() else None
            if got is None:
                return None
            caps, owners, checks, arrays = got
            bn = self.layers[1]
            eps, sources = bn.eps, self._fold_sources()
            checks.append(lambda: bn.eps == eps and self._foldable() and all(
                a is b for a, b in zip(self._fold_sources(), sources)))
            return caps, owners, checks, arrays + [a for a in sources if a is not None]
        f.links = links
        return f, out

    def backward(self, grad, below_relu=False):
        if self.folded:
            # Rare (gradients in eval mode): rerun the unfolded forward to give every layer
            # the cache its own backward expects, then backpropagate layer by layer.
            out = self._x
            for layer in self.layers:
                out = layer._forward(out, reuse=True)
            self.folded = False
        for layer in reversed(self.layers[:2] if below_relu else self.layers):
            grad = layer._backward(grad, reuse=True)
            if grad is None:
                return None
        return grad


class _ConvBNReLU(_ConvBN):
    """Conv2d, BatchNorm2d, ReLU; folded in eval mode into the fused Conv-ReLU step; otherwise
    the ReLU is applied in batch norm's output pass (bitwise a ReLU pass after it)."""

    relu = True

    def relu_layer(self):
        return self.layers[2]

    def backward_below_relu(self, grad):
        return self.backward(grad, below_relu=True)


# Sequential._chain: a batch slice's largest feature map per thread (an L2 of this machine's
# cores); the batch is sliced only when its maps are 4x that (1 thread, batch 64, frozen:
# VGG-style net 0.92x and bnnet 0.90x the time of one whole-batch chain; LeNet-5 (1.2 MB of
# maps, not sliced) 1.01x when sliced; 2 threads with 1 MB slices: 0.98x / 0.94x / 1.02x)
_CHUNK_BYTES = 524288


def _gather_links(fns):
    """(capsules, owners, checks, arrays) of the bound functions of these steps, or None
    when one of them has no links."""
    caps, owners, checks, arrays = [], [], [], []
    for _, f, _ in fns:
        got = f.links() if f is not None and hasattr(f, "links") else None
        if got is None:
            return None
        caps += got[0]
        owners += got[1]
        checks += got[2]
        arrays += got[3]
    return caps, owners, checks, arrays


def _readonly(arrays):
    """The arrays and the arrays they are views of: what must stay read-only."""
    out = []
    for a in arrays:
        out += [a] + ([a.base] if isinstance(a.base, np.ndarray) else [])
    return out


def _joined_links(*fns):
    """links() of bound functions run one after the other: each one's links in turn."""
    def links():
        parts = [f.links() if hasattr(f, "links") else None for f in fns]
        if any(p is None for p in parts):
            return None
        return tuple(sum((list(p[k]) for p in parts), []) for k in range(4))
    return links


def _plan(layers):
    """Steps for a chain of layers: the longest fusion that matches at each position."""
    steps, i = [], 0
    while i < len(layers):
        kinds = [type(layer) for layer in layers[i:i + 3]]
        if kinds == [Conv2d, BatchNorm2d, ReLU]:
            steps.append(_ConvBNReLU(*layers[i:i + 3]))
        elif kinds[:2] == [Conv2d, BatchNorm2d]:
            steps.append(_ConvBN(*layers[i:i + 2]))
        elif kinds[:2] == [Conv2d, ReLU]:
            steps.append(_ConvReLU(*layers[i:i + 2]))
        else:
            steps.append(_Step(layers[i]))
        i += len(steps[-1].layers)
        # A MaxPool2d after a step ending in a ReLU takes that ReLU's backward pass in its own
        if i < len(layers) and type(layers[i]) is MaxPool2d and steps[-1].relu_layer() is not None:
            steps[-1] = _ReLUMaxPool(steps[-1], layers[i])
            i += 1
    return steps


class Sequential(Module):
    """Layers applied in order; parameters and buffers named as PyTorch's ``nn.Sequential``
    (``"0.weight"``, ``"1.running_mean"``, ...).

    ``train()`` / ``eval()`` are passed down to every layer. See the module docstring for the
    fusions it plans and for the reused work arrays.
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} is not a fastcnn Module: {layer!r}")
        dtypes = {layer.dtype for layer in layers}
        if len(dtypes) > 1:
            raise TypeError(f"all layers of a Sequential must share one dtype, got {dtypes}")
        super().__init__(dtype=dtypes.pop() if dtypes else np.float32)
        self.layers = list(layers)
        self._steps = _plan(self.layers)
        self._bound = None  # [key, [(step, bound f or None, shape)], chain]: _forward_bound
        self._chained = None  # the input of a compiled forward (no caches made): see _chain
        self._pack_parameters()

    def children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def fusion_plan(self):
        """``[(start, n), ...]``: the runs of layers executed together (n = 1 for a layer alone),
        with the name of the step that runs them."""
        plan, i = [], 0
        for step in self._steps:
            plan.append((i, len(step.layers),
                         getattr(step, "name", type(step).__name__.lstrip("_"))))
            i += len(step.layers)
        return plan

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x, copy=True):
        """Run every layer. ``copy=False`` returns the last layer's reused buffer instead of a
        fresh array (the trainer does this; the array is overwritten by the next forward)."""
        out = None
        self._chained = None
        if not self.training and type(x) is np.ndarray:
            out = self._forward_bound(x)
        if out is None:
            out = self._forward_plain(x)
        self._cache = True
        return np.array(out, copy=True) if copy else out

    def _forward_bound(self, x):
        """The eval-mode forward through functions bound to this input's shape (``bind`` of
        each step, ``Module._bind`` of each layer): validation, plans and buffers worked out
        once per input shape, then only the kernels and their caches' checks run. Bound
        again when the input's shape, dtype or layout, a layer's mode, the thread count or
        the kernels' plans change; None (the plain path runs) when the input is invalid or a
        layer changed in a way its binding cannot follow. A layer without a binding runs its
        plain forward, and when its output is not the array its ``output_shape`` promised (a
        user's layer), the steps after it run the plain path. Bitwise the plain path (tested)."""
        key = (x.shape, x.dtype, x.flags.c_contiguous, get_num_threads(), _fconv._forced,
               _fconv._generation, tuple(map(_training, self.layers)))
        bound = self._bound
        if bound is None or bound[0] != key:
            bound = self._bound = [key, self._bind_steps(x), None]
        fns = bound[1]
        if fns is None:
            return None
        chain = bound[2]
        if chain:
            run, checks, result = chain
            if self.frozen and all(check() for check in checks) and run(x):
                self._chained = x
                return result
            bound[2] = None  # something changed: the checked path, then a new chain
        out, dtype = x, self.dtype
        for i, (step, f, shape) in enumerate(fns):
            if f is not None:
                try:
                    out = f(out)
                    continue
                except _Unbound:  # raised before the step changed anything
                    self._bound = None
                    return self._forward_plain(out, i)
            out = step.forward(out)
            if type(out) is not np.ndarray or out.shape != shape or out.dtype != dtype or \
                    not out.flags.c_contiguous:
                # An output the binding did not foresee (a user's layer whose output_shape is
                # not what it returns): the rest, and later calls like this one, run plain.
                self._bound = [key, None, None]
                return self._forward_plain(out, i + 1)
        if chain is None and self.frozen:
            bound[2] = self._chain(fns, out, x)
        return out

    def _chain(self, fns, out, x):
        """(run, checks, out) for a frozen model's next eval forwards of this input shape, or
        False: every step's bound call as a link of a compiled chain (``_kernels.conv.Chain``,
        a loop in C over the kernels), run after cheap checks instead of the steps' own
        (``checks``: the layers still hold the same arrays and settings; ``run`` checks that
        those arrays are still read-only). Made after a checked forward of the shape, so that
        every packed weight it reads is current. A step without links (a user's layer, a
        kernel without a bound form) leaves the model on the checked path.

        When the feature maps of the whole batch outgrow the cache, the leading steps that
        keep (N, C, H, W) maps (convolutions, pooling, ...) run as a chain bound to a slice of
        the batch, slice after slice (each slice's maps stay in L2 from one kernel to the
        next, where a batch-64 map went out to memory and was read back by the next kernel),
        and the rest (flatten, dense layers: whole-batch matrix products) as a second chain.
        Results are the same bytes: every kernel computes each sample alone."""
        dbl = self.dtype == np.float64
        split = self._chain_split(fns, out, x, dbl)
        if split is not None:
            return split
        links = _gather_links(fns)
        if links is None or not links[0] or not all(map(_frozen, links[3])):
            return False
        run = _kernels.conv.Chain(links[0], links[1], _readonly(links[3]), dbl)
        return run, links[2], out

    def _chain_split(self, fns, out, x, dbl):
        """The chain as a sliced prefix and a whole-batch rest (see ``_chain``), or None."""
        N, k = x.shape[0], 0
        while k < len(fns) and len(fns[k][2]) == 4:
            k += 1
        if k == 0 or N < 2:
            return None
        per_sample, shape = 0, x.shape
        for step, _, _ in fns[:k]:
            for layer in step.layers:
                shape = layer.output_shape(shape)
                per_sample = max(per_sample, int(np.prod(shape[1:])) * self.dtype.itemsize)
        budget = _CHUNK_BYTES * get_num_threads()
        if N * per_sample <= 4 * budget:
            return None
        nc = max([d for d in range(1, N) if N % d == 0 and d * per_sample <= budget] or [1])
        shape, part = (nc,) + x.shape[1:], []
        try:  # (as in _bind_steps: a user's output_shape may raise anything)
            for step, _, _ in fns[:k]:
                f, shape = step.bind(shape)
                part.append((step, f, tuple(shape)))
        except Exception:  # noqa: BLE001
            return None
        head, tail = _gather_links(part), _gather_links(fns[k:])
        if head is None or tail is None or not head[0] or \
                not all(map(_frozen, head[3] + tail[3])):
            return None
        mid = np.empty((N,) + tuple(shape[1:]), dtype=self.dtype)
        first = _kernels.conv.Chain(head[0], head[1], _readonly(head[3]), dbl, N // nc, mid)
        rest = _kernels.conv.Chain(tail[0], tail[1], _readonly(tail[3]), dbl) \
            if tail[0] else None
        # the rest's chain writes the buffers of the checked forward that gave `out`
        result = out if rest is not None else mid.reshape(fns[-1][2])

        def run(x):
            return first(x) and (rest is None or rest(mid))
        return run, head[2] + tail[2], result

    def _forward_plain(self, x, start=0):
        """The steps from ``start`` on, each validating its input."""
        for step in self._steps[start:]:
            x = step.forward(x)
        return x

    def _bind_steps(self, x):
        """[(step, f or None, output shape)] for inputs like ``x``, or None when ``x`` is not a
        valid input of the first layer (the plain path then raises what it raises) or a layer
        cannot tell its output shape."""
        if x.dtype != self.dtype or not x.flags.c_contiguous:
            return None
        try:  # (a shape a layer rejects makes its step's bind or output_shape raise)
            fns, shape = [], x.shape
            for step in self._steps:
                f, shape = step.bind(shape)
                fns.append((step, f, tuple(shape)))
        except Exception:  # noqa: BLE001 (a user's output_shape may raise anything)
            return None
        return fns

    def backward(self, grad_y, copy=True):
        """Backpropagate through every layer; returns the input gradient (None if skipped)."""
        if self._cache is None:
            raise RuntimeError("Sequential.backward called before forward")
        if self._chained is not None:  # a compiled forward keeps no caches: make them now
            x, self._chained = self._chained, None
            self._forward_plain(x)
        grad = grad_y
        for step in reversed(self._steps):
            grad = step.backward(grad)
            if grad is None:
                return None
        return np.array(grad, copy=True) if copy else grad

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def __repr__(self):
        body = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"{type(self).__name__}({body}\n)"

    # -- classifier: prediction, summaries, the attributes model files record -----------------
    # (fastcnn.models.classifier holds the code; fastcnn.checkpoint.load_model sets these.)

    #: ``(C, H, W)`` of one input image, or None if unknown.
    input_shape = None
    #: Class names, one per output, or None.
    classes = None
    #: ``fastcnn.models.InputTransform`` (padding, normalisation) that ``predict`` applies to
    #: raw images, or None.
    input_transform = None

    @property
    def num_classes(self):
        """Outputs per image: ``len(classes)``, else the last layer's output size (None if it
        cannot be told without an input shape)."""
        if self.classes is not None:
            return len(self.classes)
        if self.input_shape is not None:
            from ..models.spec import output_shapes

            return output_shapes(self.layers, self.input_shape)[-1][-1]
        for layer in reversed(self.layers):
            for name in ("out_features", "out_channels", "num_features"):
                if hasattr(layer, name):
                    return getattr(layer, name)
        return None

    def predict(self, images, batch_size=1024):
        """Predicted class indices ``(N,)`` for raw images with pixels in [0, 1], ``(N, H, W)``
        or ``(N, C, H, W)``, in eval mode and in batches, after the model's input transform;
        see :func:`fastcnn.models.predict`."""
        from ..models.classifier import predict

        return predict(self, images, batch_size)

    def predict_proba(self, images, batch_size=1024):
        """Class probabilities ``(N, num_classes)`` (softmax of the logits); see
        :meth:`predict` and :func:`fastcnn.models.predict_proba`."""
        from ..models.classifier import predict_proba

        return predict_proba(self, images, batch_size)

    def summary(self, input_shape=None, print_fn=print):
        """Print and return a table of output shape, parameters and multiply-adds per image of
        every layer, for `input_shape` (C, H, W) (default: ``self.input_shape``); see
        :func:`fastcnn.models.summary`."""
        from ..models.classifier import summary

        return summary(self, input_shape, print_fn)
