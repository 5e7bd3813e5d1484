"""Optimisers with parameter groups, as ``torch.optim``, updating parameters in place with no
allocation per step.

``params`` is a list of ``Parameter`` (``model.parameters()``) or a list of parameter groups,
dicts ``{"params": [...], "lr": ..., "weight_decay": ..., ...}`` whose entries override the
optimiser's defaults for that group (``model.param_groups(weight_decay)`` gives the usual split:
convolution and linear weights decayed, biases and normalisation parameters not). As in PyTorch,
a group's ``weight_decay`` applies to every parameter of the group. ``step()`` reads each
``p.grad`` (written by the model's backward pass) and updates ``p.data``.

The state (momentum buffers, Adam moments, step count, every group's settings) is exposed by
``state_dict()`` / ``load_state_dict()`` for checkpoints; state written before parameter groups
existed (one set of settings, weight decay on weights only) still loads.
"""

import math
import operator

import numpy as np

from . import _kernels
from ._threads import get_num_threads
from .nn import Parameter

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]


_DATA, _GRAD = operator.attrgetter("data"), operator.attrgetter("grad")

# Whether updates run as one fused kernel pass (``_kernels/optim.pyx``) where the arrays allow;
# tests set it False to run the NumPy sequence, the kernels' twin, on the same arrays.
_FUSED = True


def _fused_views(*arrays):
    """1-D views of the arrays when one fused kernel pass can update them (all C-contiguous
    float32 or all float64, of one size, the first, the parameters, writeable), else None:
    the NumPy sequence runs instead (a parameter rebound to a strided or other-typed array; a
    frozen model's read-only parameters, which NumPy refuses to write with its usual error)."""
    if not _FUSED:
        return None
    first = arrays[0]
    if not isinstance(first, np.ndarray) or not first.flags.writeable:
        return None
    dtype, size = first.dtype, first.size
    if dtype != np.float32 and dtype != np.float64:
        return None
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.size != size or \
                not a.flags.c_contiguous:
            return None
    return [a.reshape(-1) for a in arrays]


