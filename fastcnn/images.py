"""Reading images as people make them, prepared the way the training data was.

Two preparations, recorded in a model file's input transform (``"preprocess"``):

``"digits"`` (MNIST-style data: light strokes centred on a dark background)
    The steps that made MNIST (LeCun et al.): grey levels; the background's polarity detected
    from the image border (dark-on-light drawings are inverted); contrast stretched so that the
    background is 0 and the ink 1 (low-contrast photos, faint pencil); cropped to the ink's
    bounding box; scaled, keeping the aspect ratio, so that the longer side is 20/28 of the
    frame; placed in the frame with its centre of mass at the centre. A digit drawn small in a
    corner of a large white canvas ends up where the training digits are.

``"resize"`` (any other data: Fashion-MNIST, photos)
    Channel conversion (grey <-> RGB, transparency composited on the background) and resizing to
    the model's input size, nothing else.

Each step of ``"digits"`` can be turned off (``invert``, ``stretch``, ``crop``, ``center``).
Pillow is needed to read files (``pip install "fastcnn[image]"``); the preparation itself works
on arrays.
"""

import numpy as np

__all__ = ["PREPROCESS", "prepare_digit", "read_image", "looks_like_digits"]

PREPROCESS = ("digits", "resize")

# MNIST's digits fit a 20x20 box inside the 28x28 frame.
_DIGIT_BOX = 20 / 28


def _require_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install 'fastcnn[image]'") from None
    return Image


def _open(path, channels):
    """The file as a float32 (H, W, channels) array in [0, 1]; transparency over white."""
    Image = _require_pillow()
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba)
            img = img.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not an image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot read the image ({exc})") from None
    a = np.asarray(img, dtype=np.float32) / np.float32(255)
    return a.reshape(a.shape[0], a.shape[1], channels)


def _resize(plane, height, width):
    """Resize a float (H, W) plane with Pillow's antialiasing filter (box-averaging when
    shrinking, so thin strokes are not lost)."""
    Image = _require_pillow()
    if plane.shape == (height, width):
        return plane.astype(np.float32, copy=True)
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    shrinking = height < plane.shape[0] or width < plane.shape[1]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(img.resize((width, height), resample), dtype=np.float32)


def _shift(plane, dy, dx):
    """Shift a plane by whole pixels, filling with 0."""
    out = np.zeros_like(plane)
    H, W = plane.shape
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[yd, xd] = plane[ys, xs]
    return out


def prepare_digit(gray, size=(28, 28), *, invert="auto", stretch=True, crop=True, center=True):
    """MNIST-style preparation of one grey image (see the module docstring).

    Parameters
    ----------
    gray : ndarray (H, W), values in [0, 1]
    size : (int, int)
        The frame, e.g. (28, 28).
    invert : "auto", True or False
        "auto" inverts when the border (the background) is lighter than mid-grey.
    stretch, crop, center : bool
        Contrast stretch; crop to the ink and scale into the 20/28 box; centre of mass to the
        middle.

    Returns
    -------
    ndarray (size[0], size[1]), float32 in [0, 1], light ink on a dark background.
    """
    x = np.asarray(gray, dtype=np.float32)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"prepare_digit expects a non-empty 2-D grey image, got shape {x.shape}")
    if invert not in ("auto", True, False):
        raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    background = float(np.median(border))
    if invert is True or (invert == "auto" and background > 0.5):
        x = 1 - x
        background = 1 - background
    if stretch:
        ink = float(np.percentile(x, 99.5))
        if ink - background > 1e-3:
            x = np.clip((x - background) / (ink - background), 0, 1)
            # Paper texture and JPEG noise stay below a fifth of the stroke's contrast.
            x = np.where(x < 0.2, 0, (x - 0.2) / 0.8).astype(np.float32)
    H, W = size
    if crop:
        rows = np.flatnonzero(x.max(axis=1) > 0)
        cols = np.flatnonzero(x.max(axis=0) > 0)
        if rows.size:
            x = x[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            scale = _DIGIT_BOX * min(H, W) / max(x.shape)
            h = max(1, min(H, round(x.shape[0] * scale)))
            w = max(1, min(W, round(x.shape[1] * scale)))
            small = np.clip(_resize(x, h, w), 0, 1)
            x = np.zeros((H, W), dtype=np.float32)
            top, left = (H - h) // 2, (W - w) // 2
            x[top:top + h, left:left + w] = small
    if x.shape != (H, W):
        x = np.clip(_resize(x, H, W), 0, 1)
    if center and x.sum() > 0:
        ys, xs = np.indices(x.shape)
        total = x.sum()
        dy = int(round((H - 1) / 2 - (ys * x).sum() / total))
        dx = int(round((W - 1) / 2 - (xs * x).sum() / total))
        x = _shift(x, dy, dx)
    return x.astype(np.float32, copy=False)


def read_image(path, channels=1, size=(28, 28), preprocess="resize", **digit_options):
    """Read an image file as a float32 ``(channels, H, W)`` array in [0, 1] (needs Pillow).

    Parameters
    ----------
    path : str or os.PathLike
    channels : 1 or 3
        Colour is converted to grey for 1 channel, grey is repeated for 3.
    size : (int, int)
        ``(H, W)`` of the result.
    preprocess : "digits" or "resize"
        See the module docstring. "digits" needs ``channels == 1``.
    **digit_options
        ``invert``, ``stretch``, ``crop``, ``center`` of :func:`prepare_digit`.

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read as an image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
    H, W = size
    if preprocess == "digits":
        if channels != 1:
            raise ValueError("the 'digits' preparation is for 1-channel models")
        return prepare_digit(_open(path, 1)[:, :, 0], (H, W), **digit_options)[None]
    a = _open(path, channels)
    return np.stack([np.clip(_resize(a[:, :, c], H, W), 0, 1) for c in range(channels)])


def looks_like_digits(images, box=20, share=0.9):
    """True when a training set looks MNIST-style: light ink on a dark background, each image's
    ink inside a ``box`` x ``box`` square (the 20x20 box of MNIST's 28x28 frame) for at least
    ``share`` of the images. Fashion-MNIST's items fill the frame and fail the test.

    ``images``: (N, 1, H, W) or (N, H, W), values in [0, 1].
    """
    x = np.asarray(images)
    if x.ndim == 4:
        if x.shape[1] != 1:
            return False
        x = x[:, 0]
    if x.ndim != 3 or x.shape[0] == 0:
        return False
    sample = x[:: max(1, x.shape[0] // 500)]
    ink = sample > 0.1
    border = np.concatenate([sample[:, 0], sample[:, -1], sample[:, :, 0], sample[:, :, -1]], 1)
    if float(np.mean(border)) > 0.1:
        return False
    rows, cols = ink.any(axis=2), ink.any(axis=1)

    def extent(mask):
        first = np.argmax(mask, axis=1)
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        return np.where(mask.any(axis=1), last - first + 1, 0)

    fits = (extent(rows) <= box) & (extent(cols) <= box)
    return float(np.mean(fits)) >= share
