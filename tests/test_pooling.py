"""Tests of the pooling family: max (dilation, ceil mode), average and adaptive average pooling,
functional and layers.

Every kernel is checked against its loop twin in ``fastcnn._reference.pooling`` and against
PyTorch (when installed) on random shapes drawn with fixed seeds (odd sizes, batch 0 and 1,
stride != kernel, padding, dilation, ceil mode, count_include_pad=False, divisor_override,
non-square kernels, adaptive sizes that do not divide the input), against float64 central
differences, for 1/2/3-thread bitwise equality, any input layout, and every ValueError.
The older max-pool tests stay in test_functional.py / test_layers.py / test_validation.py.
"""

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d, ReLU, Sequential
from fastcnn import _reference as ref

F32, F64 = np.float32, np.float64
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]


# --- random cases ------------------------------------------------------------------------------


def _windows_hit_input(size, out, k, s, p, d):
    for i in range(out):
        taps = [i * s - p + t * d for t in range(k)]
        if not any(0 <= u < size for u in taps):
            return False
    return True


def _max_cases(n, seed):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        N = int(rng.choice([0, 1, 2, 3]))
        C = int(rng.integers(1, 4))
        H, W = (int(v) for v in rng.integers(1, 13, 2))
        k = tuple(int(v) for v in rng.integers(1, 5, 2))
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
        d = tuple(int(v) for v in rng.choice([1, 1, 2, 3], 2))
        ceil = bool(rng.integers(0, 2))
        out = [ref.pool_output_size_ref(sz, k[a], s[a], p[a], d[a], ceil)
               for a, sz in enumerate((H, W))]
        if min(out) < 1 or not all(_windows_hit_input(sz, out[a], k[a], s[a], p[a], d[a])
                                   for a, sz in enumerate((H, W))):
            continue
        cases.append(pytest.param(((N, C, H, W), k, s, p, d, ceil),
                                  id=f"N{N}C{C}-{H}x{W}-k{k}-s{s}-p{p}-d{d}-ceil{int(ceil)}"))
    return cases


def _avg_cases(n, seed):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        N = int(rng.choice([0, 1, 2, 3]))
        C = int(rng.integers(1, 4))
        H, W = (int(v) for v in rng.integers(1, 13, 2))
        k = tuple(int(v) for v in rng.integers(1, 5, 2))
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
        ceil = bool(rng.integers(0, 2))
        cip = bool(rng.integers(0, 2))
        div = None if rng.random() < 0.7 else int(rng.integers(1, 10))
        out = [ref.pool_output_size_ref(sz, k[a], s[a], p[a], 1, ceil)
               for a, sz in enumerate((H, W))]
        if min(out) < 1:
            continue
        cases.append(pytest.param(((N, C, H, W), k, s, p, ceil, cip, div),
                                  id=f"N{N}C{C}-{H}x{W}-k{k}-s{s}-p{p}-ceil{int(ceil)}"
                                     f"-cip{int(cip)}-div{div}"))
    return cases


def _adaptive_cases(n, seed):
    rng = np.random.default_rng(seed)
    cases = [pytest.param(((2, 3, 7, 5), 1), id="global-7x5"),
             pytest.param(((1, 2, 6, 9), (None, 4)), id="None-keeps-height"),
             pytest.param(((2, 1, 3, 2), (5, 7)), id="output-larger-than-input"),
             pytest.param(((0, 2, 6, 6), (4, 3)), id="N0")]
    while len(cases) < n:
        N = int(rng.choice([1, 2, 3]))
        C = int(rng.integers(1, 4))
        H, W = (int(v) for v in rng.integers(1, 14, 2))
        out = (int(rng.integers(1, H + 3)), int(rng.integers(1, W + 3)))
        cases.append(pytest.param(((N, C, H, W), out), id=f"N{N}C{C}-{H}x{W}-to-{out}"))
    return cases


MAX_CASES = _max_cases(24, 1)
AVG_CASES = _avg_cases(24, 2)
ADAPTIVE_CASES = _adaptive_cases(14, 3)


def _distinct(shape, dtype, seed):
    """A shuffled arange, scaled: no ties, so every argmax is unambiguous."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.25 - 3.0).astype(dtype)


def _bound_avg(g_or_x, fn):
    """The operation on absolute values, in float64: the scale of each output's rounding."""
    return fn(np.abs(g_or_x).astype(F64))


# --- against the loop twins --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_CASES)
def test_max_pool2d_matches_loop_twin(case, dtype):
    shape, k, s, p, d, ceil = case
    x = np.random.default_rng(4).integers(-3, 3, shape).astype(dtype)  # many ties
    y, argmax = F.max_pool2d(x, k, s, p, d, ceil)
    ref_y, ref_argmax = ref.max_pool2d_loops(x, k, s, p, d, ceil)
    assert y.dtype == dtype and argmax.dtype == np.int64
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(argmax, ref_argmax)
    g = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(F.max_pool2d_backward(g, argmax, shape[2:]),
                               ref.max_pool2d_backward_ref(g.astype(F64), argmax, shape[2:]),
                               rtol=1e-6 if dtype == F32 else 1e-14, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_pool2d_matches_loop_twin(case, dtype, assert_close):
    shape, k, s, p, ceil, cip, div = case
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(dtype)
    y = F.avg_pool2d(x, k, s, p, ceil, cip, div)
    assert y.dtype == dtype
    def twin(a):
        return (ref.avg_pool2d_loops(a, k, s, p, ceil, cip, div))
    assert_close(y, twin(x.astype(F64)), _bound_avg(x, twin))
    g = rng.standard_normal(y.shape).astype(dtype)
    def back(a):
        return (ref.avg_pool2d_backward_loops(a, shape[2:], k, s, p, ceil, cip, div))
    dx = F.avg_pool2d_backward(g, shape[2:], k, s, p, ceil, cip, div)
    assert dx.dtype == dtype and dx.shape == shape
    assert_close(dx, back(g.astype(F64)), _bound_avg(g, back))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ADAPTIVE_CASES)
