"""Data transforms: random augmentation of training batches and per-channel normalisation.

Augmentation transforms (:class:`RandomShift`, :class:`RandomCrop`, :class:`RandomHorizontalFlip`)
work on batches ``(B, C, H, W)`` of any channel count; each image gets one random draw, shared by
all its channels. They are reproducible and resumable: the parameters of the sample at position
``k`` of epoch ``e``'s batch order (a shuffled order, see :class:`fastcnn.datasets.BatchIterator`)
are row ``k`` of an array drawn by ``numpy.random.default_rng([seed, e, slot])`` (``slot`` is
1 + the transform's position in the pipeline). They are therefore a pure function of
``(seed, epoch, position)``, independent of the batch size seen so far, of threads and of
interruptions: a run resumed mid-epoch draws exactly what an uninterrupted one would.

Each transform is constructed with its hyper-parameters only (``RandomShift(2)``);
:class:`Compose` binds it to the data (sample count, batch size, image shape, dtype, seed), which
allocates its output buffer once: applying a transform to a batch then allocates nothing
(RandomShift, RandomHorizontalFlip) or only small per-image views (RandomCrop).

:class:`Normalize` is deterministic: ``(x - mean[c]) / std[c]`` per channel; its
``config()`` (``{"mean": [...], "std": [...]}``) is what model files record as
``normalization``.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip", "RandomShift",
           "Transform", "augment_array", "channel_stats", "get_transform"]


def _int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _pair(value, name, low):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an integer or a pair, got {value!r}")
        return (_int(value[0], name, low), _int(value[1], name, low))
    value = _int(value, name, low)
    return (value, value)


class Transform:
    """Base class of the random batch transforms.

    Subclasses implement ``output_shape``, ``_allocate``, ``_draw(rng, n)`` (the per-sample
    parameters of one epoch, an array of ``n`` rows), ``_apply(x, params, out)`` and ``config``.
    """

    def __init__(self):
        self._bound = None

    def output_shape(self, shape):
        """The ``(C, H, W)`` of an output image for an input image of ``shape``."""
        return tuple(shape)

    def bind(self, n_samples, batch_size, shape, dtype, seed, slot):
        """Allocate the output buffer for batches of up to `batch_size` images of `shape`."""
        n_samples = _int(n_samples, "n_samples", 1)
        batch_size = _int(batch_size, "batch_size", 1)
        shape = tuple(shape)
        if len(shape) != 3:
            raise ValueError(f"{type(self).__name__} expects images (C, H, W), got {shape}")
        self._check_shape(shape)
        rows = min(batch_size, n_samples)
        self._bound = (n_samples, shape, np.dtype(dtype), int(seed), int(slot))
        self._out = np.empty((rows,) + self.output_shape(shape), dtype=dtype)
        self._allocate(rows, shape)
        self._params = None
        return self

    def _check_shape(self, shape):
        pass

    def _allocate(self, rows, shape):
        pass

    def start_epoch(self, epoch):
        """Draw the per-sample parameters of `epoch`."""
        if self._bound is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to data (see Compose)")
        n, _, _, seed, slot = self._bound
        self._params = self._draw(np.random.default_rng([seed, epoch, slot]), n)

    def apply(self, x, start):
        """Transform the batch `x` holding the samples at positions ``start, start + 1, ...`` of
        the epoch's order. Returns a view of a reused buffer, overwritten by the next call."""
        if self._params is None:
            raise RuntimeError(f"{type(self).__name__}.apply called before start_epoch")
        b = x.shape[0]
        if x.shape[1:] != self._bound[1] or start + b > self._bound[0] or \
                b > self._out.shape[0]:
            raise ValueError(f"{type(self).__name__} is bound to images {self._bound[1]} and "
                             f"{self._bound[0]} samples, got a batch {x.shape} at {start}")
        out = self._out[:b]
        self._apply(np.ascontiguousarray(x), self._params[start:start + b], out)
        return out

    def config(self):
        """JSON-able description (``{"name": class name, <argument>: value, ...}``)."""
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class RandomShift(Transform):
    """Random circular translations: image ``n`` is rolled by ``(dy, dx)``, both uniform in
    ``[-max_shift, max_shift]``, the same for all its channels (``np.roll(x[n], (dy, dx),
    axis=(1, 2))``).

    On 28x28 digits padded to 32x32, shifts of up to 2 pixels wrap only background around the
    edges. Four block copies per image: no allocation per batch.

    Parameters
    ----------
    max_shift : int >= 1

    Shape
    -----
    ``(B, C, H, W) -> (B, C, H, W)``; ``max_shift < min(H, W)``.
    """

    def __init__(self, max_shift):
        super().__init__()
        self.max_shift = _int(max_shift, "max_shift", 1)

    def _check_shape(self, shape):
        _, h, w = shape
        if self.max_shift >= min(h, w):
            raise ValueError(f"shift must be smaller than the images ({h}x{w}), got "
                             f"{self.max_shift}")

    def _draw(self, rng, n):
        return rng.integers(-self.max_shift, self.max_shift + 1, size=(n, 2)).astype(np.intp)

    def _apply(self, x, shifts, out):
        _, _, h, w = x.shape
        # out[n, :, i, j] = x[n, :, (i - dy) % H, (j - dx) % W]: four block copies per image
        # (no index array, no temporary; ufunc broadcasting would allocate buffers)
        for n in range(x.shape[0]):
            dy, dx = int(shifts[n, 0]) % h, int(shifts[n, 1]) % w
            src, dst = x[n], out[n]
            dst[:, dy:, dx:] = src[:, :h - dy, :w - dx]
            dst[:, dy:, :dx] = src[:, :h - dy, w - dx:]
            dst[:, :dy, dx:] = src[:, h - dy:, :w - dx]
            dst[:, :dy, :dx] = src[:, h - dy:, w - dx:]

    def config(self):
        return {"name": "RandomShift", "max_shift": self.max_shift}


