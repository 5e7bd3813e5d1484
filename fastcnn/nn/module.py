"""``Module``, the base of every layer, and ``Parameter``.

The contract (what a user's own layer implements, and what ``Sequential`` and the trainer rely on):

* ``forward(x) -> y`` and ``backward(grad_y) -> grad_x``. ``backward`` *writes* the parameter
  gradients into ``grads`` (it does not add to them, unlike PyTorch's ``.grad``) and uses what the
  most recent ``forward`` kept in ``self._cache``.
* ``params`` and ``grads``: dicts with the same keys (``"weight"``, ``"bias"``, ...) of the
  trainable arrays and their gradients; optimisers update ``params`` in place.
* ``buffers``: non-trainable state carried by ``state_dict`` (batch-norm running statistics).
* ``training``: set by ``train()`` / ``eval()``, which ``Sequential`` passes down.
* ``output_shape(input_shape)`` (optional; the identity by default) and ``macs(input_shape)``
  (multiply-adds per image, optional) for summaries.
* ``init_args()``: the arguments the module was constructed with (recorded automatically), which
  is what a model file's architecture spec stores (``fastcnn.models.spec``).

Built-in layers also implement ``_forward(x, reuse)`` / ``_backward(grad_y, reuse)``: the same
computation, writing into work arrays reused from one step to the next when ``reuse`` is true
(``Sequential`` runs them that way so that a training step allocates nothing). A user's layer
needs neither: ``Sequential`` calls its public ``forward`` / ``backward``.
"""

import functools
import inspect
from collections import OrderedDict

import numpy as np

from ..functional._validate import _array, _int

__all__ = ["Module", "Parameter"]


class Parameter:
    """A trainable array and its gradient, as handed to optimisers by ``model.parameters()``.

    ``data`` and ``grad`` are the layer's own arrays (``layer.params[key]``,
    ``layer.grads[key]``): optimisers update ``data`` in place. ``decay`` says whether weight decay
    (L2) applies: True for convolution and linear weights, False for biases and normalisation
    parameters. The layer that owns the parameter decides it, by role, not by name.
    """

    __slots__ = ("name", "data", "grad", "decay")

    def __init__(self, name, data, grad, decay=True):
        self.name = name
        self.data = data
        self.grad = grad
        self.decay = bool(decay)

    @property
    def is_weight(self):
        """Alias of ``decay`` (weights are regularised, biases are not)."""
        return self.decay

    def __repr__(self):
        return (f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype}, "
                f"decay={self.decay})")