def test_adaptive_avg_pool2d_matches_loop_twin(case, dtype, assert_close):
    shape, out = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    y = F.adaptive_avg_pool2d(x, out)
    def twin(a):
        return (ref.adaptive_avg_pool2d_loops(a, out))
    assert_close(y, twin(x.astype(F64)), _bound_avg(x, twin))
    g = rng.standard_normal(y.shape).astype(dtype)
    def back(a):
        return (ref.adaptive_avg_pool2d_backward_loops(a, shape[2:]))
    assert_close(F.adaptive_avg_pool2d_backward(g, shape[2:]), back(g.astype(F64)),
                 _bound_avg(g, back))


# --- hand cases --------------------------------------------------------------------------------


def test_avg_pool2d_hand_cases():
    x = np.arange(25, dtype=F64).reshape(1, 1, 5, 5)
    # ceil mode: the last column/row windows are cut at the input's end (divisor 2 or 1).
    np.testing.assert_array_equal(F.avg_pool2d(x, 2, ceil_mode=True)[0, 0],
                                  [[3, 5, 6.5], [13, 15, 16.5], [20.5, 22.5, 24]])
    # padding 1, count_include_pad: the corner window holds 0, 1, 5, 6 and 5 zeros: 12 / 9.
    y = F.avg_pool2d(x, 3, 2, 1)
    assert y[0, 0, 0, 0] == pytest.approx(12 / 9, rel=1e-15)
    y = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    assert y[0, 0, 0, 0] == pytest.approx(3.0, rel=1e-15)
    assert F.avg_pool2d(x, 5, divisor_override=5)[0, 0, 0, 0] == 60.0
    # Backward of 2x2/2: each gradient spread over its 4 pixels; row 4 and column 4 unseen.
    dx = F.avg_pool2d_backward(np.ones((1, 1, 2, 2)), (5, 5), 2)
    expected = np.zeros((5, 5))
    expected[:4, :4] = 0.25
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_adaptive_hand_case_windows_overlap_when_size_does_not_divide():
    # H = 5 to 3: windows [0, 2), [1, 4), [3, 5) (floor start, ceil end).
    x = np.arange(5, dtype=F64).reshape(1, 1, 5, 1)
    np.testing.assert_array_equal(F.adaptive_avg_pool2d(x, (3, 1))[0, 0, :, 0], [0.5, 2, 3.5])
    dx = F.adaptive_avg_pool2d_backward(np.ones((1, 1, 3, 1)), (5, 1))
    np.testing.assert_array_equal(dx[0, 0, :, 0], [0.5, 0.5 + 1 / 3, 1 / 3, 1 / 3 + 0.5, 0.5])


def test_global_average_pooling_is_the_plane_mean():
    x = np.random.default_rng(8).standard_normal((3, 4, 9, 11))
    np.testing.assert_allclose(F.adaptive_avg_pool2d(x, 1)[:, :, 0, 0], x.mean(axis=(2, 3)),
                               rtol=1e-13)
    g = np.random.default_rng(9).standard_normal((3, 4, 1, 1))
    np.testing.assert_allclose(F.adaptive_avg_pool2d_backward(g, (9, 11)),
                               np.broadcast_to(g / 99, x.shape), rtol=1e-15)


def test_max_pool2d_dilation_hand_case():
    # 3x3 window with dilation 2 over a 5x5 plane reads rows/cols 0, 2, 4.
    x = np.arange(25, dtype=F64).reshape(1, 1, 5, 5)
    x[0, 0, 4, 4] = -1  # the max of the taps becomes x[4, 2] = 22
    y, argmax = F.max_pool2d(x, 3, 1, dilation=2)
    assert y[0, 0, 0, 0] == 22 and argmax[0, 0, 0, 0] == 22


# --- PyTorch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_CASES)
def test_max_pool2d_matches_torch(case, dtype):
    torch = pytest.importorskip("torch")
    shape, k, s, p, d, ceil = case
    x = _distinct(shape, dtype, 10)  # tie-free: PyTorch breaks ties its own way
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, k, s, p, d, ceil_mode=ceil,
                                              return_indices=True)
    y, argmax = F.max_pool2d(x, k, s, p, d, ceil)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(argmax, tidx.numpy())
    g = np.random.default_rng(11).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(F.max_pool2d_backward(g, argmax, shape[2:]), tx.grad.numpy(),
                               rtol=1e-6 if dtype == F32 else 1e-14, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_pool2d_matches_torch(case, dtype, assert_close):
    torch = pytest.importorskip("torch")
    shape, k, s, p, ceil, cip, div = case
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, k, s, p, ceil, cip, div)
    g = rng.standard_normal(ty.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    def twin(a):
        return (ref.avg_pool2d_loops(a, k, s, p, ceil, cip, div))
    def back(a):
        return (ref.avg_pool2d_backward_loops(a, shape[2:], k, s, p, ceil, cip, div))
    assert_close(F.avg_pool2d(x, k, s, p, ceil, cip, div), ty.detach().numpy(),
                 _bound_avg(x, twin))
    assert_close(F.avg_pool2d_backward(g, shape[2:], k, s, p, ceil, cip, div),
                 tx.grad.numpy(), _bound_avg(g, back))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ADAPTIVE_CASES)
def test_adaptive_avg_pool2d_matches_torch(case, dtype, assert_close):
    torch = pytest.importorskip("torch")
    shape, out = case
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, out)
    g = rng.standard_normal(ty.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    def twin(a):
        return (ref.adaptive_avg_pool2d_loops(a, out))
    def back(a):
        return (ref.adaptive_avg_pool2d_backward_loops(a, shape[2:]))
    assert_close(F.adaptive_avg_pool2d(x, out), ty.detach().numpy(), _bound_avg(x, twin))
    assert_close(F.adaptive_avg_pool2d_backward(g, shape[2:]), tx.grad.numpy(),
                 _bound_avg(g, back))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(3, 2, 1, 1, False), (2, 2, 0, 2, True), ((3, 2), 1, 1, 1,
                                                                           True)])
def test_max_pool2d_nan_output_matches_torch(case, dtype):
    """A NaN in the window is the maximum, as in PyTorch; the argmax points at the window's
    first NaN (PyTorch's CPU kernel picks the last one; see the report)."""
    torch = pytest.importorskip("torch")
    k, s, p, d, ceil = case
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    x[rng.random(x.shape) < 0.15] = np.nan
    y, argmax = F.max_pool2d(x, k, s, p, d, ceil)
    ty = torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p, d, ceil_mode=ceil)
    np.testing.assert_array_equal(y, ty.numpy())  # NaN where torch has NaN
    assert np.isnan(y).any() and not np.isnan(y).all()
    ref_y, ref_argmax = ref.max_pool2d_loops(x, k, s, p, d, ceil)
    np.testing.assert_array_equal(argmax, ref_argmax)


