"""Tests for fastcnn.transforms: random shift, crop and flip against plain NumPy references for
any channel count, reproducibility and resumability of the draws, no allocation per batch,
per-channel normalisation, and the errors."""

import tracemalloc

import numpy as np
import pytest

from fastcnn.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomShift,
    augment_array,
    channel_stats,
    get_transform,
)


def images(n=11, c=3, h=7, w=9, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(dtype)


def draws(seed, epoch, slot=1):
    return np.random.default_rng([seed, epoch, slot])


# --- RandomShift ------------------------------------------------------------------------------


@pytest.mark.parametrize("c, dtype", [(1, np.float32), (3, np.float64), (4, np.float32)])
def test_random_shift_is_one_roll_per_image(c, dtype):
    x = images(23, c, 7, 9, dtype)
    got = augment_array([RandomShift(3)], x, seed=4, epoch=2, batch_size=10)
    shifts = draws(4, 2).integers(-3, 4, size=(23, 2))
    assert np.abs(shifts).max() == 3 and len({tuple(s) for s in shifts}) > 5
    for n in range(23):  # the same (dy, dx) for every channel of an image
        np.testing.assert_array_equal(got[n], np.roll(x[n], shifts[n], axis=(1, 2)))


def test_random_shift_matches_the_previous_single_channel_draws():
    """The shifts of the embedded-digit default run (what `fastcnn train` does) are those the
    trainer always drew: default_rng([seed, epoch, 1]).integers(-s, s + 1, (N, 2))."""
    x = images(64, 1, 32, 32)
    got = augment_array([RandomShift(2)], x, seed=0, epoch=0)
    shifts = np.random.default_rng([0, 0, 1]).integers(-2, 3, size=(64, 2))
    for n in range(64):
        np.testing.assert_array_equal(got[n, 0], np.roll(x[n, 0], shifts[n], axis=(0, 1)))


def test_shift_draws_change_with_epoch_and_seed_only():
    x = images(32, 2, 8, 8)
    first = augment_array([RandomShift(2)], x, seed=0, epoch=0)
    np.testing.assert_array_equal(first, augment_array([RandomShift(2)], x, seed=0, epoch=0,
                                                       batch_size=5))
    assert not np.array_equal(first, augment_array([RandomShift(2)], x, seed=0, epoch=1))
    assert not np.array_equal(first, augment_array([RandomShift(2)], x, seed=1, epoch=0))


# --- RandomCrop -------------------------------------------------------------------------------


def crop_reference(x, size, padding, rng):
    n, _, h, w = x.shape
    (sh, sw), (ph, pw) = size, padding
    tops = rng.integers(0, h + 2 * ph - sh + 1, size=n)
    lefts = rng.integers(0, w + 2 * pw - sw + 1, size=n)
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return np.stack([padded[k, :, tops[k]:tops[k] + sh, lefts[k]:lefts[k] + sw]
                     for k in range(n)])


@pytest.mark.parametrize("size, padding, shape", [
    (8, 4, (3, 8, 8)),
    ((5, 7), (1, 2), (2, 7, 9)),
    ((3, 3), 0, (1, 7, 9)),
    ((11, 5), (2, 0), (3, 7, 9)),
], ids=["cifar-style", "rect", "no-padding", "taller-than-image"])
def test_random_crop_pads_and_crops(size, padding, shape):
    x = images(13, *shape)
    crop = RandomCrop(size, padding)
    got = augment_array([crop], x, seed=3, epoch=1, batch_size=4)
    expected = crop_reference(x, crop.size, crop.padding, draws(3, 1))
    np.testing.assert_array_equal(got, expected)


# --- RandomHorizontalFlip ---------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_random_horizontal_flip(p):
    x = images(20, 3, 5, 6)
    got = augment_array([RandomHorizontalFlip(p)], x, seed=2, epoch=0, batch_size=7)
    flips = draws(2, 0).random(20) < p
    expected = np.where(flips[:, None, None, None], x[..., ::-1], x)
    np.testing.assert_array_equal(got, expected)
    if p == 0.3:
        assert 0 < flips.sum() < 20


def test_compose_uses_one_slot_per_transform():
    x = images(15, 3, 8, 8)
    got = augment_array([RandomCrop(8, 2), RandomHorizontalFlip()], x, seed=6, epoch=3)
    cropped = crop_reference(x, (8, 8), (2, 2), draws(6, 3, 1))
    flips = draws(6, 3, 2).random(15) < 0.5
    np.testing.assert_array_equal(got, np.where(flips[:, None, None, None],
                                                cropped[..., ::-1], cropped))


def test_apply_resumes_mid_epoch():
    """Batch k of an epoch is the same whether the epoch ran from its start or not."""
    x = images(30, 3, 8, 8)
    whole = augment_array([RandomShift(2), RandomHorizontalFlip()], x, seed=1, epoch=4,
                          batch_size=8)
    pipeline = Compose([RandomShift(2), RandomHorizontalFlip()]).bind(30, 8, (3, 8, 8),
                                                                     np.float32, 1)
    pipeline.start_epoch(4)
    np.testing.assert_array_equal(pipeline.apply(x[16:24], 16), whole[16:24])


def test_non_contiguous_and_read_only_input():
    x = images(10, 3, 8, 8)
    view = np.asfortranarray(x)
    view.flags.writeable = False
    np.testing.assert_array_equal(augment_array([RandomShift(1)], view, seed=0),
                                  augment_array([RandomShift(1)], x, seed=0))


@pytest.mark.parametrize("transform", [RandomShift(2), RandomHorizontalFlip(),
                                       RandomCrop(16, 2)],
                         ids=["shift", "flip", "crop"])
def test_apply_allocates_nothing_sized_by_the_batch(transform):
    x = images(64, 3, 16, 16)
    pipeline = Compose([transform]).bind(64, 64, (3, 16, 16), np.float32, 0)
    pipeline.start_epoch(0)
    pipeline.apply(x, 0)
    tracemalloc.start()
    try:
        pipeline.apply(x, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes / 20, peak


def test_config_round_trip():
    for t in (RandomShift(3), RandomCrop((5, 6), (1, 0)), RandomHorizontalFlip(0.25)):
        again = get_transform(t.config())
        assert type(again) is type(t) and again.config() == t.config()
    assert repr(RandomCrop(4, 1)) == "RandomCrop(size=[4, 4], padding=[1, 1])"


@pytest.mark.parametrize("make, exc, match", [
    (lambda: RandomShift(0), ValueError, "max_shift must be an integer >= 1, got 0"),
    (lambda: RandomShift(1.5), ValueError, "max_shift must be an integer"),
    (lambda: RandomCrop(0), ValueError, "size must be an integer >= 1"),
    (lambda: RandomCrop(4, -1), ValueError, "padding must be an integer >= 0"),
    (lambda: RandomCrop((1, 2, 3)), ValueError, "size must be an integer or a pair"),
    (lambda: RandomHorizontalFlip(1.5), ValueError, r"p must be a probability in \[0, 1\]"),
    (lambda: RandomShift(4).bind(8, 4, (1, 4, 6), np.float32, 0, 1), ValueError,
     r"shift must be smaller than the images \(4x6\), got 4"),
    (lambda: RandomCrop(9, 0).bind(8, 4, (1, 8, 8), np.float32, 0, 1), ValueError,
     r"crop size \(9, 9\) is larger than the padded images \(8x8\)"),
    (lambda: RandomShift(1).bind(8, 4, (8, 8), np.float32, 0, 1), ValueError,
     r"expects images \(C, H, W\)"),
    (lambda: RandomShift(1).start_epoch(0), RuntimeError, "not bound to data"),
    (lambda: RandomShift(1).bind(8, 4, (1, 8, 8), np.float32, 0, 1).apply(
        np.zeros((4, 1, 8, 8), np.float32), 0), RuntimeError, "before start_epoch"),
    (lambda: get_transform({"name": "ColorJitter"}), ValueError, "unknown transform"),
    (lambda: augment_array([RandomShift(1)], np.zeros((0, 1, 4, 4)), seed=0), ValueError,
     "non-empty"),
], ids=["shift-0", "shift-float", "crop-0", "crop-padding", "crop-triple", "flip-p",
        "shift-too-big", "crop-too-big", "bind-3d", "unbound", "no-epoch", "unknown", "empty"])
def test_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_apply_checks_the_batch():
    pipeline = Compose([RandomShift(1)]).bind(8, 4, (1, 8, 8), np.float32, 0)
    pipeline.start_epoch(0)
    with pytest.raises(ValueError, match=r"bound to images \(1, 8, 8\) and 8 samples"):
        pipeline.apply(np.zeros((4, 2, 8, 8), np.float32), 0)
    with pytest.raises(ValueError, match="bound to images"):
        pipeline.apply(np.zeros((4, 1, 8, 8), np.float32), 6)


# --- Normalize --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_per_channel(dtype):
    x = images(9, 3, 4, 5, dtype)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    got = Normalize(mean, std)(x)
    assert got.dtype == dtype
    for c in range(3):
        expected = (x[:, c] - dtype(mean[c])) / dtype(std[c])
        np.testing.assert_array_equal(got[:, c], expected)
    np.testing.assert_array_equal(Normalize(0.5, 0.25)(x[0]), (x[0] - dtype(0.5)) / dtype(0.25))
    assert Normalize(mean, std).config() == {"mean": mean, "std": std}


def test_channel_stats_then_normalize_standardises():
    x = images(20, 3, 6, 6, np.float64) * [[[2.0]], [[0.5]], [[1.0]]]
    mean, std = channel_stats(x)
    y = Normalize(mean, std)(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 1, rtol=1e-12)


@pytest.mark.parametrize("mean, std, match", [
    ([0.1, 0.2], [0.3], "equal-length"),
    ([0.1], [0.0], "std > 0"),
    ([float("nan")], [1.0], "finite means"),
    ([0.1], [float("inf")], "finite means"),
], ids=["lengths", "zero-std", "nan-mean", "inf-std"])
def test_normalize_errors(mean, std, match):
    with pytest.raises(ValueError, match=match):
        Normalize(mean, std)


def test_normalize_checks_images():
    with pytest.raises(ValueError, match="2 normalisation values for 3 channels"):
        Normalize([0, 0], [1, 1])(images(2, 3))
    with pytest.raises(TypeError, match="floating images"):
        Normalize(0, 1)(np.zeros((1, 1, 2, 2), np.uint8))
