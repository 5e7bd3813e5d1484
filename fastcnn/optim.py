"""Optimisers that update parameters in place, with no allocation per step.

Both take the list of ``Parameter`` from ``model.parameters()``; ``step()`` reads each
``p.grad`` (written by the model's backward pass) and updates ``p.data``. Their state (momentum,
Adam moments, step count) is exposed by ``state_dict()`` / ``load_state_dict()`` for checkpoints.
``weight_decay`` adds ``weight_decay * W`` to the gradient of weights only (biases are not
decayed), the same as ``CrossEntropyLoss(l2=...)``.
"""

import math

import numpy as np

from .nn import Parameter

__all__ = ["SGD", "Adam"]


def _number(value, name, low=0.0, high=None, low_open=False):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    bad = (not np.isfinite(value) or value < low or (low_open and value == low)
           or (high is not None and value >= high))
    if bad:
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return value


class _Optimizer:
    def __init__(self, params, lr, weight_decay):
        params = list(params)
        if not params or not all(isinstance(p, Parameter) for p in params):
            raise TypeError("params must be a non-empty list of Parameter, as returned by "
                            "model.parameters()")
        self.params = params
        self.lr = _number(lr, "lr", low_open=True)
        self.weight_decay = _number(weight_decay, "weight_decay")
        self.steps = 0
        self._slots = {}  # param name -> {slot: array}, the state saved in checkpoints
        self._work = {}  # (param name, slot) -> reused scratch array

    def _slot(self, p, slot):
        """Optimiser state for p (saved in checkpoints), created as zeros on first use."""
        arrays = self._slots.setdefault(p.name, {})
        if slot not in arrays:
            arrays[slot] = np.zeros_like(p.data)
        return arrays[slot]

    def _scratch(self, p, slot):
        """A reused work buffer for p (not state: never saved)."""
        key = (p.name, slot)
        if key not in self._work:
            self._work[key] = np.empty_like(p.data)
        return self._work[key]

    def _grad(self, p):
        """The gradient to apply: p.grad, plus weight_decay * W for weights."""
        if self.weight_decay and p.is_weight:
            out = self._scratch(p, "decayed")
            np.multiply(p.data, self.weight_decay, out=out)
            out += p.grad
            return out
        return p.grad

    def state_dict(self):
        """``(arrays, info)``: slot arrays keyed "<param>.<slot>", and JSON-able settings."""
        arrays = {f"{name}.{slot}": a.copy() for name, slots in self._slots.items()
                  for slot, a in slots.items()}
        info = {"type": type(self).__name__, "lr": self.lr, "steps": self.steps,
                "weight_decay": self.weight_decay}
        info.update(self._hyper())
        return arrays, info

    def load_state_dict(self, arrays, info):
        if info.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {info.get('type')}, not "
                             f"{type(self).__name__}")
        by_name = {p.name: p for p in self.params}
        for key, value in arrays.items():
            name, slot = key.rsplit(".", 1)
            if name not in by_name or value.shape != by_name[name].data.shape:
                raise ValueError(f"optimizer state {key!r} does not match the model's parameters")
            np.copyto(self._slot(by_name[name], slot), value, casting="unsafe")
        self.lr = float(info["lr"])
        self.steps = int(info["steps"])
        self.weight_decay = float(info.get("weight_decay", self.weight_decay))
        self._load_hyper(info)

    def _hyper(self):
        return {}

    def _load_hyper(self, info):
        pass


class SGD(_Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as in PyTorch.

    ``v = momentum * v + g``; ``W -= lr * (g + momentum * v)`` with Nesterov, else ``lr * v``.

    Parameters
    ----------
    params : list of Parameter
    lr : float > 0
    momentum : float in [0, 1)
    weight_decay : float >= 0
    nesterov : bool
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr, weight_decay)
        self.momentum = _number(momentum, "momentum", 0.0, 1.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def _hyper(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def _load_hyper(self, info):
        self.momentum = float(info.get("momentum", self.momentum))
        self.nesterov = bool(info.get("nesterov", self.nesterov))

    def step(self):
        """Apply one update to every parameter from its current gradient."""
        for p in self.params:
            g = self._grad(p)
            if self.momentum:
                v = self._slot(p, "momentum")
                if self.steps == 0:
                    np.copyto(v, g)
                else:
                    v *= self.momentum
                    v += g
                if self.nesterov:
                    u = self._scratch(p, "update")
                    np.multiply(v, self.momentum, out=u)
                    u += g
                    g = u
                else:
                    g = v
            u = self._scratch(p, "update")
            np.multiply(g, self.lr, out=u)
            p.data -= u
        self.steps += 1

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
                f"nesterov={self.nesterov})")


class Adam(_Optimizer):
    """Adam (Kingma & Ba), as in PyTorch: bias-corrected first and second moments.

    Parameters
    ----------
    params : list of Parameter
    lr : float > 0, default 1e-3
    betas : (float, float) in [0, 1)
    eps : float > 0
    weight_decay : float >= 0 (added to the gradient of weights, as PyTorch's Adam does)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        self.betas = (_number(betas[0], "betas[0]", 0.0, 1.0), _number(betas[1], "betas[1]", 0.0,
                                                                        1.0))
        self.eps = _number(eps, "eps", low_open=True)

    def _hyper(self):
        return {"betas": list(self.betas), "eps": self.eps}

    def _load_hyper(self, info):
        self.betas = tuple(float(b) for b in info.get("betas", self.betas))
        self.eps = float(info.get("eps", self.eps))

    def step(self):
        """Apply one update to every parameter from its current gradient."""
        b1, b2 = self.betas
        t = self.steps + 1
        step_size = self.lr / (1 - b1 ** t)
        root_c2 = math.sqrt(1 - b2 ** t)  # a Python float keeps float32 arrays in float32
        for p in self.params:
            g = self._grad(p)
            m = self._slot(p, "exp_avg")
            v = self._slot(p, "exp_avg_sq")
            tmp = self._scratch(p, "update")
            m *= b1
            np.multiply(g, 1 - b1, out=tmp)
            m += tmp
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= 1 - b2
            v += tmp
            # W -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), as PyTorch does it
            np.sqrt(v, out=tmp)
            tmp /= root_c2
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p.data -= tmp
        self.steps += 1

    def __repr__(self):
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")
