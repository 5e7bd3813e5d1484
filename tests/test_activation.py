"""Tests of the element-wise activations, softmax / log-softmax and their layers
(``fastcnn.functional.activation``, ``fastcnn.nn.activation``), plus Identity and Flatten.

Each function is held to: PyTorch autograd on random shapes, its NumPy twin, float64 central
differences, the exact function evaluated point by point with Python's ``math`` module (float64
to ~1e-15 relative, float32 within a per-op bound of 0-5 ulp, F32_ULPS), special values (NaN,
inf, -0.0, huge, subnormal) against PyTorch, 1/2/3-thread bitwise equality on arrays split into
several blocks, 0-d / empty / non-contiguous / read-only inputs and input validation.
"""

import math
import warnings
from decimal import Decimal

import numpy as np
import pytest

import fastcnn
from fastcnn import _reference as ref
from fastcnn import functional as F
from fastcnn import nn

F32, F64 = np.float32, np.float64
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]

# name: (forward, backward, reference forward, reference backward, backward takes "x" or "y",
#        torch forward builder (torch -> callable), layer builder)
ACTS = {
    "relu": (F.relu, F.relu_backward, ref.relu_ref, ref.relu_backward_ref, "x",
             lambda t: t.relu, lambda d: nn.ReLU(dtype=d)),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), lambda g, x: F.leaky_relu_backward(g, x, 0.2),
                   lambda x: ref.leaky_relu_ref(x, 0.2),
                   lambda g, x: ref.leaky_relu_backward_ref(g, x, 0.2), "x",
                   lambda t: lambda a: t.nn.functional.leaky_relu(a, 0.2),
                   lambda d: nn.LeakyReLU(0.2, dtype=d)),
    "elu": (lambda x: F.elu(x, 1.5), lambda g, x: F.elu_backward(g, x, 1.5),
            lambda x: ref.elu_ref(x, 1.5), lambda g, x: ref.elu_backward_ref(g, x, 1.5), "x",
            lambda t: lambda a: t.nn.functional.elu(a, 1.5), lambda d: nn.ELU(1.5, dtype=d)),
    "gelu": (F.gelu, F.gelu_backward, ref.gelu_ref, ref.gelu_backward_ref, "x",
             lambda t: t.nn.functional.gelu, lambda d: nn.GELU(dtype=d)),
    "gelu_tanh": (lambda x: F.gelu(x, "tanh"), lambda g, x: F.gelu_backward(g, x, "tanh"),
                  lambda x: ref.gelu_ref(x, "tanh"),
                  lambda g, x: ref.gelu_backward_ref(g, x, "tanh"), "x",
                  lambda t: lambda a: t.nn.functional.gelu(a, approximate="tanh"),
                  lambda d: nn.GELU("tanh", dtype=d)),
    "tanh": (F.tanh, F.tanh_backward, ref.tanh_ref, ref.tanh_backward_ref, "y",
             lambda t: t.tanh, lambda d: nn.Tanh(dtype=d)),
    "sigmoid": (F.sigmoid, F.sigmoid_backward, ref.sigmoid_ref, ref.sigmoid_backward_ref, "y",
                lambda t: t.sigmoid, lambda d: nn.Sigmoid(dtype=d)),
}
NAMES = list(ACTS)
SHAPES = [pytest.param(s, id="x".join(map(str, s)) or "0d")
          for s in [(3, 5, 7, 2), (1, 13), (2, 3, 9, 9), (4099,), (), (0, 3, 4)]]