class RandomCrop(Transform):
    """Pad with zeros, then crop a random window, as ``torchvision.transforms.RandomCrop(size,
    padding)`` (``fill=0``, ``padding_mode="constant"``): the window's top-left corner is uniform
    over ``[0, H + 2*pad_h - size_h] x [0, W + 2*pad_w - size_w]`` of the padded image.

    Parameters
    ----------
    size : int or (int, int)
        Output ``(height, width)``.
    padding : int or (int, int), default 0
        Zero rows (top and bottom) and columns (left and right) added before cropping.

    Shape
    -----
    ``(B, C, H, W) -> (B, C, size_h, size_w)``
    """

    def __init__(self, size, padding=0):
        super().__init__()
        self.size = _pair(size, "size", 1)
        self.padding = _pair(padding, "padding", 0)

    def output_shape(self, shape):
        return (shape[0],) + self.size

    def _check_shape(self, shape):
        _, h, w = shape
        ph, pw = self.padding
        if self.size[0] > h + 2 * ph or self.size[1] > w + 2 * pw:
            raise ValueError(f"crop size {self.size} is larger than the padded images "
                             f"({h + 2 * ph}x{w + 2 * pw})")

    def _draw(self, rng, n):
        _, h, w = self._bound[1]
        ph, pw = self.padding
        out = np.empty((n, 2), dtype=np.intp)
        out[:, 0] = rng.integers(0, h + 2 * ph - self.size[0] + 1, size=n)
        out[:, 1] = rng.integers(0, w + 2 * pw - self.size[1] + 1, size=n)
        return out

    def _apply(self, x, corners, out):
        _, _, h, w = x.shape
        sh, sw = self.size
        ph, pw = self.padding
        for n in range(x.shape[0]):
            top, left = corners[n, 0] - ph, corners[n, 1] - pw  # in unpadded coordinates
            y0, y1 = max(top, 0), min(top + sh, h)
            x0, x1 = max(left, 0), min(left + sw, w)
            if y0 != top or x0 != left or y1 != top + sh or x1 != left + sw:
                out[n].fill(0)
            if y1 > y0 and x1 > x0:
                out[n, :, y0 - top:y1 - top, x0 - left:x1 - left] = x[n, :, y0:y1, x0:x1]

    def config(self):
        return {"name": "RandomCrop", "size": list(self.size), "padding": list(self.padding)}


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability `p`, as
    ``torchvision.transforms.RandomHorizontalFlip`` (for data where a mirrored image is still of
    its class: photos, clothes; not digits).

    Parameters
    ----------
    p : float in [0, 1], default 0.5

    Shape
    -----
    ``(B, C, H, W) -> (B, C, H, W)``
    """

    def __init__(self, p=0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def _draw(self, rng, n):
        return rng.random(n) < self.p

    def _apply(self, x, flips, out):
        np.copyto(out, x)
        for n in np.flatnonzero(flips):
            out[n] = x[n, :, :, ::-1]

    def config(self):
        return {"name": "RandomHorizontalFlip", "p": self.p}


_TRANSFORMS = {cls.__name__: cls for cls in (RandomShift, RandomCrop, RandomHorizontalFlip)}


def get_transform(config):
    """A transform from its ``config()`` dict (or the transform itself)."""
    if isinstance(config, Transform):
        return config
    if not isinstance(config, dict) or config.get("name") not in _TRANSFORMS:
        raise ValueError(f"unknown transform {config!r}; known: {sorted(_TRANSFORMS)}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    return _TRANSFORMS[config["name"]](**kwargs)


class Compose:
    """A pipeline of random transforms applied in order to training batches.

    Parameters
    ----------
    transforms : sequence of Transform (or their ``config()`` dicts)
    """

    def __init__(self, transforms=()):
        if isinstance(transforms, (Transform, dict)):
            transforms = [transforms]
        self.transforms = [get_transform(t) for t in transforms]

    def __len__(self):
        return len(self.transforms)

    def output_shape(self, shape):
        for t in self.transforms:
            shape = t.output_shape(shape)
        return tuple(shape)

    def bind(self, n_samples, batch_size, shape, dtype, seed):
        """Bind every transform to the data (see :meth:`Transform.bind`); returns self."""
        for slot, t in enumerate(self.transforms, start=1):
            t.bind(n_samples, batch_size, shape, dtype, seed, slot)
            shape = t.output_shape(shape)
        return self

    def start_epoch(self, epoch):
        for t in self.transforms:
            t.start_epoch(epoch)

    def apply(self, x, start):
        for t in self.transforms:
            x = t.apply(x, start)
        return x

    def config(self):
        return [t.config() for t in self.transforms]

    def __repr__(self):
        return f"Compose({self.transforms!r})"


def augment_array(transforms, images, *, seed, epoch=0, batch_size=256):
    """Apply random `transforms` to a whole array as epoch `epoch` would (sample ``k`` at
    position ``k``): a fresh array. For inspection and tests.

    Shape
    -----
    ``(N, C, H, W) -> (N,) + output_shape``
    """
    images = np.ascontiguousarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) array, got {images.shape}")
    pipeline = Compose(transforms).bind(images.shape[0], batch_size, images.shape[1:],
                                        images.dtype, seed)
    pipeline.start_epoch(epoch)
    out = np.empty((images.shape[0],) + pipeline.output_shape(images.shape[1:]),
                   dtype=images.dtype)
    for start in range(0, images.shape[0], batch_size):
        out[start:start + batch_size] = pipeline.apply(images[start:start + batch_size], start)
    return out


def channel_stats(images):
    """Per-channel mean and standard deviation of ``(N, C, H, W)`` images, in float64, as two
    lists (the population standard deviation, as torchvision users compute it)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) array, got {images.shape}")
    mean = [float(images[:, c].mean(dtype=np.float64)) for c in range(images.shape[1])]
    std = [float(images[:, c].std(dtype=np.float64)) for c in range(images.shape[1])]
    return mean, std