# --- finite differences ------------------------------------------------------------------------


GRAD_CASES = [
    pytest.param(("avg", (1, 2, 5, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                            count_include_pad=False)), id="avg-3s2p1-ceil-nopad"),
    pytest.param(("avg", (1, 2, 7, 5), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1),
                                            divisor_override=4)), id="avg-2x3-div4"),
    pytest.param(("avg", (1, 1, 6, 6), dict(kernel_size=2)), id="avg-2x2"),
    pytest.param(("adaptive", (1, 2, 7, 5), dict(output_size=(3, 4))), id="adaptive-7x5-to-3x4"),
    pytest.param(("adaptive", (1, 2, 4, 6), dict(output_size=1)), id="adaptive-global"),
    pytest.param(("max", (1, 1, 7, 8), dict(kernel_size=3, stride=2, padding=1, dilation=2,
                                            ceil_mode=True)), id="max-3s2p1-d2-ceil"),
    pytest.param(("max", (1, 2, 6, 7), dict(kernel_size=(2, 3), stride=1, dilation=(2, 1))),
                 id="max-2x3-s1-d(2,1)-overlap"),
]


@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradient_matches_finite_differences(case, numerical_gradient, relative_error):
    kind, shape, kw = case
    x = _distinct(shape, F64, 15)
    if kind == "avg":
        def fwd(a):
            return F.avg_pool2d(a, **kw)

        def bwd(g, _):
            return F.avg_pool2d_backward(g, shape[2:], **kw)
    elif kind == "adaptive":
        def fwd(a):
            return F.adaptive_avg_pool2d(a, **kw)

        def bwd(g, _):
            return F.adaptive_avg_pool2d_backward(g, shape[2:])
    else:
        def fwd(a):
            return F.max_pool2d(a, **kw)[0]

        def bwd(g, a):
            return F.max_pool2d_backward(g, F.max_pool2d(a, **kw)[1], shape[2:])
    g = np.random.default_rng(16).standard_normal(fwd(x).shape)
    analytic = bwd(g, x)
    numeric = numerical_gradient(lambda a: np.sum(fwd(a) * g), x)
    assert relative_error(analytic, numeric) < 1e-6


# --- threads, layouts, empty batch -------------------------------------------------------------


def _calls(dtype):
    """(name, inputs, call) for every pooling kernel, on shapes that split unevenly."""
    rng = np.random.default_rng(17)
    x = rng.integers(0, 4, (7, 5, 15, 13)).astype(dtype)
    gm = rng.standard_normal((7, 5, 8, 7)).astype(dtype)
    _, am = ref.max_pool2d_loops(x[:, :, :], 3, 2, 1, 1, True)
    ga = rng.standard_normal((7, 5, 8, 7)).astype(dtype)
    gad = rng.standard_normal((7, 5, 4, 6)).astype(dtype)
    return [
        ("max", (x,), lambda x: F.max_pool2d(x, 3, 2, 1, 1, True)),
        ("max-dilated", (x,), lambda x: F.max_pool2d(x, (3, 2), (1, 2), 1, (2, 3))),
        ("max2", (x,), lambda x: F.max_pool2d(x, 2)),
        ("max-backward", (gm, am), lambda g, a: F.max_pool2d_backward(g, a, (15, 13))),
        ("avg", (x,), lambda x: F.avg_pool2d(x, 3, 2, 1, True, False)),
        ("avg-backward", (ga,), lambda g: F.avg_pool2d_backward(g, (15, 13), 3, 2, 1, True,
                                                                False)),
        ("adaptive", (x,), lambda x: F.adaptive_avg_pool2d(x, (4, 6))),
        ("adaptive-global", (x,), lambda x: F.adaptive_avg_pool2d(x, 1)),
        ("adaptive-backward", (gad,), lambda g: F.adaptive_avg_pool2d_backward(g, (15, 13))),
    ]


CALL_NAMES = [c[0] for c in _calls(F64)]


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CALL_NAMES)
def test_bitwise_identical_for_1_2_3_threads(name, dtype, set_threads, monkeypatch):
    monkeypatch.setattr(fastcnn.functional.pooling, "_GRAIN", 1)  # every thread, small shapes
    _, inputs, call = next(c for c in _calls(dtype) if c[0] == name)
    results = {}
    for n in (1, 2, 3):
        set_threads(n)
        results[n] = _outputs(call(*inputs))
    for n in (2, 3):
        for one, many in zip(results[1], results[n]):
            assert one.tobytes() == many.tobytes(), f"{name}: {n} threads differ from 1"


@pytest.mark.parametrize("layout", ["readonly", "sliced", "fortran"])
@pytest.mark.parametrize("name", CALL_NAMES)
def test_any_input_layout_gives_the_contiguous_result(name, layout):
    _, inputs, call = next(c for c in _calls(F32) if c[0] == name)
    expected = _outputs(call(*inputs))

    def move(a):
        if layout == "readonly":
            a = a.copy()
            a.setflags(write=False)
            return a
        if layout == "sliced":
            buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
            buf[..., ::2] = a
            return buf[..., ::2]
        return np.asfortranarray(a)

    got = _outputs(call(*(move(a) for a in inputs)))
    for e, r in zip(expected, got):
        assert e.tobytes() == r.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    x = np.zeros((0, 3, 7, 6), dtype=dtype)
    y, a = F.max_pool2d(x, 3, 2, 1, 2, True)
    assert y.shape == a.shape == (0, 3, 3, 3)
    assert F.max_pool2d_backward(y, a, (7, 6)).shape == x.shape
    y = F.avg_pool2d(x, 2, ceil_mode=True)
    assert y.shape == (0, 3, 4, 3)
    assert F.avg_pool2d_backward(y, (7, 6), 2, ceil_mode=True).shape == x.shape
    y = F.adaptive_avg_pool2d(x, (2, 5))
    assert y.shape == (0, 3, 2, 5)
    assert F.adaptive_avg_pool2d_backward(y, (7, 6)).shape == x.shape