def _x(shape, dtype, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _saved(name, x):
    fwd, _, _, _, saved, _, _ = ACTS[name]
    return x if saved == "x" else fwd(x)


def _tol(dtype):
    return (1e-13, 1e-300) if dtype == F64 else (2e-6, 1e-30)


# --- exact values, point by point -------------------------------------------------------------

def _exact(name, v):
    """The function at one float64 point, from Python's math module (NaN stays NaN)."""
    if math.isnan(v):
        return math.nan
    if name == "elu":
        return v if v > 0 else 1.5 * math.expm1(v)
    if name == "gelu":
        if not math.isfinite(v):
            return v if v > 0 else math.nan
        return v * _phi_exact(v)
    if name == "tanh":
        return math.tanh(v)
    if name == "sigmoid":
        if v >= 0:
            return 1 / (1 + math.exp(-v))
        e = math.exp(v) if v > -745.2 else 0.0
        return e / (1 + e)
    raise KeyError(name)


def _phi_exact(v):
    """Phi(v) for finite v: erfc at the exact -v/sqrt2 from the float z and its error dz, to
    first order."""
    zd = -Decimal(v) / Decimal(2).sqrt()
    z = float(zd)
    dz = float(zd - Decimal(z))
    return 0.5 * math.erfc(z) - dz * math.exp(-z * z) / math.sqrt(math.pi)


def _grid():
    rng = np.random.default_rng(7)
    pts = [0.0, -0.0, 1e-320, -1e-320, 1e-300, -1e-300, 1e-17, -1e-17, 1e-9, -1e-9, 0.3466,
           -0.3466, 0.5, -0.5, 1.0, -1.0, 19.99, 20.5, -37.0, -40.0, 707.9, -707.9, 708.5,
           -708.5, 709.7, -709.7, -744.0, -746.0, 1e300, -1e300, np.inf, -np.inf, np.nan]
    pts += list(rng.standard_normal(2000) * 4) + list(rng.uniform(-800, 800, 500))
    pts += list(np.ldexp(1.0, rng.integers(-60, 3, 300)) * rng.choice([-1, 1], 300))
    return np.array(pts)


@pytest.mark.parametrize("name", ["elu", "gelu", "tanh", "sigmoid"])
def test_float64_is_within_1e_15_of_the_exact_function(name):
    x = _grid()
    y = ACTS[name][0](x)
    exact = np.array([_exact(name, v) for v in x])
    assert np.array_equal(np.isnan(y), np.isnan(exact)), x[np.isnan(y) != np.isnan(exact)]
    ok = ~np.isnan(exact)
    with np.errstate(invalid="ignore"):
        err = np.where(y[ok] == exact[ok], 0.0, np.abs(y[ok] - exact[ok]))
    allowed = 1e-15 * np.abs(exact[ok]) + 5e-324
    worst = np.argmax(err / allowed)
    assert np.all(err <= allowed), (x[ok][worst], y[ok][worst], exact[ok][worst])


def _gelu_sweep():
    """1e5 evenly spaced points over [-40, 40], the edges of the vector erfc's pieces
    (|x|/sqrt2 = 1/4, 0.84375, 1.25, 1/0.35, and the scalar fallback at |x| = 37) with their
    float neighbours, subnormals and signed zeros."""
    edges = np.array([0.25, 0.84375, 1.25, 1 / 0.35]) * math.sqrt(2)
    edges = np.concatenate([edges, [37.0]])
    near = np.concatenate([edges + k * 1e-15 * edges for k in range(-3, 4)])
    near = np.concatenate([near, np.nextafter(edges, 0), np.nextafter(edges, 99)])
    pts = np.concatenate([np.linspace(-40, 40, 100_001), near, -near,
                          [0.0, -0.0, 5e-324, -5e-324, 1e-310, -1e-310, 1e-200, -1e-200]])
    return pts


def _gelu_grad_exact(v):
    """Phi(v) + v exp(-v^2/2) / sqrt(2 pi) (first-order corrected erfc as in ``_exact``; v^2
    split exactly into h + l) and the scale |Phi| + |v phi| that its rounding is relative to."""
    phi = _phi_exact(v)
    sq = Decimal(v) * Decimal(v)
    hi = float(sq)
    lo = float(sq - Decimal(hi))
    dens = math.exp(-0.5 * hi) * (1 - 0.5 * lo) / math.sqrt(2 * math.pi)
    return phi + v * dens, abs(phi) + abs(v * dens)


def test_float64_gelu_dense_sweep_forward_and_backward():
    # forward within 1e-15 relative (measured: 7.3e-16; below x = -37.6 the result is subnormal
    # and only an absolute 1e-320 is asked); the gradient Phi + x phi crosses zero at
    # x = -0.7518, so it is held to 1e-15 of |Phi| + |x phi| (measured: 5.6e-16)
    x = _gelu_sweep()
    y = F.gelu(x)
    d = F.gelu_backward(np.ones_like(x), x)
    exact = np.array([_exact("gelu", v) for v in x])
    err = np.where(y == exact, 0.0, np.abs(y - exact))
    allowed = 1e-15 * np.abs(exact) + 1e-320
    worst = np.argmax(err / allowed)
    assert np.all(err <= allowed), (x[worst], y[worst], exact[worst])
    grad = np.array([_gelu_grad_exact(v) for v in x])
    err = np.abs(d - grad[:, 0])
    allowed = 1e-15 * grad[:, 1] + 1e-320
    worst = np.argmax(err / allowed)
    assert np.all(err <= allowed), (x[worst], d[worst], grad[worst])
    # the signs of zeros and the tails
    assert np.signbit(F.gelu(np.array([-0.0, -40.0, -1e300]))).all()
    np.testing.assert_array_equal(F.gelu(np.array([40.0, 1e300, np.inf])), [40.0, 1e300, np.inf])


def _ulps(a, b):
    """Distance in float32 ulps (a, b float32, same sign or zero)."""
    ia = a.view(np.int32).astype(np.int64)
    ib = b.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return np.abs(ia - ib)


# Max ulp distance of each float32 kernel from the float64 kernel rounded to float32 (which is
# within ~1e-15 of the exact function, tests above), forward and backward (g uniform in
# [0.5, 2]), measured on every 97th float32 of magnitude in [2^-126, 20] and the grid below (29
# million points): the figures asserted below, with one ulp to spare for the scale-relative
# GELU gradients (their worst case moves with g). GELU's derivative crosses zero at x = -0.7518,
# where no float32 evaluation of Phi + x phi has a relative bound: for both GELU forms the
# backward error is measured in ulps of the scale of its terms, |g| (|Phi| + |x phi|) (exact) or
# |g| (s + |x v' s (1 - s)|) (tanh form), and in ulps of the result elsewhere.
# The tanh form's backward reaches 6 on every 7th float32 (x = -3.7345645: -0.0016483867 for
# -0.0016483873528, the slow test below), one more than on every 97th.
F32_ULPS = {  # name: (forward, backward); measured: the same except the exact GELU backward (3)
    "relu": (0, 0), "leaky_relu": (1, 1), "elu": (1, 3), "gelu": (3, 4), "gelu_tanh": (3, 6),
    "tanh": (1, 1), "sigmoid": (2, 2),
}


@pytest.mark.parametrize("name", NAMES)
def test_float32_is_within_its_ulp_bound_of_the_rounded_float64_result(name):
    x = _grid()
    x = x[np.abs(x) < 1e38].astype(F32)
    y32 = ACTS[name][0](x)
    y64 = ACTS[name][0](x.astype(F64)).astype(F32)
    ok = np.isfinite(y64)
    assert np.array_equal(np.isfinite(y32), ok)
    assert _ulps(y32[ok], y64[ok]).max() <= F32_ULPS[name][0]


def _float32_grid(step, seed=3):
    """Every ``step``-th float32 with magnitude in [2**-30, 100] (both signs), the edges of the
    vector ranges, and uniform points in [-100, 100]."""
    lo, hi = np.float32(2.0**-30).view(np.int32), np.float32(100).view(np.int32)
    pos = np.arange(lo, hi + 1, step, dtype=np.int32).view(np.float32)
    edges = np.array([0, 1e-45, 1e-40, 1e-38, 0.55, 0.5, 1, 2, 3, 5, 7, 11, 12, 14.75, 15, 9.5,
                      17.5, 40, 87, 87.5, 88.7, 89, 103, 104, 1e30], F32)
    rng = np.random.default_rng(seed)
    return np.concatenate([pos, -pos, edges, -edges, np.nextafter(edges, 0),
                           np.nextafter(edges, 200), rng.uniform(-100, 100, 200_000).astype(F32)])


def _backward_scale(name, g, x):
    """|g| times the sum of the magnitudes of the derivative's terms (float64), or None where
    the derivative is a single term (the error is then measured in ulps of the result)."""
    g, x = np.abs(g.astype(F64)), x.astype(F64)
    if name == "gelu":
        dens = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return g * (ref.gelu_backward_ref(np.ones_like(x), x) + 2 * np.maximum(0, -x * dens))
    if name == "gelu_tanh":
        v = 2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        t = np.exp(-np.abs(v))
        s = np.where(v >= 0, 1 / (1 + t), t / (1 + t))
        dv = 2 * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x * x)
        return g * (s + np.abs(x * dv * t / (1 + t) ** 2))
    return None