def _number(value, name, low=0.0, high=None, low_open=False, high_closed=False):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    bad = (not np.isfinite(value) or value < low or (low_open and value == low)
           or (high is not None and (value > high if high_closed else value >= high)))
    if bad:
        rng = (f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}"
               f"{']' if high_closed else ')'}")
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return value


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``state_dict``.

    Subclasses define ``_check(name, value)`` for their hyper-parameters, ``_update(group)`` and
    the class attribute ``_slots`` (names of the state arrays per parameter).

    Attributes
    ----------
    param_groups : list of dict
        Every group with all its settings filled in (``"params"``, ``"lr"``, ...), as PyTorch.
    defaults : dict
        The constructor's settings, used for what a group does not set.
    params : list of Parameter
        All parameters, in group order.
    steps : int
        Steps taken.
    """

    _slots = ()

    def __init__(self, params, defaults):
        if isinstance(params, Parameter) or hasattr(params, "parameters"):
            raise TypeError("params must be a non-empty list of Parameter, as returned by "
                            "model.parameters(), or a list of parameter-group dicts")
        params = list(params)
        if not params:
            raise TypeError("params must be a non-empty list of Parameter, as returned by "
                            "model.parameters()")
        if all(isinstance(g, dict) for g in params):
            groups = params
        elif all(isinstance(p, Parameter) for p in params):
            groups = [{"params": params}]
        else:
            raise TypeError("params must be a non-empty list of Parameter (as returned by "
                            "model.parameters()) or a list of dicts (parameter groups), not a mix"
                            " or other objects")
        self.defaults = {k: self._check(k, v) for k, v in defaults.items()}
        self.param_groups = []
        self.steps = 0
        self._slot_arrays = {}  # param name -> {slot: array}, the state saved in checkpoints
        self._work = {}  # (param name, slot) -> reused scratch array
        self._flat = {}  # id(group) -> _Flat (see _targets), or None where it does not apply
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add a group ``{"params": [...], <setting>: value, ...}``; missing settings come from
        ``defaults``."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"a parameter group must be a dict with a 'params' list, got "
                            f"{group!r}")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)} in a parameter group of "
                             f"{type(self).__name__} (known: {sorted(self.defaults)})")
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        if not params or not all(isinstance(p, Parameter) for p in params):
            raise TypeError("a parameter group's 'params' must be a non-empty list of Parameter")
        seen = {p.name for g in self.param_groups for p in g["params"]}
        names = [p.name for p in params]
        dup = [n for n in names if n in seen] or [n for i, n in enumerate(names)
                                                  if n in names[:i]]
        if dup:
            raise ValueError(f"parameter {dup[0]!r} appears in more than one parameter group")
        full = {"params": params}
        for key, default in self.defaults.items():
            full[key] = self._check(key, group[key]) if key in group else default
        self._check_group(full)
        self.param_groups.append(full)

    @property
    def params(self):
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def lr(self):
        """The first group's learning rate; setting it sets every group's (use
        ``param_groups[i]["lr"]`` for one group)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        value = self._check("lr", value)
        for g in self.param_groups:
            g["lr"] = value

    def __getattr__(self, name):
        # Settings read as attributes (opt.momentum, opt.weight_decay) give the defaults.
        defaults = self.__dict__.get("defaults")
        if defaults is not None and name in defaults:
            return defaults[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _check(self, name, value):
        if name == "lr":
            return _number(value, "lr", low_open=True)
        if name == "weight_decay":
            return _number(value, "weight_decay")
        return value

    def _check_group(self, group):
        pass

    def _slot(self, p, slot):
        """Optimiser state for p (saved in checkpoints), created as zeros on first use."""
        arrays = self._slot_arrays.setdefault(p.name, {})
        if slot not in arrays:
            arrays[slot] = np.zeros_like(p.data)
        return arrays[slot]

    def _scratch(self, p, slot):
        """A reused work buffer for p (not state: never saved)."""
        key = (p.name, slot)
        buf = self._work.get(key)
        if buf is None:
            buf = self._work[key] = np.empty_like(p.data)
        return buf

    def _decayed_grad(self, p, weight_decay):
        """The gradient plus ``weight_decay * W`` (L2 added to the gradient, as PyTorch)."""
        if weight_decay:
            out = self._scratch(p, "decayed")
            np.multiply(p.data, weight_decay, out=out)
            out += p.grad
            return out
        return p.grad

    def _targets(self, group):
        """What one update of `group` runs on: ``[_Flat]`` when the group's parameters and
        gradients tile one contiguous range of a flat buffer each (as ``Sequential`` packs
        them: see ``Module._pack_parameters``), so that each element-wise operation of the
        update runs once over the whole group instead of once per parameter (the same
        operations on the same elements: bitwise the same result); else one ``_Single`` per
        parameter."""
        params = group["params"]
        flat = self._flat.get(id(group), False)
        if flat is False or (flat is not None and not flat.valid(params)):
            flat = self._flat[id(group)] = _Flat.make(self, params)
        if flat is None or flat.mixed_state(self._slots):
            return [_Single(self, p) for p in params]
        return [flat]

    def step(self):
        """Apply one update to every parameter from its current gradient."""
        for group in self.param_groups:
            self._update(group)
        self.steps += 1

    def zero_grad(self):
        """Set every gradient to zero (fastcnn's backward writes gradients rather than adding to
        them, so training loops do not need this)."""
        for p in self.params:
            p.grad[...] = 0

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self):
        """``(arrays, info)``: the state arrays keyed ``"<param>.<slot>"``, and JSON-able settings:
        ``type``, ``steps``, the first group's settings at the top level (as before parameter
        groups existed) and ``param_groups``, a list of each group's settings with its
        parameter names."""
        arrays = {f"{name}.{slot}": a.copy() for name, slots in self._slot_arrays.items()
                  for slot, a in slots.items()}
        info = {"type": type(self).__name__, "steps": self.steps}
        info.update(_jsonable({k: v for k, v in self.param_groups[0].items() if k != "params"}))
        info["param_groups"] = [
            dict(_jsonable({k: v for k, v in g.items() if k != "params"}),
                 params=[p.name for p in g["params"]]) for g in self.param_groups]
        return arrays, info

    def settings_by_param(self, info=None):
        """``{param name: {setting: value}}`` (learning rate excluded) of this optimiser, or of
        a saved ``state_dict()`` info: what a checkpoint must agree with to be resumed. Saved
        state without parameter groups gives its ``weight_decay`` to the parameters that decay
        (weights) and 0 to the rest, as that state was made."""
        if info is None:
            info = self.state_dict()[1]
        keys = [k for k in self.defaults if k != "lr"]
        out = {}
        if "param_groups" in info:
            for g in info["param_groups"]:
                for name in g.get("params", []):
                    out[name] = {k: g.get(k) for k in keys}
        else:
            for p in self.params:
                s = {k: info.get(k, self.defaults[k]) for k in keys}
                s = _jsonable(s)
                if not p.decay:
                    s["weight_decay"] = 0.0
                out[p.name] = s
        return out

    def load_state_dict(self, arrays, info):
        """Restore the state saved by :meth:`state_dict` (arrays and settings).

        The saved groups must hold the same parameter names as this optimiser's; their settings
        (learning rate included) replace this optimiser's. Saved state without groups sets every
        group's learning rate and leaves the other settings as constructed.
        """
        if info.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {info.get('type')}, not "
                             f"{type(self).__name__}")
        by_name = {p.name: p for p in self.params}
        checked = []
        for key, value in arrays.items():
            name, _, slot = key.rpartition(".")
            value = np.asarray(value)
            if name not in by_name or slot not in self._slots or \
                    value.shape != by_name[name].data.shape:
                raise ValueError(f"optimizer state {key!r} does not match the model's parameters"
                                 f" or {type(self).__name__}'s state")
            checked.append((by_name[name], slot, value))
        saved_groups = info.get("param_groups")
        updates = []
        if saved_groups is not None:
            if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups):
                raise ValueError(f"optimizer state has {len(saved_groups or [])} parameter "
                                 f"groups, this optimizer {len(self.param_groups)}")
            for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
                if list(saved.get("params", [])) != [p.name for p in group["params"]]:
                    raise ValueError(f"optimizer state's parameter group {i} holds other "
                                     f"parameters than this optimizer's")
                updates.append({k: self._check(k, _restore(saved[k])) for k in self.defaults
                                if k in saved})
        steps = info.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"invalid optimizer steps {steps!r}")
        lr = self._check("lr", info["lr"]) if saved_groups is None else None
        # Only after every check passed:
        for p, slot, value in checked:
            np.copyto(self._slot(p, slot), value, casting="unsafe")
        for group, upd in zip(self.param_groups, updates):
            group.update(upd)
        if lr is not None:
            self.lr = lr
        self.steps = steps

    def __repr__(self):
        groups = "".join(
            f"\n  group {i}: " + ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            + f" ({len(g['params'])} parameters)" for i, g in enumerate(self.param_groups))
        return f"{type(self).__name__}({groups}\n)"


