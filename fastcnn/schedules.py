"""Learning-rate schedules for :class:`fastcnn.Trainer`, named and parametrised as
``torch.optim.lr_scheduler``.

A schedule is a small stateless object: ``lr(base_lr, epoch, step, steps_per_epoch, epochs)``
gives the learning rate of batch `step` of epoch `epoch` (both 0-based) for a parameter group
whose rate at construction was `base_lr`. The trainer sets every group's rate from it before
every optimiser step, so a run resumed mid-epoch gets the same rates as an uninterrupted one.
``config()`` is the JSON-able description a checkpoint records.

============================  ============================================  ==================
schedule                      rate                                          changes
============================  ============================================  ==================
``ConstantLR()`` / None       ``base_lr``                                   never
``StepLR(step_size, gamma)``  ``base_lr * gamma ** (epoch // step_size)``    at epoch ends
``MultiStepLR(milestones)``   ``base_lr * gamma ** (milestones passed)``     at epoch ends
``CosineAnnealingLR()``       ``eta_min + (base_lr - eta_min)(1 + cos(pi t/T))/2``  every step
``OneCycleLR()``              warm-up to ``base_lr``, then anneal            every step
============================  ============================================  ==================

``t = epoch * steps_per_epoch + step`` is the global step and ``T = epochs * steps_per_epoch``.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["SCHEDULES", "ConstantLR", "CosineAnnealingLR", "MultiStepLR", "OneCycleLR",
           "Schedule", "StepLR", "get_schedule"]


def _int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _float(value, name, low, high, low_open=True, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not \
            math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if (value < low or (low_open and value == low) or value > high
            or (high_open and value == high)):
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}"
                         f"{')' if high_open else ']'}, got {value}")
    return value


class Schedule:
    """Base class. Subclasses implement :meth:`lr` and :meth:`config`."""

    name = "constant"

    def lr(self, base_lr, epoch, step, steps_per_epoch, epochs):
        """The rate of batch `step` (0-based) of epoch `epoch` (0-based)."""
        raise NotImplementedError

    def config(self):
        """JSON-able settings (with ``"name"``), recorded in checkpoints."""
        return {"name": self.name}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return isinstance(other, Schedule) and self.config() == other.config()

    __hash__ = None


class ConstantLR(Schedule):
    """``base_lr`` throughout (no schedule)."""

    name = "constant"

    def lr(self, base_lr, epoch, step, steps_per_epoch, epochs):
        return base_lr


class StepLR(Schedule):
    """``base_lr * gamma ** (epoch // step_size)``, as ``torch.optim.lr_scheduler.StepLR`` stepped
    once per epoch (its closed form).

    Parameters
    ----------
    step_size : int >= 1
        Epochs between decays.
    gamma : float in (0, 1], default 0.1
    """

    name = "step"

    def __init__(self, step_size, gamma=0.1):
        self.step_size = _int(step_size, "step_size", 1)
        self.gamma = _float(gamma, "gamma", 0.0, 1.0)

    def lr(self, base_lr, epoch, step, steps_per_epoch, epochs):
        return base_lr * self.gamma ** (epoch // self.step_size)

    def config(self):
        return {"name": self.name, "step_size": self.step_size, "gamma": self.gamma}


class MultiStepLR(Schedule):
    """``base_lr * gamma ** k`` where ``k`` counts the milestones (epochs) reached, as
    ``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch.

    Parameters
    ----------
    milestones : sequence of int >= 1, increasing
    gamma : float in (0, 1], default 0.1
    """

    name = "multistep"

    def __init__(self, milestones, gamma=0.1):
        try:
            milestones = [_int(m, "milestones", 1) for m in milestones]
        except TypeError:
            raise ValueError(f"milestones must be a list of integers, got {milestones!r}") \
                from None
        if not milestones or any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be a non-empty increasing list, got {milestones}")
        self.milestones = milestones
        self.gamma = _float(gamma, "gamma", 0.0, 1.0)

    def lr(self, base_lr, epoch, step, steps_per_epoch, epochs):
        return base_lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)

    def config(self):
        return {"name": self.name, "milestones": list(self.milestones), "gamma": self.gamma}


class CosineAnnealingLR(Schedule):
    """Cosine decay per step over the whole run: ``eta_min + (base_lr - eta_min) * (1 +
    cos(pi * t / T)) / 2``, as ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=T)`` stepped
    after every batch. It starts at ``base_lr`` and would reach ``eta_min`` one step after the
    last.

    Parameters
    ----------
    eta_min : float >= 0, default 0
    """

    name = "cosine"

    def __init__(self, eta_min=0.0):
        self.eta_min = _float(eta_min, "eta_min", 0.0, math.inf, low_open=False)

    def lr(self, base_lr, epoch, step, steps_per_epoch, epochs):
        t = epoch * steps_per_epoch + step
        total = max(epochs * steps_per_epoch, 1)
        cos = 1.0 + math.cos(math.pi * min(t, total) / total)
        if self.eta_min == 0:
            return base_lr * 0.5 * cos
        return self.eta_min + (base_lr - self.eta_min) * cos / 2

    def config(self):
        return {"name": self.name, "eta_min": self.eta_min}


class OneCycleLR(Schedule):
    """One cycle (Smith & Topin), as ``torch.optim.lr_scheduler.OneCycleLR(max_lr=base_lr,
    total_steps=T)`` with ``three_phase=False`` and no momentum cycling: the rate rises from
    ``base_lr / div_factor`` to ``base_lr`` over the first ``pct_start * T - 1`` steps (the
    warm-up), then falls to ``base_lr / (div_factor * final_div_factor)`` at the last step.

    Both phases follow `anneal_strategy`, as in PyTorch: ``"cos"`` (default: a half cosine, so
    the warm-up is a cosine warm-up) or ``"linear"``.

    Parameters
    ----------
    pct_start : float in (0, 1), default 0.3
    div_factor : float > 0, default 25
    final_div_factor : float > 0, default 1e4
    anneal_strategy : {"cos", "linear"}, default "cos"
    """

    name = "onecycle"

    def __init__(self, pct_start=0.3, div_factor=25.0, final_div_factor=1e4,
                 anneal_strategy="cos"):
        self.pct_start = _float(pct_start, "pct_start", 0.0, 1.0, high_open=True)
        self.div_factor = _float(div_factor, "div_factor", 0.0, math.inf)
        self.final_div_factor = _float(final_div_factor, "final_div_factor", 0.0, math.inf)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def lr(self, base_lr, epoch, step, steps_per_epoch, epochs):
        total = epochs * steps_per_epoch
        t = min(epoch * steps_per_epoch + step, total - 1)
        initial = base_lr / self.div_factor
        final = initial / self.final_div_factor
        warm_end = float(self.pct_start * total) - 1
        if t <= warm_end:
            return self._anneal(initial, base_lr, t / warm_end if warm_end > 0 else 1.0)
        span = (total - 1) - warm_end
        return self._anneal(base_lr, final, (t - warm_end) / span if span > 0 else 1.0)

    def config(self):
        return {"name": self.name, "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor,
                "anneal_strategy": self.anneal_strategy}


#: Schedule names accepted by :func:`get_schedule` (and the CLI's ``--schedule``).
SCHEDULES = {"constant": ConstantLR, "step": StepLR, "multistep": MultiStepLR,
             "cosine": CosineAnnealingLR, "onecycle": OneCycleLR}


def get_schedule(schedule, epochs=None, **kwargs):
    """A :class:`Schedule` from a name, a ``config()`` dict, or a schedule (returned as is).

    ``None`` and ``"none"`` mean :class:`ConstantLR`. ``"step"`` without ``step_size`` decays
    every ``max(1, epochs // 3)`` epochs. `kwargs` go to the schedule's constructor.
    """
    if isinstance(schedule, Schedule):
        if kwargs:
            raise ValueError("schedule settings given for a Schedule object")
        return schedule
    if isinstance(schedule, dict):
        kwargs = {**{k: v for k, v in schedule.items() if k != "name"}, **kwargs}
        schedule = schedule.get("name")
    if schedule is None or schedule == "none":
        schedule = "constant"
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {['none', *SCHEDULES]} or a Schedule, got "
                         f"{schedule!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if schedule == "step" and "step_size" not in kwargs:
        kwargs["step_size"] = max(1, (epochs or 3) // 3)
    if schedule == "multistep" and "milestones" not in kwargs:
        raise ValueError("the multistep schedule needs milestones")
    try:
        return SCHEDULES[schedule](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad settings for the {schedule} schedule: {exc}") from None
