"""Dropout: counter-based masks (twin, statistics, threads, shards), layers, errors."""

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import _reference as ref
from fastcnn.nn.dropout import seed_dropout


def _x(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


CASES = [((5, 7, 9, 11), 0.3, 1, 0, 0), ((1, 3), 0.5, 2**64 - 1, 5, 7), ((4, 5000), 0.9, 7, 3, 0),
         ((3, 2, 1, 1), 0.1, 12345, 2**40, 2**63), ((2, 4, 3), 0.7, 0, 0, 0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,p,seed,step,offset", CASES, ids=[str(c[0]) for c in CASES])
def test_matches_twin_bitwise(shape, p, seed, step, offset, dtype):
    x = _x(shape, dtype)
    y, mask = F.dropout(x, p, True, seed, step, offset)
    y_ref, mask_ref = ref.dropout_ref(x, p, seed, step, offset)
    assert mask.dtype == np.uint8 and y.dtype == dtype
    assert np.array_equal(mask, mask_ref) and np.array_equal(y, y_ref)
    y2, mask2 = F.dropout2d(x, p, True, seed, step, offset)
    y2_ref, mask2_ref = ref.dropout2d_ref(x, p, seed, step, offset)
    assert mask2.shape == shape[:2]
    assert np.array_equal(mask2, mask2_ref) and np.array_equal(y2, y2_ref)
    g = _x(shape, dtype, seed=1)
    scale = dtype(1 / (1 - p))
    assert np.array_equal(F.dropout_backward(g, mask, p), g * (mask * scale).astype(dtype))
    m2 = mask2.reshape(mask2.shape + (1,) * (len(shape) - 2))
    assert np.array_equal(F.dropout2d_backward(g, mask2, p), g * (m2 * scale).astype(dtype))


def test_inverted_scaling_hand_computed():
    x = np.full((2, 8), 3.0)
    y, mask = F.dropout(x, 0.25, seed=4)
    np.testing.assert_array_equal(y, np.where(mask == 1, 4.0, 0.0))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_statistics(p):
    _, mask = F.dropout(np.ones((16, 40000), np.float32), p, seed=3, step=1)
    n = mask.size
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(mask.mean() - (1 - p)) < 5 * sd
    # Neighbouring elements and samples are uncorrelated.
    m = mask.astype(np.float64) - mask.mean()
    corr = (m[:, 1:] * m[:, :-1]).mean() / m.var()
    assert abs(corr) < 5 / np.sqrt(n)
    corr_rows = (m[1:] * m[:-1]).mean() / m.var()
    assert abs(corr_rows) < 5 / np.sqrt(n)
    _, cmask = F.dropout2d(np.ones((2000, 64, 1, 1), np.float32), p, seed=3)
    assert abs(cmask.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / cmask.size)


def test_masks_depend_on_every_counter():
    x = np.ones((4, 1000), np.float32)
    base = F.dropout(x, 0.5, seed=1, step=2, sample_offset=3)[1]
    for kw in (dict(seed=2, step=2, sample_offset=3), dict(seed=1, step=3, sample_offset=3),
               dict(seed=1, step=2, sample_offset=4)):
        other = F.dropout(x, 0.5, **kw)[1]
        assert 0.4 < (other != base).mean() < 0.6


def test_edge_probabilities():
    x = _x((3, 4, 5, 5))
    x[0, 0, 0, 0] = np.nan
    y, mask = F.dropout(x, 0.0, seed=9)
    assert np.all(mask == 1)
    np.testing.assert_array_equal(y, x)
    y, mask = F.dropout(x, 1.0, seed=9)
    assert np.all(mask == 0)
    assert np.all(y[~np.isnan(x)] == 0) and np.isnan(y[0, 0, 0, 0])  # x * 0, as PyTorch
    assert np.all(F.dropout_backward(x, mask, 1.0)[~np.isnan(x)] == 0)
    y, mask = F.dropout2d(x, 1.0)
    assert np.all(mask == 0)
    y, mask = F.dropout2d(x, 0.0)
    np.testing.assert_array_equal(y, x)


def test_eval_identity():
    x = _x((2, 3, 4, 4))
    for layer in (fastcnn.Dropout(0.4), fastcnn.Dropout2d(0.4)):
        layer.eval()
        assert layer.forward(x) is x
        assert layer.step == 0
        g = _x(x.shape, seed=2)
        np.testing.assert_array_equal(layer.backward(g), g)
    y, mask = F.dropout(x, 0.5, training=False)
    assert y is x and mask is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_bitwise(set_threads, dtype, monkeypatch):
    monkeypatch.setattr(fastcnn.functional.pooling, "_GRAIN", 1)  # every thread, small shapes
    x = _x((6, 3, 50, 51), dtype)  # several blocks per sample, ragged last block
    results = []
    for n in (1, 2, 3):
        set_threads(n)
        y, mask = F.dropout(x, 0.3, seed=5, step=8)
        y2, mask2 = F.dropout2d(x, 0.3, seed=5, step=8)
        results.append((y, mask, y2, mask2, F.dropout_backward(x, mask, 0.3),
                        F.dropout2d_backward(x, mask2, 0.3)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("cls", [fastcnn.Dropout, fastcnn.Dropout2d])
def test_shards_draw_the_whole_batch_mask(cls):
    x = _x((7, 4, 6, 5))
    whole = cls(0.5, seed=21)
    y = whole.forward(x)
    parts = []
    for lo, hi in ((0, 3), (3, 7)):
        shard = cls(0.5, seed=21)
        shard.sample_offset = lo
        parts.append(shard.forward(x[lo:hi]))
    assert np.array_equal(np.concatenate(parts), y)


def test_layer_step_advances_and_masks_change():
    layer = fastcnn.Dropout(0.5, seed=3)
    x = np.ones((4, 100), np.float32)
    first = layer.forward(x)
    assert layer.step == 1
    second = layer.forward(x)
    assert layer.step == 2
    assert not np.array_equal(first, second)
    assert np.array_equal(first, F.dropout(x, 0.5, seed=3, step=0)[0])
    g = _x(x.shape, seed=4)
    np.testing.assert_array_equal(layer.backward(g), F.dropout_backward(g, layer._cache[1], 0.5))


def test_seed_attribute_and_state_dict():
    a, b = fastcnn.Dropout(), fastcnn.Dropout()
    assert isinstance(a.seed, int) and a.seed != b.seed  # unseeded layers still differ
    assert fastcnn.Dropout(seed=5).seed == 5
    assert a.sample_offset == 0 and a.step == 0
    assert a.state_dict() == {} and a.params == {}


def test_seed_dropout_distinct_and_reproducible():
    def model():
        return fastcnn.Sequential(fastcnn.Conv2d(1, 2, 3, seed=0), fastcnn.Dropout2d(0.2),
                                  fastcnn.ReLU(), fastcnn.Dropout(0.5), fastcnn.Dropout(0.5))

    m1, m2 = model(), model()
    assert seed_dropout(m1, 42) == 3
    seed_dropout(m2, 42)
    seeds = [layer.seed for layer in m1 if isinstance(layer, (fastcnn.Dropout,
                                                              fastcnn.Dropout2d))]
    assert len(set(seeds)) == 3
    assert seeds == [layer.seed for layer in m2 if hasattr(layer, "seed")]
    seed_dropout(m2, 43)
    assert seeds[0] != m2[1].seed
    x = _x((2, 1, 6, 6))
    np.testing.assert_array_equal(m1.forward(x), model_forward_after_seed(model, 42, x))


def model_forward_after_seed(make, seed, x):
    m = make()
    seed_dropout(m, seed)
    return m.forward(x)


def test_inplace():
    x = _x((3, 10))
    expected = F.dropout(x, 0.5, seed=1)[0]
    layer = fastcnn.Dropout(0.5, inplace=True, seed=1)
    out = layer.forward(x)
    assert out is x
    np.testing.assert_array_equal(x, expected)
    read_only = _x((3, 10))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"inplace=True\) needs a writeable"):
        fastcnn.Dropout(0.5, inplace=True).forward(read_only)


def test_non_contiguous_and_read_only_input():
    x = _x((4, 6, 8), np.float64)[:, ::2, 1:]
    x.flags.writeable = False
    y, mask = F.dropout(x, 0.3, seed=2)
    y_ref, mask_ref = ref.dropout_ref(np.ascontiguousarray(x), 0.3, seed=2)
    assert np.array_equal(y, y_ref) and np.array_equal(mask, mask_ref)


def test_batch_zero():
    y, mask = F.dropout(np.zeros((0, 3), np.float32), 0.5)
    assert y.shape == (0, 3) and mask.shape == (0, 3)
    y, mask = F.dropout2d(np.zeros((0, 3, 2, 2), np.float32), 0.5)
    assert y.shape == (0, 3, 2, 2) and mask.shape == (0, 3)


def test_errors():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
            fastcnn.Dropout(bad)
        with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
            F.dropout(np.zeros((2, 2)), bad)
    with pytest.raises(TypeError, match="dropout probability must be a number"):
        fastcnn.Dropout2d("0.5")
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        F.dropout(np.zeros((2, 2)), 0.5, seed=-1)
    with pytest.raises(ValueError, match=r"step must be in \[0, 2\*\*64\)"):
        F.dropout(np.zeros((2, 2)), 0.5, step=2**64)
    with pytest.raises(ValueError, match="sample_offset \\+ N must be <= 2\\*\\*64"):
        F.dropout(np.zeros((2, 2)), 0.5, sample_offset=2**64 - 1)
    with pytest.raises(TypeError, match="seed must be an int"):
        fastcnn.Dropout(seed=1.5)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        F.dropout2d(np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fastcnn.Dropout2d().forward(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="mask has shape"):
        F.dropout_backward(np.zeros((2, 3)), np.zeros((2, 2), np.uint8), 0.5)
    with pytest.raises(TypeError, match="mask must be uint8 or bool"):
        F.dropout2d_backward(np.zeros((2, 3, 1)), np.zeros((2, 3)), 0.5)
    with pytest.raises(RuntimeError, match="before forward"):
        fastcnn.Dropout().backward(np.zeros((2, 2), np.float32))
    layer = fastcnn.Dropout()
    layer.step = -1
    with pytest.raises(ValueError, match="step must be in"):
        layer.forward(np.zeros((2, 2), np.float32))