class Normalize:
    """``(x - mean[c]) / std[c]`` for every channel ``c``, as
    ``torchvision.transforms.Normalize``.

    Parameters
    ----------
    mean, std : float or sequence of float
        One value for all channels or one per channel; std > 0, both finite.

    Shape
    -----
    ``(N, C, H, W) -> (N, C, H, W)`` (or ``(C, H, W)``)
    """

    def __init__(self, mean, std):
        mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if mean.ndim != 1 or std.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be numbers or equal-length lists, got "
                             f"{mean.tolist()} and {std.tolist()}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError(f"normalisation needs finite means and std > 0, got mean "
                             f"{mean.tolist()}, std {std.tolist()}")
        self.mean, self.std = mean, std

    def __call__(self, images, out=None):
        """Normalised images (a new array of the same float dtype, or into `out`)."""
        images = np.asarray(images)
        if images.dtype.kind != "f":
            raise TypeError(f"Normalize expects floating images, got {images.dtype}")
        if images.ndim not in (3, 4):
            raise ValueError(f"Normalize expects (N, C, H, W) or (C, H, W), got {images.shape}")
        c = images.shape[-3]
        if self.mean.shape[0] not in (1, c):
            raise ValueError(f"{self.mean.shape[0]} normalisation values for {c} channels")
        shape = (-1, 1, 1)
        mean = self.mean.astype(images.dtype).reshape(shape)
        std = self.std.astype(images.dtype).reshape(shape)
        out = np.subtract(images, mean, out=out)
        out /= std
        return out

    def config(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"