def _assert_float32_ulps(name, x):
    fwd, bwd, *_ = ACTS[name]
    limit_f, limit_b = F32_ULPS[name]
    y32 = fwd(x)
    y64 = fwd(x.astype(F64)).astype(F32)
    ok = np.isfinite(y64)
    assert np.array_equal(np.isfinite(y32), ok)
    u = _ulps(y32[ok], y64[ok])
    worst = np.argmax(u)
    assert u[worst] <= limit_f, (x[ok][worst], y32[ok][worst], y64[ok][worst])
    saved = x if ACTS[name][4] == "x" else y32
    g = np.random.default_rng(4).uniform(0.5, 2, x.size).astype(F32)
    d32 = bwd(g, saved)
    d64 = bwd(g.astype(F64), saved.astype(F64))
    ok = np.isfinite(d64)
    assert np.array_equal(np.isfinite(d32), ok)
    scale = _backward_scale(name, g, saved)
    if scale is None:
        u = _ulps(d32[ok], d64[ok].astype(F32))
    else:  # error over the float32 spacing of the scale, bounded below by the smallest subnormal
        spacing = np.spacing(scale[ok].astype(F32)).astype(F64)
        u = np.abs(d32[ok] - d64[ok].astype(F32).astype(F64)) / np.maximum(spacing, 2.0**-149)
    worst = np.argmax(u)
    assert u[worst] <= limit_b, (saved[ok][worst], d32[ok][worst], d64[ok][worst])