# --- validation --------------------------------------------------------------------------------

X = np.zeros((2, 3, 6, 6))
BAD_CALLS = [
    pytest.param(lambda: F.avg_pool2d(X, 0), ValueError, r"kernel_size must be >= 1, got 0",
                 id="avg-kernel0"),
    pytest.param(lambda: F.avg_pool2d(X, 2, 0), ValueError, r"stride must be >= 1, got 0",
                 id="avg-stride0"),
    pytest.param(lambda: F.avg_pool2d(X, 2, padding=2), ValueError,
                 r"avg-pool padding must be at most half the kernel size.*\(2, 2\)",
                 id="avg-padding-over-half"),
    pytest.param(lambda: F.avg_pool2d(X, 7), ValueError,
                 r"kernel \(7, 7\) is larger than the padded input \(6, 6\)", id="avg-too-big"),
    pytest.param(lambda: F.avg_pool2d(X[0], 2), ValueError, r"x must be 4-D.*\(3, 6, 6\)",
                 id="avg-3d"),
    pytest.param(lambda: F.avg_pool2d(X, 2, divisor_override=0), ValueError,
                 r"divisor_override must be a positive int.*got 0", id="avg-divisor0"),
    pytest.param(lambda: F.avg_pool2d(X, 2, ceil_mode=1), TypeError,
                 r"ceil_mode must be a bool, got 1", id="avg-ceil-int"),
    pytest.param(lambda: F.avg_pool2d_backward(np.zeros((2, 3, 2, 3)), (6, 6), 2), ValueError,
                 r"grad_y has shape \(2, 3, 2, 3\), expected \(2, 3, 3, 3\)",
                 id="avg-backward-grad-shape"),
    pytest.param(lambda: F.max_pool2d(X, 2, dilation=0), ValueError,
                 r"dilation must be >= 1, got 0", id="max-dilation0"),
    pytest.param(lambda: F.max_pool2d(X, 3, dilation=3), ValueError,
                 r"kernel \(3, 3\) with dilation \(3, 3\) \(span \(7, 7\)\) is larger than the "
                 r"padded input", id="max-dilated-too-big"),
    pytest.param(lambda: F.max_pool2d(np.zeros((1, 1, 2, 2)), 2, padding=1, dilation=3),
                 ValueError, r"window 0 along the height holds no input element",
                 id="max-dilated-window-misses-input"),
    pytest.param(lambda: F.max_pool2d(X, 2 ** 40, padding=2 ** 39), ValueError,
                 r"kernel_size must be < 2\*\*31", id="max-huge-kernel"),
    pytest.param(lambda: F.adaptive_avg_pool2d(X, 0), ValueError,
                 r"output_size must be >= 1, got 0", id="adaptive-0"),
    pytest.param(lambda: F.adaptive_avg_pool2d(X, (2, 3, 4)), ValueError,
                 r"output_size must be an int or a pair", id="adaptive-3-long"),
    pytest.param(lambda: F.adaptive_avg_pool2d(X, 2.5), TypeError,
                 r"output_size must be an int, got 2.5", id="adaptive-float"),
    pytest.param(lambda: F.adaptive_avg_pool2d(X, (2 ** 20, 2 ** 20)), ValueError,
                 r"output_size \(1048576, 1048576\) is too large", id="adaptive-huge"),
    pytest.param(lambda: F.adaptive_avg_pool2d(X.astype(np.int32), 2), TypeError,
                 r"x must be float32 or float64, got dtype int32", id="adaptive-int"),
    pytest.param(lambda: F.adaptive_avg_pool2d_backward(np.zeros((2, 3)), (6, 6)), ValueError,
                 r"grad_y must be 4-D", id="adaptive-backward-2d"),
    pytest.param(lambda: MaxPool2d(2, return_indices=True), NotImplementedError,
                 r"return_indices=True\) is not supported", id="layer-return-indices"),
    pytest.param(lambda: AvgPool2d(0), ValueError, r"kernel_size must be >= 1, got 0",
                 id="layer-avg-kernel0"),
    pytest.param(lambda: AvgPool2d(2, dtype=np.int32), TypeError,
                 r"dtype must be float32 or float64", id="layer-avg-dtype"),
    pytest.param(lambda: AdaptiveAvgPool2d((0, 2)), ValueError,
                 r"output_size must be >= 1", id="layer-adaptive-0"),
    pytest.param(lambda: AvgPool2d(2).forward(np.zeros((1, 1, 4, 4))), TypeError,
                 r"x has dtype float64", id="layer-avg-dtype-mismatch"),
    pytest.param(lambda: AdaptiveAvgPool2d(2).forward(np.zeros((4, 4), F32)), ValueError,
                 r"4-D input, got shape \(4, 4\)", id="layer-adaptive-2d"),
    pytest.param(lambda: MaxPool2d(2, dilation=3).forward(np.zeros((1, 1, 3, 3), F32)),
                 ValueError, r"larger than the padded input", id="layer-max-dilated-too-big"),
    pytest.param(lambda: AvgPool2d(2).backward(np.zeros((1, 1, 1, 1), F32)), RuntimeError,
                 r"backward called before forward", id="layer-avg-backward-first"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_CALLS)
def test_bad_input_raises_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_huge_stride_gives_one_window():
    y, a = F.max_pool2d(X, 2, stride=2 ** 63)
    assert y.shape == (2, 3, 1, 1)
    assert F.avg_pool2d(X, 2, stride=2 ** 63).shape == (2, 3, 1, 1)


def test_ceil_mode_kernel_larger_than_input_is_accepted_as_in_torch():
    # (1 - 2) / 2 rounded up is 0: one window, cut to the single element.
    x = np.full((1, 1, 1, 1), 3.0)
    assert F.max_pool2d(x, 2, ceil_mode=True)[0][0, 0, 0, 0] == 3.0
    assert F.avg_pool2d(x, 2, ceil_mode=True)[0, 0, 0, 0] == 3.0


# --- layers ------------------------------------------------------------------------------------

LAYERS = {
    "max": (lambda d: MaxPool2d((3, 2), (2, 1), (1, 0), 2, ceil_mode=True, dtype=d),
            "MaxPool2d", dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=2,
                              ceil_mode=True)),
    "max-default": (lambda d: MaxPool2d(2, dtype=d), "MaxPool2d", dict(kernel_size=2)),
    "avg": (lambda d: AvgPool2d(3, 2, 1, True, False, None, dtype=d), "AvgPool2d",
            dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    "avg-div": (lambda d: AvgPool2d((2, 3), divisor_override=5, dtype=d), "AvgPool2d",
                dict(kernel_size=(2, 3), divisor_override=5)),
    "adaptive": (lambda d: AdaptiveAvgPool2d((3, None), dtype=d), "AdaptiveAvgPool2d",
                 dict(output_size=(3, None))),
    "global": (lambda d: AdaptiveAvgPool2d(1, dtype=d), "AdaptiveAvgPool2d",
               dict(output_size=1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_torch_module(name, dtype):
    torch = pytest.importorskip("torch")
    make, torch_name, kwargs = LAYERS[name]
    layer = make(dtype)
    module = getattr(torch.nn, torch_name)(**kwargs)
    assert repr(layer) == repr(module)
    assert layer.macs((2, 3, 9, 8)) == 0
    x = _distinct((2, 3, 9, 8), dtype, 18)
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    assert layer.output_shape(x.shape) == tuple(ty.shape)
    y = layer.forward(x)
    g = np.random.default_rng(19).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    tol = 1e-5 if dtype == F32 else 1e-12
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), rtol=tol, atol=tol)
    layer.eval()  # no mode-dependent behaviour
    np.testing.assert_array_equal(layer.forward(x), y)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_rebuilds_from_init_args(name):
    layer = LAYERS[name][0](F32)
    again = type(layer)(**layer.init_args())
    assert repr(again) == repr(layer)


FUSION = [
    pytest.param(lambda: MaxPool2d(2), True, id="max2-fused"),
    pytest.param(lambda: MaxPool2d(3, 2, 1), True, id="max3s2p1-fused"),
    pytest.param(lambda: MaxPool2d(2, dilation=2), True, id="dilated-fused"),
    pytest.param(lambda: MaxPool2d(2, ceil_mode=True), True, id="ceil-fused"),
    pytest.param(lambda: AvgPool2d(2), False, id="avg-unfused"),
]


@pytest.mark.parametrize(("make_pool", "fused"), FUSION)
def test_sequential_fuses_only_the_pools_the_fused_kernel_supports(make_pool, fused):
    model = Sequential(Conv2d(2, 4, 3, seed=1, dtype=F64), ReLU(dtype=F64),
                       make_pool().__class__(**{**make_pool().init_args(), "dtype": F64}))
    assert (model.fusion_plan()[0][1] == 3) == fused
    # Either way the result equals the layers run one by one.
    x = np.random.default_rng(20).standard_normal((2, 2, 11, 10))
    layers = [type(m)(**{**m.init_args(), "dtype": F64}) for m in model]
    layers[0].params["weight"][...] = model[0].params["weight"]
    y = x
    for layer in layers:
        y = layer.forward(y)
    out = model.forward(x)
    np.testing.assert_array_equal(out, y)
    g = np.random.default_rng(21).standard_normal(out.shape)
    dx = model.backward(g)
    for layer in reversed(layers):
        g = layer.backward(g)
    np.testing.assert_array_equal(dx, g)


def _relu_producers(dtype, weight):
    """Layers ending in a ReLU, by fusion name: made twice (the model's and the reference's)."""
    def conv():
        c = Conv2d(1, 3, 1, bias=False, dtype=dtype)
        c.params["weight"][...] = weight
        return c
    from fastcnn import BatchNorm2d, LeakyReLU
    return {"ConvReLU": lambda: [conv(), ReLU(dtype=dtype)],
            "ConvBNReLU": lambda: [conv(), BatchNorm2d(3, dtype=dtype), ReLU(dtype=dtype)],
            "ReLU": lambda: [conv(), LeakyReLU(1.0, dtype=dtype), ReLU(dtype=dtype)]}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("producer", ["ConvReLU", "ConvBNReLU", "ReLU"])
@pytest.mark.parametrize("pool_args", [(2,), (3, 2, 1), (2, 2, 0, 2), (3, 2, 1, 1, False, True)],
                         ids=["2x2", "3s2p1", "2x2-dilated", "3s2p1-ceil"])
def test_relu_maxpool_step_gradient_is_bitwise_the_layers(dtype, producer, pool_args,
                                                          set_threads):
    """A MaxPool2d after a step ending in a ReLU takes the ReLU's backward pass in its own (the
    scatter masked by the ReLU's output at each winner): outputs and gradients bitwise the
    layers run one by one, with ReLU zeros (ties among +0, windows with no positive value),
    NaN, signed zero gradients, in training and in eval mode, 1 and 2 threads."""
    rng = np.random.default_rng(66)
    weight = np.array([1.0, -1.0, 0.5], dtype).reshape(3, 1, 1, 1)
    make = _relu_producers(dtype, weight)[producer]
    for k in range(6):
        shape = (int(rng.integers(2, 4)), 1, int(rng.integers(6, 20)), int(rng.integers(6, 20)))
        x = _hostile(shape, dtype, 300 + k)
        if producer == "ConvBNReLU":
            x[~np.isfinite(x)] = 0.5  # (a NaN would make the whole channel's statistics NaN)
        set_threads(1 + k % 2)
        model = Sequential(*make(), MaxPool2d(*pool_args, dtype=dtype))
        layers = make() + [MaxPool2d(*pool_args, dtype=dtype)]
        assert model.fusion_plan()[-1][2] == producer + "MaxPool"
        if k >= 4:  # eval mode (batch norm folded)
            model.eval()
            for layer in layers:
                layer.eval()
        out, want = model.forward(x), x
        for layer in layers:
            want = layer.forward(want)
        # (in eval mode the Conv-BN fold rounds otherwise: within float tolerance there)
        assert out.tobytes() == want.tobytes() or (k >= 4 and producer == "ConvBNReLU")
        g = rng.standard_normal(out.shape).astype(dtype)
        g[rng.random(g.shape) < 0.2] = -0.0
        dx = model.backward(g)
        for layer in reversed(layers):
            g = layer.backward(g)
        assert dx.tobytes() == g.tobytes(), (shape, k)
        assert model[0].grads["weight"].tobytes() == layers[0].grads["weight"].tobytes()


def test_layers_in_a_sequential_reuse_buffers_and_give_fresh_outputs():
    model = Sequential(Conv2d(1, 2, 3, seed=2), ReLU(), AvgPool2d(2), AdaptiveAvgPool2d(1))
    x = np.random.default_rng(22).standard_normal((3, 1, 9, 9)).astype(F32)
    y1 = model.forward(x)
    y2 = model.forward(x)
    assert y1 is not y2 and np.array_equal(y1, y2) and y1.shape == (3, 2, 1, 1)
    assert model.backward(np.ones_like(y1)).shape == x.shape


def test_fastcnn_exports_the_layers():
    assert fastcnn.nn.AvgPool2d is AvgPool2d and fastcnn.AdaptiveAvgPool2d is AdaptiveAvgPool2d


# --- the 2x2 / stride 2 fast paths are bitwise the scalar window scan ---------------------------


def _hostile(shape, dtype, seed):
    """Small integers (many ties), signed zeros, infinities and NaNs with distinct payloads."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, shape).astype(dtype)
    u = rng.random(shape)
    x[u < 0.05] = -0.0
    x[(u >= 0.05) & (u < 0.08)] = np.inf
    x[(u >= 0.08) & (u < 0.10)] = -np.inf
    nan = (u >= 0.10) & (u < 0.16)
    bits = x.view(np.uint32 if dtype == F32 else np.uint64)
    base = np.array(np.nan, dtype).view(bits.dtype)
    bits[nan] = base + rng.integers(1, 1000, int(nan.sum())).astype(bits.dtype)
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 2, 14, 14), (3, 1, 28, 28), (1, 2, 9, 16),
                                   (2, 1, 2, 2), (1, 1, 3, 1031), (1, 1, 601, 5),
                                   # small planes pooled in groups: several groups, the last
                                   # one partial (83 planes of 7x7 to a group)
                                   (3, 37, 7, 7), (2, 45, 6, 5), (1, 300, 3, 3)])
def test_max_pool2x2_fast_path_is_bitwise_the_window_scan(shape, dtype):
    x = _hostile(shape, dtype, sum(shape))
    y, argmax = F.max_pool2d(x, 2)
    ref_y, ref_argmax = ref.max_pool2d_loops(x, 2)
    np.testing.assert_array_equal(argmax, ref_argmax)
    assert y.tobytes() == np.ascontiguousarray(ref_y, dtype).tobytes()  # NaN payloads, -0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2x2_vector_path_keeps_the_scan_order_without_nan(dtype, set_threads):
    """Without NaN the 2x2 window is folded by max instructions over even and odd columns:
    with ties, signed zeros and infinities (where a wrong grouping or lane order would pick
    another -0 / +0 or another index) the values, the argmax and the values-only kernel are
    bitwise the window scan's, on widths that end a row mid-vector (the over-reading last
    step of a group, the stores that run into the next row) and groups that mix NaN-free
    planes with a plane holding a NaN (redone exactly)."""
    from fastcnn import _kernels
    rng = np.random.default_rng(63)
    shapes = [(1, 1, 2, 2), (2, 3, 7, 7), (1, 2, 14, 14), (3, 5, 28, 28), (1, 1, 3, 1031),
              (2, 45, 6, 5), (1, 300, 3, 3), (1, 2, 33, 70), (2, 1, 64, 64)]
    shapes += [(int(rng.integers(1, 4)), int(rng.integers(1, 30)), int(rng.integers(2, 40)),
                int(rng.integers(2, 40))) for _ in range(10)]
    for k, shape in enumerate(shapes):
        x = _hostile(shape, dtype, k)
        x[np.isnan(x)] = -0.0
        if k % 3 == 2:  # one NaN: its group takes the exact passes, the others stay vectors
            x.reshape(-1)[int(rng.integers(0, x.size))] = np.nan
        set_threads(1 + k % 2)
        y, argmax = F.max_pool2d(x, 2)
        ref_y, ref_argmax = ref.max_pool2d_loops(x, 2)
        np.testing.assert_array_equal(argmax, ref_argmax, err_msg=str(shape))
        assert y.tobytes() == np.ascontiguousarray(ref_y, dtype).tobytes(), shape
        if 2 * (shape[3] // 2) <= 512:
            values = np.full_like(y, 7.0)
            assert _kernels.pool.maxpool2_values(x, values, 1 + k % 2)
            assert values.tobytes() == y.tobytes(), shape


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2x2_backward_by_blocks_is_bitwise_the_scatter(dtype, set_threads):
    """Where every argmax lies in its output's 2x2 block, the backward pass (plain, and through
    a ReLU) writes whole blocks in vectors; it must be bitwise the zeroed-then-scattered
    gradient (0 + g: -0 becomes +0, NaN kept; the ReLU mask x > 0 false for NaN and -0) on rows
    that end mid-run (the last run overlaps), odd heights and widths (a row or column no block
    covers), groups of small planes, and any thread count; an index outside its block (another
    pool's, or a user's) must fall back to the scatter, duplicates adding up."""
    from fastcnn import _kernels
    rng = np.random.default_rng(64)
    shapes = [(2, 3, 8, 8), (1, 2, 14, 14), (3, 5, 28, 28), (2, 3, 9, 11), (1, 40, 10, 13),
              (1, 1, 3, 1031), (2, 45, 6, 9), (1, 2, 33, 70), (4, 16, 7, 7)]
    shapes += [(int(rng.integers(1, 4)), int(rng.integers(1, 30)), int(rng.integers(2, 40)),
                int(rng.integers(2, 40))) for _ in range(10)]
    for k, shape in enumerate(shapes):
        x = _hostile(shape, dtype, 100 + k)
        y, argmax = F.max_pool2d(x, 2)
        g = rng.standard_normal(y.shape).astype(dtype)
        g[rng.random(g.shape) < 0.1] = -0.0
        g[rng.random(g.shape) < 0.05] = np.nan
        if k % 4 == 3 and argmax.size > 1:  # an index outside its block: the scatter
            argmax.reshape(-1)[-1] = argmax.reshape(-1)[0]
        planes = argmax.reshape(-1, argmax.shape[2] * argmax.shape[3])
        flat_g = g.reshape(planes.shape)
        want = np.zeros((planes.shape[0], shape[2] * shape[3]), dtype)
        want_relu = want.copy()
        keep = np.take_along_axis(x.reshape(want.shape), planes, 1) > 0
        for p in range(planes.shape[0]):
            np.add.at(want[p], planes[p], flat_g[p])
            np.add.at(want_relu[p], planes[p][keep[p]], flat_g[p][keep[p]])
        for threads in (1, 2):
            set_threads(threads)
            got = np.full(shape, 7.0, dtype)
            _kernels.pool.maxpool2d_backward(g, argmax, got, threads)
            assert got.tobytes() == want.reshape(shape).tobytes(), (shape, threads)
            got = np.full(shape, 7.0, dtype)
            _kernels.pool.maxpool2d_relu_backward(g, argmax, x, got, threads)
            assert got.tobytes() == want_relu.reshape(shape).tobytes(), (shape, threads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 2, 14, 14), (1, 1, 5, 1031), (3, 37, 7, 7),
                                   (2, 45, 6, 5)])
@pytest.mark.parametrize("div", [None, 3])
def test_avg_pool2x2_fast_path_sums_in_row_major_order(shape, dtype, div):
    x = _hostile(shape, dtype, 7)
    x[~np.isfinite(x)] = -0.0
    H2, W2 = shape[2] // 2 * 2, shape[3] // 2 * 2
    t = x[..., :H2, :W2]
    zero = np.zeros((), dtype)
    expect = ((((zero + t[..., 0::2, 0::2]) + t[..., 0::2, 1::2]) + t[..., 1::2, 0::2])
              + t[..., 1::2, 1::2]) / dtype(div or 4)
    assert F.avg_pool2d(x, 2, divisor_override=div).tobytes() == expect.tobytes()
    g = _hostile(expect.shape, dtype, 8)
    g[~np.isfinite(g)] = -0.0
    dx = np.zeros(shape, dtype)
    dx[..., :H2, :W2] = np.repeat(np.repeat(zero + g / dtype(div or 4), 2, 2), 2, 3)
    got = F.avg_pool2d_backward(g, shape[2:], 2, divisor_override=div)
    assert got.tobytes() == dx.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("args", [((3, 3), 2, 1, False), ((3, 3), 2, 1, True),
                                  ((2, 3), 1, 0, False), ((3, 2), (2, 3), (1, 1), True),
                                  ((4, 4), 3, 2, False), ((1, 1), 2, 0, False),
                                  ((3, 3), 1, 1, False), ((5, 4), (1, 2), (2, 2), True)],
                         ids=["3s2p1", "3s2p1-ceil", "2x3s1", "3x2-s2x3-p1-ceil", "4s3p2", "1s2",
                              "3s1p1", "5x4-s1x2-p2-ceil"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 7), (1, 3, 14, 13), (1, 1, 5, 29), (9, 21, 7, 7),
                                   (1, 2, 9, 70)])
def test_max_pool_separable_path_is_bitwise_the_window_scan(shape, args, dtype, set_threads,
                                                            monkeypatch):
    # ties, -inf next to the -inf padding, NaNs with payloads: the separable path (horizontal
    # then vertical winners, -inf outputs redone by the scan) against the window scan, on 1, 2
    # and 3 threads (each with its own part of the layer's scratch)
    monkeypatch.setattr(fastcnn.functional.pooling, "_GRAIN", 1)
    kernel, stride, padding, ceil = args
    x = _hostile(shape, dtype, sum(shape))
    ref_y, ref_argmax = ref.max_pool2d_loops(x, kernel, stride, padding, ceil_mode=ceil)
    for threads in (1, 2, 3):
        set_threads(threads)
        y, argmax = F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil)
        np.testing.assert_array_equal(argmax, ref_argmax)
        assert y.tobytes() == np.ascontiguousarray(ref_y, dtype).tobytes()


def test_small_inputs_run_on_fewer_threads(set_threads, monkeypatch):
    pooling = fastcnn.functional.pooling
    set_threads(3)
    assert pooling._threads_for(pooling._GRAIN - 1) == 1
    assert pooling._threads_for(2 * pooling._GRAIN + 1) == 2
    assert pooling._threads_for(100 * pooling._GRAIN) == 3
    set_threads(1)
    assert pooling._threads_for(100 * pooling._GRAIN) == 1
    monkeypatch.setattr(pooling, "_GRAIN", 1)
    set_threads(2)
    assert pooling._threads_for(2) == 2


def _gap_lane_order(x):
    """Global average pooling in the kernel's float32 summation order: element k of a plane goes
    to partial sum k % 8, the sums are added ((0+4) + (1+5)) + ((2+6) + (3+7)), then / H / W."""
    N, C, H, W = x.shape
    y = np.empty((N, C, 1, 1), dtype=np.float32)
    for n in range(N):
        for c in range(C):
            s = [np.float32(0)] * 8
            for k, v in enumerate(x[n, c].reshape(-1)):
                s[k % 8] = np.float32(s[k % 8] + v)
            total = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))
            y[n, c, 0, 0] = np.float32(np.float32(total / np.float32(H)) / np.float32(W))
    return y


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (3, 3), (7, 7), (5, 9), (4, 4), (2, 13)],
                         ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_global_average_pooling_float32_order_and_threads(hw, set_threads, monkeypatch):
    """The vectorised float32 path (8 planes a step, blended tails) keeps the scalar order
    bitwise, for plane counts that are not multiples of 8 and for every thread count."""
    monkeypatch.setattr(fastcnn.functional.pooling, "_GRAIN", 1)
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 23) + hw) * 10).astype(np.float32)
    x[0, 0] = -0.0
    want = _gap_lane_order(x)
    g = rng.standard_normal((3, 23, 1, 1)).astype(np.float32)
    want_dx = np.broadcast_to(g / np.float32(hw[0]) / np.float32(hw[1]), x.shape)
    for n in (1, 2, 3):
        set_threads(n)
        assert F.adaptive_avg_pool2d(x, 1).tobytes() == want.tobytes()
        assert F.adaptive_avg_pool2d_backward(g, hw).tobytes() == \
            np.ascontiguousarray(want_dx).tobytes()


def _special_values(x, rng):
    """Ties, signed zeros and NaNs with payloads, for the max-pool tie and NaN rules."""
    x = np.round(x * 2) / 2  # many ties
    x[rng.random(x.shape) < 0.1] = -0.0
    x[rng.random(x.shape) < 0.1] = 0.0
    bits = x.view(np.uint32 if x.dtype == F32 else np.uint64)
    nan = rng.random(x.shape) < 0.06
    quiet = np.uint32(0x7FC00000) if x.dtype == F32 else np.uint64(0x7FF8000000000000)
    bits[nan] = quiet | rng.integers(1, 1000, nan.sum()).astype(bits.dtype)  # payloads
    return x


def _values_kernel_is_the_argmax_kernel(x, threads):
    """The values-only 2x2 max-pool kernel of x against the argmax kernel, bitwise; returns the
    pooled values."""
    from fastcnn import _kernels
    n, c, h, w = x.shape
    y_ref = np.empty((n, c, h // 2, w // 2), x.dtype)
    am = np.empty(y_ref.shape, np.int64)
    work = np.empty(_kernels.pool.maxpool2d_scratch(h, w, h // 2, w // 2, 2, 2, 2, 2, 1, 1,
                                                    x.dtype == np.float64, 1), x.dtype)
    _kernels.pool.maxpool2d_forward(x, y_ref, am, 2, 2, 2, 2, 0, 0, 1, 1, 1, work)
    y_val = np.full_like(y_ref, 7.0)
    assert _kernels.pool.maxpool2_values(x, y_val, threads)
    assert y_val.tobytes() == y_ref.tobytes()
    return y_ref


@pytest.mark.parametrize("dtype", DTYPES)
def test_values_only_max_pool_fast_and_exact_blocks(dtype, set_threads):
    """The values-only 2x2 max-pool folds windows with max instructions over groups of planes
    without NaN and takes the exact passes for a group holding one: with ReLU-like data (many
    +0 ties) and a few windows with signed zeros or NaN payloads, both kinds of group occur in
    one call, and every value is bitwise the argmax kernel's."""
    rng = np.random.default_rng(62)
    for trial in range(12):
        n, c = int(rng.integers(1, 5)), int(rng.integers(1, 40))
        h, w = int(rng.integers(2, 40)), int(rng.integers(2, 40))
        x = np.maximum(rng.standard_normal((n, c, h, w)), 0).astype(dtype)  # +0 ties
        x[rng.random(x.shape) < 0.2] = 1.5  # nonzero ties
        bits = x.view(np.uint32 if dtype == F32 else np.uint64)
        quiet = 0x7FC00000 if dtype == F32 else 0x7FF8000000000000
        for _ in range(int(rng.integers(0, 4))):  # a few special windows, in a few planes
            b_, c_ = int(rng.integers(0, n)), int(rng.integers(0, c))
            i, j = 2 * int(rng.integers(0, h // 2)), 2 * int(rng.integers(0, w // 2))
            if rng.random() < 0.5:  # left winner -0 from row 1, right +0 from row 0: +0 wins
                x[b_, c_, i:i + 2, j:j + 2] = [[-1.0, 0.0], [-0.0, -1.0]]
            else:  # two NaNs with payloads: the first one in row-major order wins
                x[b_, c_, i:i + 2, j:j + 2] = [[1.0, 0.0], [2.0, 3.0]]
                bits[b_, c_, i + 1, j] = quiet | int(rng.integers(1, 1000))
                bits[b_, c_, i, j + 1] = quiet | int(rng.integers(1, 1000))
        set_threads(1 + trial % 2)
        _values_kernel_is_the_argmax_kernel(x, 1 + trial % 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_max_pool_values_only_are_bitwise_the_training_values(dtype, set_threads):
    """In eval mode a 2x2 / stride 2 MaxPool2d computes the values only (the argmax is made
    from the kept input when asked for): outputs, ``indices`` and the gradient of a backward
    pass after it are bitwise those of training mode, with ties, signed zeros and NaN
    payloads, odd sizes (a last row and column no window reads), one and two threads, in a
    Sequential (fused after Conv-ReLU, bound to the shape); a layer used alone keeps computing
    its argmax."""
    rng = np.random.default_rng(61)
    for _ in range(8):
        n, c = int(rng.integers(1, 4)), int(rng.integers(1, 7))
        h, w = int(rng.integers(2, 33)), int(rng.integers(2, 33))
        x = _special_values(rng.standard_normal((n, c, h, w)).astype(dtype), rng)
        set_threads(int(rng.integers(1, 3)))
        y_ref = _values_kernel_is_the_argmax_kernel(x, 2)
        # the layer, alone and after a fused conv + ReLU, eval against train
        pool = MaxPool2d(2, dtype=dtype)
        g = rng.standard_normal(y_ref.shape).astype(dtype)
        y_train = pool.forward(x).copy()
        dx_train = pool.backward(g).copy()
        idx_train = pool.indices.copy()
        pool.eval()
        assert pool.forward(x).tobytes() == y_train.tobytes()
        assert pool.indices.tobytes() == idx_train.tobytes()
        assert pool.backward(g).tobytes() == dx_train.tobytes()
        pool.forward(x)
        assert pool.backward(g).tobytes() == dx_train.tobytes()  # backward without indices
        seq = Sequential(Conv2d(c, 3, 1, seed=2, dtype=dtype), ReLU(dtype=dtype),
                         MaxPool2d(2, dtype=dtype))
        gs = rng.standard_normal((n, 3, h // 2, w // 2)).astype(dtype)
        ys, dxs = seq.forward(x), seq.backward(gs)
        idxs = seq[2].indices.copy()
        seq.eval()
        for _ in range(2):  # bound to the shape, twice
            assert seq.forward(x).tobytes() == ys.tobytes()
            assert seq[2]._cache[1] is None  # the values only ...
            assert seq[2].indices.tobytes() == idxs.tobytes()  # ... and the argmax on demand
            seq.forward(x)
            assert seq.backward(gs).tobytes() == dxs.tobytes()