class _Unbound(Exception):
    """A bound eval-mode forward (``Module._bind``) no longer applies."""


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _positive(value, name):
    value = _int(value, name)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class Module:
    """Base class: parameters, buffers, train/eval mode and the call protocol.

    Parameters
    ----------
    dtype : float32 (default) or float64, keyword-only
    """

    # Names of params that weight decay does not apply to (a subclass may override).
    _no_decay = ("bias",)

    def __init_subclass__(cls, **kwargs):
        """Wrap each subclass's ``__init__`` so that the outermost call records its arguments
        (``init_args``): a layer can then be rebuilt from data, without pickle."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            if "_init_args" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                arguments.pop(next(iter(signature.parameters)))  # self
                for name, param in signature.parameters.items():  # Identity(*args, **kwargs)
                    if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) and \
                            not arguments.get(name):
                        arguments.pop(name, None)
                self.__dict__["_init_args"] = arguments
            init(self, *args, **kw)

        cls.__init__ = recording_init

    def init_args(self):
        """The constructor arguments of this module, defaults filled in (a new dict)."""
        return dict(self.__dict__.get("_init_args", {}))

    def __init__(self, *, dtype=np.float32):
        self.dtype = _check_dtype(dtype)
        self.training = True
        self.params = {}
        self.grads = {}
        self.buffers = OrderedDict()
        self._cache = None
        self._work = {}

    # -- call protocol ----------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x):
        """Apply the layer; the result is a fresh array."""
        if type(self)._forward is Module._forward:
            raise NotImplementedError(f"{type(self).__name__} must implement forward(x)")
        return self._forward(x, reuse=False)

    def backward(self, grad_y):
        """Gradient with respect to the input (a fresh array); fills ``grads``."""
        if type(self)._backward is Module._backward:
            raise NotImplementedError(f"{type(self).__name__} must implement backward(grad_y)")
        return self._backward(grad_y, reuse=False)

    def _forward(self, x, reuse):
        """``forward`` writing into reused work arrays when ``reuse``; a layer that only has a
        public ``forward`` is called through it."""
        if type(self).forward is Module.forward:
            raise NotImplementedError(f"{type(self).__name__} must implement forward(x)")
        return self.forward(x)

    def _bind(self, shape):
        """For ``Sequential``'s eval-mode forward: a function ``f(x) -> y`` that runs this
        layer's eval-mode forward on inputs of exactly ``shape`` (and this layer's dtype,
        C-contiguous), with everything that depends only on the shape worked out here, once;
        or None to run the layer through ``_forward``. ``f`` keeps what ``_backward`` needs,
        as ``_forward`` does, so a backward pass may follow; ``f`` may raise ``_Unbound``
        when it finds that the layer changed in a way the binding did not foresee (its
        ``Sequential`` then runs the plain path)."""
        return None

    def _backward(self, grad_y, reuse):
        if type(self).backward is Module.backward:
            raise NotImplementedError(f"{type(self).__name__} must implement backward(grad_y)")
        return self.backward(grad_y)

    # -- mode -------------------------------------------------------------------------------

    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode, here and in every child."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"train(mode) expects a bool, got {mode!r}")
        if mode:
            self._refuse_if_frozen("train()")
        self.training = bool(mode)
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    # -- freezing for inference -------------------------------------------------------------

    def freeze(self):
        """Fix the weights for inference, as an ONNX Runtime session or ``torch.jit.freeze``
        does: evaluation mode, and every parameter and buffer here and in the children made
        read-only (NumPy's ``writeable`` flag, on each array and the buffer it is a view of).

        The work derived from the weights (packed convolution weights, the Conv-BN fold) is
        then reused after checking that the arrays are the same read-only objects, instead of
        comparing them byte by byte with a copy kept for that (a memcmp per layer and call,
        5-10% of a batch-1 inference, and a third copy of every convolution weight in memory).

        A frozen ``Sequential`` also runs its eval forward as one compiled chain of its
        kernels (``nn.container``). A frozen module refuses ``train()`` and
        ``load_state_dict`` (``RuntimeError``), and writing into its arrays raises NumPy's
        ``ValueError`` (an optimiser's step included); ``unfreeze()`` makes them writeable
        again, and the next forward re-derives what it reuses. Not detected: an array made
        writeable by hand (``a.flags.writeable = True``), written and made read-only again
        between two calls, and writes through a view of an array taken before ``freeze()``
        (NumPy leaves an existing view's flag as it was; ``torch.from_numpy`` gives such a
        view): use ``unfreeze()`` to edit weights. Returns the module."""
        self.eval()
        for module in self._modules():
            module.__dict__["_frozen"] = True
        for a in self._state_arrays():
            for part in (a, a.base):  # the view, then the packed buffer it is part of
                if isinstance(part, np.ndarray):
                    part.flags.writeable = False
        return self

    def unfreeze(self):
        """Undo ``freeze()``: parameters and buffers writeable again (the module stays in
        evaluation mode). Returns the module."""
        for a in self._state_arrays():
            for part in (a.base, a):  # the packed buffer first: a view follows its base
                if isinstance(part, np.ndarray):
                    try:
                        part.flags.writeable = True
                    except ValueError:  # memory that was never writeable (a view of bytes)
                        pass
        for module in self._modules():
            module.__dict__["_frozen"] = False
        return self

    @property
    def frozen(self):
        """Whether ``freeze()`` fixed this module's weights."""
        return self.__dict__.get("_frozen", False)

    def _modules(self):
        """This module and every module below it (each once)."""
        out, seen, stack = [], set(), [self]
        while stack:
            module = stack.pop()
            if id(module) not in seen:
                seen.add(id(module))
                out.append(module)
                stack.extend(child for _, child in module.children())
        return out

    def _state_arrays(self):
        """The parameter and buffer arrays of this module and the modules below it."""
        return [a for m in self._modules() for a in (*m.params.values(), *m.buffers.values())
                if isinstance(a, np.ndarray)]

    def _refuse_if_frozen(self, what):
        if self.frozen:
            raise RuntimeError(f"{type(self).__name__} is frozen for inference (freeze()): "
                               f"call unfreeze() before {what}")

    def children(self):
        """``(name, module)`` of the direct sub-modules (none for a plain layer)."""
        return []

    # -- parameters and state ---------------------------------------------------------------

    def parameters(self, prefix=""):
        """The parameters as a list of ``Parameter``, named as in PyTorch (``"0.weight"``)."""
        own = [Parameter(prefix + key, self.params[key], self.grads[key],
                         decay=key not in self._no_decay) for key in self.params]
        return own + [p for name, child in self.children()
                      for p in child.parameters(f"{prefix}{name}.")]

    def _pack_parameters(self):
        """Move the parameters of the built-in layers below this module into one flat buffer
        and their gradients into another, laid out alike: the decayed parameters (weights)
        first, then the others (biases, normalisation parameters), each in ``parameters()``
        order. The values are unchanged; each ``params[key]`` / ``grads[key]`` becomes a view
        of its buffer. An optimiser whose parameter group tiles one range of the buffers
        updates it with a few whole-buffer operations instead of a loop over parameters
        (``model.parameters()`` and ``model.param_groups()`` give such groups).

        Only layers defined by fastcnn are packed (a user's layer may keep references to its
        arrays); a module reached twice is packed once. Returns the number of parameters
        moved (0 when the arrays do not share one dtype)."""
        entries, seen = [], set()

        def visit(module):
            if id(module) in seen:
                return
            seen.add(id(module))
            if type(module).__module__.startswith("fastcnn."):
                for key in module.params:
                    entries.append((module, key, key not in module._no_decay))
            for _, child in module.children():
                visit(child)

        visit(self)
        entries = [e for e in entries if e[2]] + [e for e in entries if not e[2]]
        arrays = [(m.params[k], m.grads.get(k)) for m, k, _ in entries]
        if len(entries) < 2 or any(
                not isinstance(d, np.ndarray) or not isinstance(g, np.ndarray)
                or d.shape != g.shape or d.dtype != arrays[0][0].dtype or g.dtype != d.dtype
                for d, g in arrays):
            return 0
        total = sum(d.size for d, _ in arrays)
        flat_data = np.empty(total, dtype=arrays[0][0].dtype)
        flat_grad = np.zeros(total, dtype=arrays[0][0].dtype)
        offset = 0
        for (module, key, _), (d, g) in zip(entries, arrays):
            n = d.size
            view = flat_data[offset:offset + n].reshape(d.shape)
            np.copyto(view, d)
            module.params[key] = view
            view = flat_grad[offset:offset + n].reshape(d.shape)
            np.copyto(view, g)
            module.grads[key] = view
            offset += n
        return len(entries)

    def named_buffers(self, prefix=""):
        """``(name, array)`` of every buffer, here and in the children."""
        own = [(prefix + key, value) for key, value in self.buffers.items()]
        return own + [b for name, child in self.children()
                      for b in child.named_buffers(f"{prefix}{name}.")]

    def param_groups(self, weight_decay=0.0):
        """Parameters split for an optimiser, as ``torch.optim`` parameter groups:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest,
        "weight_decay": 0.0}]`` (empty groups left out). Decayed are convolution and linear
        weights; biases and normalisation parameters are not."""
        params = self.parameters()
        groups = [{"params": [p for p in params if p.decay], "weight_decay": weight_decay},
                  {"params": [p for p in params if not p.decay], "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def state_dict(self, prefix=""):
        """Copies of all parameters and buffers, keyed and ordered as in PyTorch (a module's own
        parameters, then its buffers, then each child's)."""
        state = OrderedDict((prefix + k, v.copy()) for k, v in self.params.items())
        state.update((prefix + k, np.array(v, copy=True)) for k, v in self.buffers.items())
        for name, child in self.children():
            state.update(child.state_dict(f"{prefix}{name}."))
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters and buffers in place (arrays, or anything with ``.numpy()`` such as
        torch tensors).

        Raises ``KeyError`` listing missing or unexpected keys (when ``strict``) and
        ``ValueError`` on a shape mismatch; nothing is changed unless every check passes.
        Values are cast to the target's dtype.
        """
        self._refuse_if_frozen("load_state_dict()")
        targets = {p.name: p.data for p in self.parameters()}
        targets.update(self.named_buffers())
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match the model: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        converted = {}
        for name, target in targets.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ValueError(f"{name}: shape {value.shape} in state_dict, model has "
                                 f"{target.shape}")
            converted[name] = value
        for name, value in converted.items():  # only after every check passed
            np.copyto(targets[name], value, casting="unsafe")

    # -- shapes -----------------------------------------------------------------------------

    def output_shape(self, input_shape):
        """Shape of the output for an input of ``input_shape`` (the identity by default)."""
        return tuple(input_shape)

    def macs(self, input_shape):
        """Multiply-adds per image (0 unless the layer says otherwise)."""
        return 0

    # -- helpers for built-in layers --------------------------------------------------------

    def _buffer(self, key, shape, reuse, dtype=None):
        """An uninitialised work array of this shape: the one from the last call when ``reuse``."""
        dtype = self.dtype if dtype is None else dtype
        buf = self._work.get(key) if reuse else None
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype=dtype)
            if reuse:
                self._work[key] = buf
        return buf

    def _scratch(self, size):
        """A kernel's work array of ``size`` elements of the layer's dtype, kept for the next
        call (grown when a call needs more): no call of a layer allocates it again."""
        buf = self._work.get("scratch")
        if buf is None or buf.size < size or buf.dtype != self.dtype:
            buf = self._work["scratch"] = np.empty(max(size, 1), dtype=self.dtype)
        return buf

    def _input(self, x, channels=None, ndim=4):
        """Check an input array against this layer (ndim, channels, dtype); C-contiguous."""
        if type(x) is np.ndarray and x.dtype == self.dtype and x.flags.c_contiguous and \
                (ndim is None or x.ndim == ndim) and \
                (channels is None or (x.ndim > 1 and x.shape[1] == channels)):
            return x  # what the checks below return for it, without their calls
        x = _array(x, "x")
        if x.dtype != self.dtype:
            raise TypeError(f"{type(self).__name__} has dtype {self.dtype} but x has dtype "
                            f"{x.dtype}; convert with x.astype(np.{self.dtype})")
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{type(self).__name__} expects a {ndim}-D input, got shape {x.shape}")
        if channels is not None and x.shape[1] != channels:
            what = "input features" if ndim == 2 else "input channels"
            raise ValueError(f"{type(self).__name__} expects {channels} {what}, got x of "
                             f"shape {x.shape}")
        return x

    def _grad_input(self, grad_y, shape):
        if type(grad_y) is np.ndarray and grad_y.shape == shape and self._cache is not None \
                and grad_y.dtype == self.dtype and grad_y.flags.c_contiguous:
            return grad_y  # what the checks below return for it, without their calls
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        grad_y = _array(grad_y, "grad_y", None, self.dtype)
        if grad_y.shape != tuple(shape):
            raise ValueError(f"grad_y has shape {grad_y.shape}, expected {tuple(shape)} "
                             "(the shape of the last forward output)")
        return grad_y

    def _init_uniform(self, shape, fan_in, gain, rng):
        bound = gain * np.sqrt(3.0 / fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(self.dtype)

    def extra_repr(self):
        """The hyper-parameters shown by ``repr`` (as PyTorch)."""
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"