@pytest.mark.parametrize("name", NAMES)
def test_float32_within_its_ulp_bound_on_a_dense_grid(name):
    # ~1.3 million points; the slow test below takes every 7th float32
    _assert_float32_ulps(name, _float32_grid(step=1499))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_float32_within_its_ulp_bound_on_every_7th_float(name):
    x = _float32_grid(step=7)
    for part in np.array_split(x, 16):
        _assert_float32_ulps(name, part)


# --- against PyTorch, the twins and finite differences ---------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_backward_match_torch_autograd(name, shape, dtype):
    torch = pytest.importorskip("torch")
    fwd, bwd, _, _, _, tfn, _ = ACTS[name]
    x = _x(shape, dtype, seed=len(shape))
    g = _x(shape, dtype, seed=9)
    tx = torch.tensor(x, requires_grad=True)
    ty = tfn(torch)(tx)
    ty.backward(torch.tensor(g))
    y = fwd(x)
    assert y.shape == x.shape and y.dtype == dtype
    _close_to_torch(y, ty.detach().numpy(), np.abs(x) + 1)
    dx = bwd(g, _saved(name, x))
    assert dx.shape == x.shape and dx.dtype == dtype
    _close_to_torch(dx, tx.grad.numpy(), np.abs(g) * (np.abs(x) + 1))


