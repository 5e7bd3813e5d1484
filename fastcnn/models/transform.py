"""``InputTransform``: how raw images become a model's input (zero padding, then per-channel
normalisation), recorded in model files so that ``predict`` prepares images as training did."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["InputTransform"]


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class InputTransform:
    """Zero padding, then per-channel normalisation, applied to raw images with pixels in [0, 1].

    ``x -> (pad(x) - mean[c]) / std[c]``, computed in the model's dtype as two in-place
    operations (the same float operations, so the same bits, as ``fastcnn.datasets`` applies to
    the training data).

    Parameters
    ----------
    padding : int or (int, int), default 0
        Zero rows (columns) added above and below (left and right): LeNet-5's 28x28 digits are
        padded by 2 to its 32x32 input.
    mean, std : sequence of float, optional
        Per-channel statistics on the [0, 1] pixel scale (one value per channel; both or
        neither). `mean` finite, `std` finite and > 0.

    Shape
    -----
    Raw images ``(N, C, H - 2*ph, W - 2*pw)`` become ``(N, C, H, W)``, the model's input shape.

    JSON (``to_spec``): ``{"padding": [ph, pw], "normalization": {"mean": [...], "std": [...]}
    or null}``.
    """

    __slots__ = ("padding", "mean", "std")

    def __init__(self, padding=0, mean=None, std=None):
        if _is_int(padding):
            padding = (padding, padding)
        if (not isinstance(padding, (tuple, list)) or len(padding) != 2
                or not all(_is_int(p) for p in padding) or min(padding) < 0
                or max(padding) > 2 ** 16):
            raise ValueError(f"padding must be an int or a pair of ints in [0, 65536], got "
                             f"{padding!r}")
        self.padding = (int(padding[0]), int(padding[1]))
        if (mean is None) != (std is None):
            raise ValueError("normalization needs both mean and std (or neither)")
        self.mean = self.std = None
        if mean is not None:
            self.mean = self._values(mean, "mean")
            self.std = self._values(std, "std")
            if len(self.mean) != len(self.std):
                raise ValueError(f"normalization has {len(self.mean)} means but "
                                 f"{len(self.std)} stds")
            if not all(s > 0 for s in self.std):
                raise ValueError(f"normalization std must be > 0, got {list(self.std)}")

    @staticmethod
    def _values(values, name):
        if isinstance(values, (int, float, np.number)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, (list, tuple, np.ndarray)) or not 1 <= len(values) <= 2 ** 16:
            raise ValueError(f"normalization {name} must be a list of numbers (one per "
                             f"channel), got {type(values).__name__}")
        out = []
        for v in values:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
                raise ValueError(f"normalization {name} must hold numbers, got {v!r}")
            try:
                finite = math.isfinite(float(v))
            except OverflowError:
                finite = False
            if not finite:
                raise ValueError(f"normalization {name} must be finite, got {str(v)[:40]}")
            out.append(float(v))
        return tuple(out)

    @property
    def normalizes(self):
        return self.mean is not None

    def __eq__(self, other):
        return (isinstance(other, InputTransform) and self.padding == other.padding
                and self.mean == other.mean and self.std == other.std)

    def __repr__(self):
        norm = "" if self.mean is None else f", mean={list(self.mean)}, std={list(self.std)}"
        return f"InputTransform(padding={self.padding}{norm})"

    def is_identity(self):
        return self.padding == (0, 0) and self.mean is None

    # -- JSON ----------------------------------------------------------------------------------

    def to_spec(self):
        norm = None if self.mean is None else {"mean": list(self.mean), "std": list(self.std)}
        return {"padding": list(self.padding), "normalization": norm}

    @classmethod
    def from_spec(cls, spec, input_shape=None):
        """The transform of a spec's ``"input_transform"`` (None for null), checked against the
        model's `input_shape` (C, H, W): one mean and std per channel, padding smaller than
        half the input. Raises ValueError."""
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise ValueError(f"input_transform must be an object or null, got "
                             f"{type(spec).__name__}")
        unknown = [k for k in spec if k not in ("padding", "normalization")]
        if unknown:
            raise ValueError(f"input_transform: unknown key {str(unknown[0])[:64]!r} (keys: "
                             f"padding, normalization)")
        norm = spec.get("normalization")
        if norm is not None and (not isinstance(norm, dict) or set(norm) != {"mean", "std"}):
            raise ValueError(f"input_transform: normalization must be {{\"mean\": [...], "
                             f"\"std\": [...]}} or null, got {str(norm)[:80]}")
        try:
            out = cls(spec.get("padding", 0), *((norm["mean"], norm["std"]) if norm else ()))
        except ValueError as exc:
            raise ValueError(f"input_transform: {exc}") from None
        if input_shape is not None:
            out.check(input_shape)
        return out

    @classmethod
    def coerce(cls, value, input_shape=None):
        """An InputTransform from None, an InputTransform or its JSON dict."""
        if value is None or isinstance(value, InputTransform):
            if value is not None and input_shape is not None:
                value.check(input_shape)
            return value
        return cls.from_spec(value, input_shape)

    def check(self, input_shape):
        """ValueError unless this transform fits a model input of `input_shape` (C, H, W)."""
        C, H, W = input_shape
        ph, pw = self.padding
        if H - 2 * ph < 1 or W - 2 * pw < 1:
            raise ValueError(f"input_transform: padding {self.padding} leaves no image inside "
                             f"the input {H}x{W}")
        if self.mean is not None and len(self.mean) != C:
            raise ValueError(f"input_transform: {len(self.mean)} normalization means for "
                             f"{C} input channels")

    # -- applying it ---------------------------------------------------------------------------

    def raw_size(self, input_shape):
        """``(H - 2*ph, W - 2*pw)``: the size of the raw images for a model input (C, H, W)."""
        return input_shape[1] - 2 * self.padding[0], input_shape[2] - 2 * self.padding[1]

    def apply(self, x, dtype, pad=True):
        """``(pad(x) - mean) / std`` as a new C-contiguous array of `dtype`; `x` is
        ``(N, C, h, w)`` with pixels in [0, 1] (`pad` False: already at the model's size)."""
        ph, pw = self.padding if pad else (0, 0)
        n, c, h, w = x.shape
        out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dtype)
        out[:, :, ph:ph + h, pw:pw + w] = x
        if self.mean is not None:
            for k in range(c):
                out[:, k] -= out.dtype.type(self.mean[k])
                out[:, k] /= out.dtype.type(self.std[k])
        return out