class _Single:
    """One parameter as the target of an update: its arrays, state slots and scratch."""

    __slots__ = ("opt", "p", "data", "grad")

    def __init__(self, opt, p):
        self.opt, self.p, self.data, self.grad = opt, p, p.data, p.grad

    def has(self, slot):
        return slot in self.opt._slot_arrays.get(self.p.name, ())

    def slot(self, slot):
        return self.opt._slot(self.p, slot)

    def scratch(self, slot):
        return self.opt._scratch(self.p, slot)

    def decayed_grad(self, weight_decay):
        return self.opt._decayed_grad(self.p, weight_decay)


class _Flat:
    """A whole parameter group as one target: flat views over the range of the packed buffer
    that its parameters (and, at the same offsets, their gradients) tile exactly. Its state
    slots are flat arrays whose per-parameter views are the optimiser's state (what
    ``state_dict`` saves and ``load_state_dict`` writes into), so nothing else changes."""

    def __init__(self, names, arrays, data, grad, offsets):
        self.names, self.arrays = names, arrays  # arrays: the (data, grad) pairs
        self.datas, self.grads = tuple(d for d, _ in arrays), tuple(g for _, g in arrays)
        self.data, self.grad, self.offsets = data, grad, offsets
        self.slots, self.work = {}, {}

    @staticmethod
    def _span(arrays):
        """(base, start) when the C-contiguous arrays, in address order, tile one range of
        a 1-D buffer without gaps; else None. ``start`` is in elements."""
        first = arrays[0]
        base, dtype = first.base, first.dtype
        if base is None or not isinstance(base, np.ndarray) or base.ndim != 1 or \
                not base.flags.c_contiguous or base.dtype != dtype:
            return None
        if any(a.base is not base or a.dtype != dtype or not a.flags.c_contiguous
               for a in arrays):
            return None
        addr0 = base.ctypes.data
        spans = sorted((a.ctypes.data - addr0, a.size) for a in arrays)
        item = dtype.itemsize
        for (off, n), (nxt, _) in zip(spans, spans[1:]):
            if off + n * item != nxt:
                return None
        return base, spans[0][0] // item

    @classmethod
    def make(cls, opt, params):
        if len(params) < 2:
            return None
        datas = [p.data for p in params]
        grads = [p.grad for p in params]
        if any(not isinstance(a, np.ndarray) for a in datas + grads) or \
                any(d.shape != g.shape for d, g in zip(datas, grads)):
            return None
        ds, gs = cls._span(datas), cls._span(grads)
        if ds is None or gs is None:
            return None
        item = datas[0].dtype.itemsize
        d0, g0 = datas[0].base.ctypes.data, grads[0].base.ctypes.data
        offsets = [(d.ctypes.data - d0) // item - ds[1] for d in datas]
        if offsets != [(g.ctypes.data - g0) // item - gs[1] for g in grads]:
            return None  # gradients laid out differently from the parameters
        size = sum(d.size for d in datas)
        if len({id(d) for d in datas}) != len(datas) or \
                len({p.name for p in params}) != len(params):
            return None
        flat = cls([p.name for p in params], [(p.data, p.grad) for p in params],
                   ds[0][ds[1]:ds[1] + size], gs[0][gs[1]:gs[1] + size], offsets)
        flat.opt = opt
        return flat

    def valid(self, params):
        """Still the same arrays (a Parameter's data or grad may have been rebound). The state
        views stay ours: the optimiser creates slots only where they are missing and loads
        state by copying into them."""
        return (len(params) == len(self.datas)
                and all(map(operator.is_, map(_DATA, params), self.datas))
                and all(map(operator.is_, map(_GRAD, params), self.grads)))

    def mixed_state(self, slots):
        """Whether some parameters have a state slot and others not (state loaded for part of
        the group): the per-parameter path, which treats each on its own, must run."""
        arrays = self.opt._slot_arrays
        for slot in slots:
            if slot not in self.slots:
                present = {slot in arrays.get(name, ()) for name in self.names}
                if len(present) > 1:
                    return True
        return False

    def has(self, slot):
        if slot in self.slots:
            return True
        if slot not in self.opt._slot_arrays.get(self.names[0], ()):
            return False  # none has it (mixed_state ruled out a mix)
        self.slot(slot)  # adopt the existing per-parameter state
        return True

    def slot(self, slot):
        entry = self.slots.get(slot)
        if entry is None:
            flat = np.zeros_like(self.data)
            views = []
            arrays = self.opt._slot_arrays
            for name, off, (d, _) in zip(self.names, self.offsets, self.arrays):
                view = flat[off:off + d.size].reshape(d.shape)
                old = arrays.get(name, {}).get(slot)
                if old is not None:
                    np.copyto(view, old)
                arrays.setdefault(name, {})[slot] = view
                views.append(view)
            entry = self.slots[slot] = (flat, views)
        return entry[0]

    def scratch(self, slot):
        buf = self.work.get(slot)
        if buf is None:
            buf = self.work[slot] = np.empty_like(self.data)
        return buf

    def decayed_grad(self, weight_decay):
        if weight_decay:
            out = self.scratch("decayed")
            np.multiply(self.data, weight_decay, out=out)
            out += self.grad
            return out
        return self.grad


def _jsonable(settings):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def _restore(value):
    return tuple(value) if isinstance(value, list) else value


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    ``g = grad + weight_decay * W``; ``v = g`` on the first step, then
    ``v = momentum * v + (1 - dampening) * g``; ``W -= lr * (g + momentum * v)`` with Nesterov,
    else ``W -= lr * v`` (``W -= lr * g`` without momentum).

    Parameters
    ----------
    params : list of Parameter, or list of dict
        Parameters, or parameter groups (dicts with ``"params"`` and any of the settings below).
    lr : float > 0
    momentum : float in [0, 1), default 0
    dampening : float in [0, 1], default 0
    weight_decay : float >= 0, default 0
        Applied to every parameter of a group (use ``model.param_groups(weight_decay)`` to leave
        biases and normalisation parameters undecayed).
    nesterov : bool, default False
        Needs ``momentum > 0`` and ``dampening == 0``.
    """

    _slots = ("momentum",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov})

    def _check(self, name, value):
        if name == "momentum":
            return _number(value, "momentum", 0.0, 1.0)
        if name == "dampening":
            return _number(value, "dampening", 0.0, 1.0, high_closed=True)
        if name == "nesterov":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"nesterov must be a bool, got {value!r}")
            return bool(value)
        return super()._check(name, value)

    def _check_group(self, group):
        if group["nesterov"] and (group["momentum"] == 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")

    def _fused(self, t, lr, momentum, dampening, nesterov, weight_decay, first):
        """The update of target t as one kernel pass, bitwise the NumPy sequence below;
        False (nothing done) when the arrays do not allow it."""
        views = _fused_views(t.data, t.grad, *((t.slot("momentum"),) if momentum else ()))
        if views is None:
            return False
        w, g = views[0], views[1]
        _kernels.optim.sgd(w, g, views[2] if momentum else w, lr, weight_decay, momentum,
                           dampening, nesterov, first, get_num_threads())
        return True

    def _update(self, group):
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        nesterov, weight_decay = group["nesterov"], group["weight_decay"]
        for t in self._targets(group):
            first = momentum and not t.has("momentum")
            if self._fused(t, lr, momentum, dampening, nesterov, weight_decay, first):
                continue
            g = t.decayed_grad(weight_decay)
            if momentum:
                v = t.slot("momentum")
                if first:  # PyTorch: the buffer starts as the first gradient
                    np.copyto(v, g)
                else:
                    v *= momentum
                    if dampening:
                        u = t.scratch("update")
                        np.multiply(g, 1 - dampening, out=u)
                        v += u
                    else:
                        v += g
                if nesterov:
                    u = t.scratch("update")
                    np.multiply(v, momentum, out=u)
                    u += g
                    g = u
                else:
                    g = v
            u = t.scratch("update")
            np.multiply(g, lr, out=u)
            t.data -= u


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam``: bias-corrected first and second moments.

    ``g = grad + weight_decay * W``; ``m += (1 - b1) * (g - m)``; ``v = b2 * v + (1 - b2) g^2``;
    ``W -= lr / (1 - b1^t) * m / (sqrt(v') / sqrt(1 - b2^t) + eps)`` with ``v' = v``, or with
    ``amsgrad`` the running maximum of ``v``.

    Parameters
    ----------
    params : list of Parameter, or list of dict
        Parameters, or parameter groups with per-group settings.
    lr : float > 0, default 1e-3
    betas : (float, float) in [0, 1)
    eps : float > 0, default 1e-8
    weight_decay : float >= 0, default 0
        L2 added to the gradient of every parameter of the group, as PyTorch's Adam.
    amsgrad : bool, default False
    """

    _slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay, "amsgrad": amsgrad})

    def _check(self, name, value):
        if name == "betas":
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or \
                    len(value) != 2:
                raise ValueError(f"betas must be a pair, got {value!r}")
            return (_number(value[0], "betas[0]", 0.0, 1.0),
                    _number(value[1], "betas[1]", 0.0, 1.0))
        if name == "eps":
            return _number(value, "eps", low_open=True)
        if name == "amsgrad":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"amsgrad must be a bool, got {value!r}")
            return bool(value)
        return super()._check(name, value)

    def _update(self, group):
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
        t = self.steps + 1
        step_size = lr / (1 - b1 ** t)
        root_c2 = math.sqrt(1 - b2 ** t)  # a Python float keeps float32 arrays in float32
        for t in self._targets(group):
            slots = [t.slot("exp_avg"), t.slot("exp_avg_sq")]
            if amsgrad:
                slots.append(t.slot("max_exp_avg_sq"))
            views = _fused_views(t.data, t.grad, *slots)
            if views is not None:
                _kernels.optim.adam(views[0], views[1], views[2], views[3], views[-1],
                                    weight_decay, 1 - lr * weight_decay, b1, b2, root_c2, eps,
                                    step_size, self._decoupled, amsgrad, get_num_threads())
                continue
            if self._decoupled:
                if weight_decay:
                    t.data *= 1 - lr * weight_decay
                g = t.grad
            else:
                g = t.decayed_grad(weight_decay)
            m = t.slot("exp_avg")
            v = t.slot("exp_avg_sq")
            tmp = t.scratch("update")
            # m.lerp_(g, 1 - b1) as PyTorch: m + (1 - b1) * (g - m)
            np.subtract(g, m, out=tmp)
            tmp *= 1 - b1
            m += tmp
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= 1 - b2
            v += tmp
            if amsgrad:
                vmax = t.slot("max_exp_avg_sq")
                np.maximum(vmax, v, out=vmax)
                v = vmax
            # W -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), as PyTorch does it
            np.sqrt(v, out=tmp)
            tmp /= root_c2
            tmp += eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            t.data -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``:
    ``W *= 1 - lr * weight_decay`` before the Adam update (which sees the plain gradient).

    Parameters are those of :class:`Adam`; ``weight_decay`` defaults to 0.01 as in PyTorch.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