def _close_to_torch(actual, desired, scale):
    """|actual - desired| <= rtol |desired| + 8 eps * scale: PyTorch's own rounding (e.g. its
    ``1 + erf`` in GELU for negative x, in float32) is an absolute error of a few eps * scale."""
    dtype = actual.dtype
    rtol, eps = _tol(dtype)[0], np.finfo(dtype).eps
    actual, desired = actual.astype(F64), np.asarray(desired, F64)
    assert actual.shape == desired.shape
    err = np.abs(actual - desired)
    allowed = rtol * np.abs(desired) + 8 * eps * np.asarray(scale, F64)
    assert np.all(err <= allowed), np.max(err - allowed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_backward_match_the_numpy_twins(name, dtype):
    fwd, bwd, rfwd, rbwd, saved, _, _ = ACTS[name]
    x = _x((2, 7, 11, 5), dtype, seed=3)
    g = _x(x.shape, dtype, seed=4)
    # The twins are plain formulas: near-cancellations (1 - y^2, tiny GELU values) and fused
    # multiply-adds in the kernels leave differences of a few ulp of the operands' scale.
    rtol = 1e-13 if dtype == F64 else 4e-7
    y = fwd(x)
    err = np.abs(y.astype(F64) - rfwd(x))
    assert np.all(err <= rtol * (np.abs(rfwd(x)) + 1e-3 * np.abs(x))), err.max()
    s = x if saved == "x" else rfwd(x)
    err = np.abs(bwd(g, s).astype(F64) - rbwd(g, s))
    assert np.all(err <= rtol * (np.abs(rbwd(g, s)) + np.abs(g))), err.max()


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_float64_finite_differences(name, numerical_gradient, relative_error):
    fwd, bwd, *_ = ACTS[name]
    x = _x((3, 4, 5), F64, seed=11)
    x[np.abs(x) < 1e-3] = 0.5  # away from the kinks of the ReLU family
    g = _x(x.shape, F64, seed=12)
    numeric = numerical_gradient(lambda a: np.sum(fwd(a) * g), x)
    assert relative_error(bwd(g, _saved(name, x)), numeric) < 1e-7


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_special_values_match_torch(name, dtype):
    torch = pytest.importorskip("torch")
    fwd, bwd, _, _, _, tfn, _ = ACTS[name]
    big = np.finfo(dtype).max / 4
    tiny = np.finfo(dtype).smallest_subnormal
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, big, -big, tiny, -tiny, 1.0, -1.0, 30.0,
                  -30.0, -90.0, -200.0], dtype=dtype)
    g = np.linspace(-2, 2, x.size).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty = tfn(torch)(tx)
    ty.backward(torch.tensor(g))
    y, dx = fwd(x), bwd(g, _saved(name, x))
    want_y, want_dx = ty.detach().numpy(), tx.grad.numpy()
    # PyTorch's float32 gelu_tanh of +-big overflows x**3 to NaN where fastcnn gives x / 0
    keep = np.ones(x.size, bool)
    if name.startswith("gelu"):
        keep &= np.abs(x) < big / 2
    np.testing.assert_array_equal(np.isnan(y[keep]), np.isnan(want_y[keep]))
    np.testing.assert_allclose(y[keep], want_y[keep], rtol=_tol(dtype)[0] * 10, atol=1e-35)
    if name in ("relu", "leaky_relu"):  # exact selects: bitwise, signs of zeros included
        assert y.tobytes() == want_y.tobytes()
        if name == "relu":  # NaN input: fastcnn's gradient is 0 (x > 0), PyTorch's is g
            assert dx[0] == 0
            keep[0] = False
        assert dx[keep].tobytes() == want_dx[keep].tobytes()
    keep &= np.isfinite(x) | (name in ("relu", "leaky_relu", "elu", "tanh", "sigmoid"))
    if name == "elu":  # PyTorch's ELU gradient at NaN is NaN in float64 but g in float32
        keep &= ~np.isnan(x)
        assert np.isnan(dx[np.isnan(x)]).all()
    np.testing.assert_array_equal(np.isnan(dx[keep]), np.isnan(want_dx[keep]))
    np.testing.assert_allclose(dx[keep], want_dx[keep], rtol=_tol(dtype)[0] * 100, atol=1e-30)


# --- threads, layouts, shapes -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_layer_with_reused_buffers_is_the_functional_form(name, dtype, set_threads):
    """A layer with reused buffers (as a Sequential runs it) keeps kernel calls bound to its
    output and gradient buffers for the next call of the same shape: every call must still be
    the functional form's result, bitwise, across repeated shapes, a new shape and back, a
    thread-count change, a changed parameter (LeakyReLU's slope, ELU's alpha), a
    non-contiguous view and an input of the other dtype."""
    fwd, bwd, *_, make = ACTS[name]
    layer = make(dtype)
    for step, (shape, threads) in enumerate([((4, 3, 7, 7), 1), ((4, 3, 7, 7), 1), ((2, 9), 1),
                                             ((4, 3, 7, 7), 2), ((4, 3, 7, 7), 2), ((), 1),
                                             ((4, 3, 7, 7), 1)]):
        set_threads(threads)
        if step == 4 and hasattr(layer, "negative_slope"):
            layer.negative_slope = 0.3
            fwd = lambda x: F.leaky_relu(x, 0.3)  # noqa: E731
            bwd = lambda g, x: F.leaky_relu_backward(g, x, 0.3)  # noqa: E731
        if step == 4 and hasattr(layer, "alpha"):
            layer.alpha = 0.5
            fwd = lambda x: F.elu(x, 0.5)  # noqa: E731
            bwd = lambda g, x: F.elu_backward(g, x, 0.5)  # noqa: E731
        x = np.asarray(_x(shape, dtype, seed=step))
        g = np.asarray(_x(shape, dtype, seed=100 + step))
        y = layer._forward(x, reuse=True)
        assert y.tobytes() == fwd(x).tobytes(), step
        gx = layer._backward(g, reuse=True)
        assert gx.tobytes() == bwd(g, _saved(name, x)).tobytes(), step
    x = _x((4, 3, 7, 14), dtype, seed=9)[..., ::2]  # a view, not contiguous
    assert layer._forward(x, reuse=True).tobytes() == fwd(np.ascontiguousarray(x)).tobytes()
    with pytest.raises(TypeError, match="dtype"):  # the plain path's checks still run
        layer._forward(x.astype(F64 if dtype == F32 else F32), reuse=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_bitwise_identical_for_1_2_3_threads(name, dtype, set_threads):
    fwd, bwd, *_ = ACTS[name]
    # above the kernels' 32768-element parallel threshold: ten blocks, the last partial, a tail
    x = _x((9 * 4096 + 1001,), dtype, seed=5)
    g = _x(x.shape, dtype, seed=6)
    results = []
    for n in (1, 2, 3):
        set_threads(n)
        y = fwd(x)
        results.append((y.tobytes(), bwd(g, _saved(name, x)).tobytes()))
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("name", NAMES)
def test_zero_d_and_empty_arrays_keep_their_shape(name):
    fwd, bwd, *_ = ACTS[name]
    for x in (np.array(-0.75), np.array(2.0, dtype=F32), np.zeros((0, 3)), np.zeros((2, 0, 4))):
        y = fwd(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert bwd(np.ones_like(x), _saved(name, x)).shape == x.shape
    assert float(fwd(np.array(-0.75))) == float(fwd(np.array([-0.75]))[0])


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_and_read_only_inputs(name):
    fwd, bwd, *_ = ACTS[name]
    base = _x((6, 10), F64, seed=8)
    x = base[::2, 1::3]
    x_ro = np.array(x)
    x_ro.setflags(write=False)
    np.testing.assert_array_equal(fwd(x), fwd(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(fwd(x_ro), fwd(np.ascontiguousarray(x)))
    g = base[1::2, 1::3]
    s = _saved(name, np.ascontiguousarray(x))
    np.testing.assert_array_equal(bwd(g, s), bwd(np.ascontiguousarray(g), s))


@pytest.mark.parametrize("fn, kw", [(F.relu, {}), (F.leaky_relu, {"negative_slope": 0.1}),
                                    (F.elu, {"alpha": 0.5})])
def test_inplace_writes_into_the_input(fn, kw):
    x = _x((4, 5), F64)
    want = fn(x, **kw)
    out = fn(x, inplace=True, **kw)
    assert out is x
    np.testing.assert_array_equal(x, want)
    y = _x((4, 10), F64)
    view = y[:, ::2]
    want = fn(view, **kw)
    assert fn(view, inplace=True, **kw) is view
    np.testing.assert_array_equal(y[:, ::2], want)


def test_relu_hand_case():
    x = np.array([-2.0, -0.0, 0.0, 0.5, np.nan])
    y = F.relu(x)
    np.testing.assert_array_equal(y, [0, 0, 0, 0.5, np.nan])
    assert np.signbit(y[1])
    np.testing.assert_array_equal(F.relu_backward(np.full(5, 3.0), x), [0, 0, 0, 3, 0])


# --- softmax ----------------------------------------------------------------------------------

SOFTMAX_CASES = [pytest.param(s, d, id=f"{'x'.join(map(str, s))}-dim{d}")
                 for s, d in [((5, 11), 1), ((5, 11), 0), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), -1),
                              ((3, 130, 2), 1), ((7, 3, 67), 2), ((6,), 0), ((3, 0, 2), 1),
                              ((2, 70), -2)]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim", SOFTMAX_CASES)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_matches_torch_and_twin(shape, dim, log, dtype):
    torch = pytest.importorskip("torch")
    x = _x(shape, dtype, seed=2, scale=5)
    g = _x(shape, dtype, seed=3)
    fwd, bwd = (F.log_softmax, F.log_softmax_backward) if log else (F.softmax, F.softmax_backward)
    rfwd, rbwd = ((ref.log_softmax_ref, ref.log_softmax_backward_ref) if log
                  else (ref.softmax_ref, ref.softmax_backward_ref))
    tx = torch.tensor(x, requires_grad=True)
    ty = (torch.log_softmax if log else torch.softmax)(tx, dim)
    ty.backward(torch.tensor(g))
    y = fwd(x, dim)
    dx = bwd(g, y, dim)
    rtol = 1e-13 if dtype == F64 else 3e-6
    # float32 log-softmax: PyTorch rounds x - max in float32 (an error of eps * |x|)
    atol = (1e-15 if dtype == F64 else 1e-7) + 4 * np.finfo(dtype).eps * np.abs(x).max(initial=0)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol * 10, atol=atol * 10)
    np.testing.assert_allclose(y, rfwd(x, dim), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, rbwd(g, y, dim), rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_gradient_matches_finite_differences(log, numerical_gradient, relative_error):
    fwd, bwd = (F.log_softmax, F.log_softmax_backward) if log else (F.softmax, F.softmax_backward)
    x = _x((3, 4, 5), F64, seed=1)
    g = _x(x.shape, F64, seed=2)
    numeric = numerical_gradient(lambda a: np.sum(fwd(a, 1) * g), x)
    assert relative_error(bwd(g, fwd(x, 1), 1), numeric) < 1e-7


def test_softmax_special_values_and_huge_logits():
    x = np.array([[1e308, 0.0, -1e308], [np.nan, 1.0, 2.0], [-np.inf, 0.0, 0.0],
                  [-np.inf, -np.inf, -np.inf]])
    with np.errstate(all="ignore"):
        y = F.softmax(x, 1)
    np.testing.assert_array_equal(y[0], [1, 0, 0])
    assert np.isnan(y[1]).all() and np.isnan(y[3]).all()
    np.testing.assert_array_equal(y[2], [0, 0.5, 0.5])
    np.testing.assert_allclose(F.log_softmax(np.array([1000.0, 0.0]), 0), [0.0, -1000.0])


def test_softmax_implicit_dim_follows_torch_and_warns():
    for shape, dim in [((4,), 0), ((3, 4), 1), ((2, 3, 4), 0), ((2, 3, 4, 5), 1)]:
        x = _x(shape, F64)
        with pytest.warns(UserWarning, match="Implicit dimension"):
            y = F.softmax(x)
        np.testing.assert_array_equal(y, F.softmax(x, dim))
    with pytest.warns(UserWarning):
        assert F.softmax(np.array(3.0)) == 1.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_bitwise_identical_for_1_2_3_threads(log, dtype, set_threads):
    fwd, bwd = (F.log_softmax, F.log_softmax_backward) if log else (F.softmax, F.softmax_backward)
    for shape, dim in [((300, 37), 1), ((5, 7, 301), 1)]:
        x, g = _x(shape, dtype, 1), _x(shape, dtype, 2)
        out = []
        for n in (1, 2, 3):
            set_threads(n)
            y = fwd(x, dim)
            out.append((y.tobytes(), bwd(g, y, dim).tobytes()))
        assert out[0] == out[1] == out[2]


# --- layers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_layer_equals_functional_and_reuses_nothing_wrong(name, dtype):
    fwd, bwd, *_, make = ACTS[name]
    layer = make(dtype)
    x = _x((2, 3, 5, 4), dtype)
    g = _x(x.shape, dtype, seed=1)
    np.testing.assert_array_equal(layer.forward(x), fwd(x))
    np.testing.assert_array_equal(layer.backward(g), bwd(g, _saved(name, x)))
    seq = nn.Sequential(nn.Flatten(dtype=dtype), make(dtype), nn.Identity(dtype=dtype))
    np.testing.assert_array_equal(seq.forward(x), fwd(x).reshape(2, -1))
    np.testing.assert_array_equal(seq.backward(g.reshape(2, -1)), bwd(g, _saved(name, x)))
    assert layer.forward(np.zeros((0, 3), dtype)).shape == (0, 3)


@pytest.mark.parametrize("cls", [nn.Softmax, nn.LogSoftmax])
def test_softmax_layers(cls):
    torch = pytest.importorskip("torch")
    x = _x((3, 4, 5), F64)
    g = _x(x.shape, F64, 1)
    layer = cls(dim=2, dtype=F64)
    tx = torch.tensor(x, requires_grad=True)
    getattr(torch.nn, cls.__name__)(dim=2)(tx).backward(torch.tensor(g))
    y = layer.forward(x)
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert y.shape == x.shape
    assert repr(layer) == f"{cls.__name__}(dim=2)"


def test_layer_constructors_follow_torch_order_and_repr():
    assert repr(nn.ReLU()) == "ReLU()" and nn.ReLU(True).inplace
    assert repr(nn.LeakyReLU(0.2, True)) == "LeakyReLU(negative_slope=0.2, inplace=True)"
    assert repr(nn.ELU(0.5)) == "ELU(alpha=0.5)"
    assert repr(nn.GELU("tanh")) == "GELU(approximate='tanh')"
    assert fastcnn.Tanh is nn.Tanh and fastcnn.Identity is nn.Identity
    assert nn.LeakyReLU(0.3).init_args()["negative_slope"] == 0.3


def test_identity_and_flatten():
    torch = pytest.importorskip("torch")
    x = _x((2, 3, 4, 5), F32)
    ident = nn.Identity(54, unused=1)
    assert ident.forward(x) is not None and np.array_equal(ident.forward(x), x)
    np.testing.assert_array_equal(ident.backward(x), x)
    for start, end in [(1, -1), (0, -1), (2, 3), (1, 2), (-3, -2), (3, 3)]:
        layer = nn.Flatten(start, end)
        y = layer.forward(x)
        assert y.shape == tuple(torch.nn.Flatten(start, end)(torch.tensor(x)).shape)
        assert layer.backward(y).shape == x.shape
    assert repr(nn.Flatten()) == "Flatten()"
    assert repr(nn.Flatten(0, 2)) == "Flatten(start_dim=0, end_dim=2)"


def test_empty_batch_runs_through_flatten_and_linear():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 4),
                          nn.Tanh())
    x = np.zeros((0, 1, 5, 5), F32)
    y = model.forward(x)
    assert y.shape == (0, 4)
    dx = model.backward(np.zeros((0, 4), F32))
    assert dx.shape == x.shape
    lin = model[3]
    np.testing.assert_array_equal(lin.grads["weight"], 0)
    np.testing.assert_array_equal(lin.grads["bias"], 0)


# --- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("call, exc, match", [
    pytest.param(lambda: F.elu(np.ones(3), alpha=-1.0), ValueError, r"alpha must be >= 0, got -1",
                 id="elu-negative-alpha"),
    pytest.param(lambda: nn.ELU(float("nan")), ValueError, r"alpha must be finite",
                 id="elu-nan-alpha"),
    pytest.param(lambda: F.gelu(np.ones(3), approximate="fast"), ValueError,
                 r"approximate must be 'none' or 'tanh', got 'fast'", id="gelu-approximate"),
    pytest.param(lambda: nn.GELU("erf"), ValueError, r"got 'erf'", id="GELU-approximate"),
    pytest.param(lambda: F.leaky_relu(np.ones(3), "x"), TypeError, r"negative_slope must be",
                 id="slope-type"),
    pytest.param(lambda: F.relu(np.ones(3), inplace=1), TypeError, r"inplace must be a bool",
                 id="inplace-type"),
    pytest.param(lambda: F.relu(np.ones(3, dtype=np.int64)), TypeError, r"got dtype int64",
                 id="int-input"),
    pytest.param(lambda: F.tanh_backward(np.ones(3), np.ones(4)), ValueError,
                 r"grad_y has shape \(3,\), expected \(4,\)", id="grad-shape"),
    pytest.param(lambda: F.sigmoid_backward(np.ones(3, F32), np.ones(3)), TypeError,
                 r"share one dtype", id="grad-dtype"),
    pytest.param(lambda: F.softmax(np.ones((2, 3)), dim=2), ValueError,
                 r"dim 2 is out of range .* \[-2, 1\]", id="softmax-dim"),
    pytest.param(lambda: F.log_softmax(np.ones((2, 3)), dim=-3), ValueError,
                 r"dim -3 is out of range", id="log-softmax-dim"),
    pytest.param(lambda: nn.Softmax(dim=1.5), TypeError, r"dim must be an int", id="dim-type"),
    pytest.param(lambda: F.relu(np.ones(3), inplace="yes"), TypeError,
                 r"inplace must be a bool", id="inplace-str"),
    pytest.param(lambda: nn.Flatten(2, 1).forward(np.ones((2, 3, 4), F32)), ValueError,
                 r"start_dim=2 comes after end_dim=1", id="flatten-order"),
    pytest.param(lambda: nn.Flatten(4).forward(np.ones((2, 3, 4), F32)), ValueError,
                 r"start_dim=4 is out of range", id="flatten-range"),
])
def test_validation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_inplace_needs_a_writable_array():
    x = np.ones(3)
    x.setflags(write=False)
    with pytest.raises(ValueError, match="inplace=True needs a writable"):
        F.relu(x, inplace=True)


def test_no_warning_with_explicit_dim():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.softmax(np.ones((2, 3)), 1)
