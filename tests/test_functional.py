"""Tests of the public functional API (``fastcnn.functional``) and the thread controls.

Every kernel is held to: hand-computed tiny cases, agreement with both NumPy references over many
shapes, float64 central-difference gradient checks, float32 against float64, PyTorch (when
installed), bitwise-identical results for 1, 2 and 3 threads, and read-only / non-contiguous
inputs. Tolerances are explained in ``conftest.py``. Input validation is in ``test_validation.py``
and the maths identities of DESIGN.md section 4 in ``test_identities.py``.
"""

import numpy as np
import pytest

import fastcnn
from fastcnn import _reference as ref

F32, F64 = np.float32, np.float64
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]

CONV_REFS = {
    "loops": (ref.conv2d_loops, ref.conv2d_backward_input_loops,
              ref.conv2d_backward_weight_loops),
    "im2col": (ref.conv2d_im2col, ref.conv2d_backward_input_im2col,
               ref.conv2d_backward_weight_im2col),
}
POOL_REFS = {"loops": ref.max_pool2d_loops, "numpy": ref.max_pool2d_numpy}

# (N, C, H, W, F, KH, KW, stride, padding)
CONV_CASES = [
    pytest.param((1, 1, 5, 5, 1, 3, 3, 1, 0), id="N1-C1-F1-3x3"),
    pytest.param((2, 3, 7, 6, 4, 3, 2, 1, 0), id="k3x2-odd-HW"),
    pytest.param((2, 2, 5, 9, 3, 1, 4, 1, (1, 0)), id="k1x4-pad(1,0)"),
    pytest.param((2, 3, 9, 7, 5, 3, 3, 2, 1), id="s2-pad1-odd-HW-F5"),
    pytest.param((2, 3, 8, 8, 2, 3, 3, 2, 0), id="s2-remainder"),
    pytest.param((1, 2, 10, 11, 3, 3, 3, 3, 2), id="s3-pad2-remainder"),
    pytest.param((2, 2, 8, 7, 7, 3, 2, (2, 1), (1, 0)), id="s(2,1)-pad(1,0)-F7"),
    pytest.param((2, 2, 11, 6, 3, 4, 1, 3, 0), id="k4x1-s3-remainder"),
    pytest.param((1, 1, 6, 5, 1, 2, 3, 1, 1), id="N1-C1-F1-k2x3-pad1"),
    pytest.param((2, 5, 6, 7, 4, 1, 1, 1, 0), id="k1x1"),
    pytest.param((2, 3, 5, 5, 6, 1, 1, 2, 1), id="k1x1-s2-pad1"),
    pytest.param((2, 3, 4, 5, 2, 6, 7, 1, 1), id="kernel=padded-input"),
    pytest.param((3, 4, 5, 5, 9, 5, 5, 1, 0), id="kernel=input"),
    pytest.param((1, 2, 3, 3, 2, 2, 2, 1, 3), id="pad>kernel"),
    pytest.param((2, 2, 7, 37, 5, 3, 3, 1, 1), id="wide-rows-F5"),
    pytest.param((2, 1, 32, 32, 6, 5, 5, 1, 0), id="lenet-C1"),
    pytest.param((2, 6, 14, 14, 16, 5, 5, 1, 0), id="lenet-C3"),
    pytest.param((2, 16, 5, 5, 120, 5, 5, 1, 0), id="lenet-C5"),
    # Filters filling whole vectors (16 for AVX-512, 8 otherwise): the channel-vectorised paths
    # (forward row tiles for rows of 10+, weight gradient for 3- and 5-wide kernels).
    pytest.param((3, 2, 9, 13, 32, 3, 3, 1, 0), id="F32-3x3-vector-filters"),
    pytest.param((1, 3, 12, 23, 16, 5, 5, 1, 0), id="N1-F16-5x5-rows-of-19"),
    pytest.param((2, 2, 8, 14, 16, 3, 3, 1, 1), id="F16-3x3-pad1"),
]

# (shape, kernel_size, stride, padding)
POOL_CASES = [
    pytest.param(((2, 6, 28, 28), 2, None, 0), id="lenet-S2"),
    pytest.param(((2, 16, 10, 10), 2, None, 0), id="lenet-S4"),
    pytest.param(((1, 2, 7, 5), 2, None, 0), id="2x2-odd-HW"),
    pytest.param(((2, 3, 9, 9), 3, 2, 0), id="3x3-s2-overlap"),
    pytest.param(((2, 3, 8, 7), 3, 2, 1), id="3x3-s2-pad1"),
    pytest.param(((2, 2, 7, 6), (3, 2), (2, 1), (1, 0)), id="3x2-s(2,1)-pad(1,0)"),
    pytest.param(((1, 2, 4, 5), 1, 1, 0), id="1x1"),
    pytest.param(((1, 1, 5, 4), (5, 4), None, 0), id="N1-C1-window=input"),
    pytest.param(((2, 2, 8, 8), 2, 3, 0), id="2x2-s3-gaps"),
    pytest.param(((1, 3, 6, 6), 4, 2, 2), id="4x4-s2-pad2"),
]


# --- helpers -------------------------------------------------------------------------------------


def _conv_data(case, dtype, seed=0):
    """x, w, b, g (an output gradient) and the hyper-parameters of a conv case."""
    N, C, H, W, F, KH, KW, stride, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    g = rng.standard_normal(ref.conv2d_im2col(x, w, b, stride, padding).shape).astype(dtype)
    return x, w, b, g, stride, padding


def _conv_bounds(x, w, b, g, stride, padding):
    """Sum of |terms| of every conv output: the references on absolute values, in float64."""
    ax, aw, ab, ag = (np.abs(a).astype(F64) for a in (x, w, b, g))
    y = ref.conv2d_im2col(ax, aw, ab, stride, padding)
    dx = ref.conv2d_backward_input_im2col(ag, aw, x.shape[2:], stride, padding)
    dw, db = ref.conv2d_backward_weight_im2col(ax, ag, w.shape[2:], stride, padding)
    return y, dx, dw, db


def _pool_input(shape, dtype, seed=0):
    """Distinct values (a shuffled arange, scaled): no ties, so the argmax is unambiguous."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.25 - 3.0).astype(dtype)


# --- hand-computed tiny cases --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_hand_case(api, dtype):
    # w = [[1, 0], [0, -1]]: y = x[i, j] - x[i+1, j+1] + b = -5 + 1 for x = arange(16) in 4x4.
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    w = np.array([[[[1, 0], [0, -1]]]], dtype=dtype)
    y = api.conv2d(x, w, np.array([1], dtype=dtype))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.full((1, 1, 3, 3), -4, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_hand_case_stride2_pad1_two_channels(api, dtype):
    # Channel 0: arange(9) framed by zeros, 2x2 windows at stride 2 sum to 0, 1+2, 3+6, 4+5+7+8.
    # Channel 1 is all ones with weight -1: minus the number of real elements in each window.
    x = np.stack([np.arange(9).reshape(3, 3), np.ones((3, 3))])[None].astype(dtype)
    w = np.stack([np.ones((2, 2)), -np.ones((2, 2))])[None].astype(dtype)
    y = api.conv2d(x, w, stride=2, padding=1)
    np.testing.assert_array_equal(y[0, 0], [[0 - 1, 3 - 2], [9 - 2, 24 - 4]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_backward_input_hand_case(api, dtype):
    # Full correlation of ones(2x2) with rot180(w): each dx[u, v] sums the taps covering it.
    w = np.array([[[[1, 2], [3, 4]]]], dtype=dtype)
    dx = api.conv2d_backward_input(np.ones((1, 1, 2, 2), dtype=dtype), w, (3, 3))
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx[0, 0], [[1, 3, 2], [4, 10, 6], [3, 7, 4]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_backward_input_hand_case_stride2_unreached_border(api, dtype):
    # Stride 2 spreads each g into its own 2x2 block; row 4 and column 4 were never read: zero.
    g = np.array([[[[1, 2], [3, 4]]]], dtype=dtype)
    dx = api.conv2d_backward_input(g, np.ones((1, 1, 2, 2), dtype=dtype), (5, 5), stride=2)
    expected = np.zeros((5, 5))
    expected[:4, :4] = np.kron([[1, 2], [3, 4]], np.ones((2, 2)))
    np.testing.assert_array_equal(dx[0, 0], expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_backward_weight_hand_case(api, dtype):
    # dw[p, q] = sum of the 2x2 block of arange(9) at (p, q); db = number of output positions.
    x = np.arange(9, dtype=dtype).reshape(1, 1, 3, 3)
    dw, db = api.conv2d_backward_weight(x, np.ones((1, 1, 2, 2), dtype=dtype), 2)
    assert dw.dtype == db.dtype == dtype
    np.testing.assert_array_equal(dw[0, 0], [[8, 12], [20, 24]])
    np.testing.assert_array_equal(db, [4])


POOL_HAND_X = [[1, 5, 2, 0], [3, 4, 8, 6], [0, 1, 2, 3], [9, 1, 1, 9]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_hand_case(api, dtype):
    y, argmax = api.max_pool2d(np.array(POOL_HAND_X, dtype=dtype).reshape(1, 1, 4, 4), 2)
    assert y.dtype == dtype and argmax.dtype == np.int64
    np.testing.assert_array_equal(y[0, 0], [[5, 8], [9, 9]])
    np.testing.assert_array_equal(argmax[0, 0], [[1, 6], [12, 15]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_backward_hand_case(api, dtype):
    g = np.array([[[[1, 2], [3, 4]]]], dtype=dtype)
    dx = api.max_pool2d_backward(g, np.array([[[[1, 6], [12, 15]]]], dtype=np.int64), (4, 4))
    expected = np.zeros(16)
    expected[[1, 6, 12, 15]] = [1, 2, 3, 4]
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx.reshape(-1), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_hand_case(api, dtype):
    x = np.array([[-2, -0.5, 0, 0.5, 2]], dtype=dtype)
    y = api.relu(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, [[0, 0, 0, 0.5, 2]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_hand_case(api, dtype):
    x = np.array([[-2, -0.5, 0, 0.5, 2]], dtype=dtype)
    dx = api.relu_backward(np.array([[1, 2, 3, 4, 5]], dtype=dtype), x)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, [[0, 0, 0, 4, 5]])


# --- agreement with both references --------------------------------------------------------------


@pytest.mark.parametrize("version", ["loops", "im2col"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_reference(api, case, dtype, version, assert_close):
    x, w, b, g, stride, padding = _conv_data(case, dtype)
    y = api.conv2d(x, w, b, stride=stride, padding=padding)
    assert y.dtype == dtype
    assert_close(y, CONV_REFS[version][0](x, w, b, stride, padding),
                 _conv_bounds(x, w, b, g, stride, padding)[0])


@pytest.mark.parametrize("version", ["loops", "im2col"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_input_matches_reference(api, case, dtype, version, assert_close):
    x, w, b, g, stride, padding = _conv_data(case, dtype)
    dx = api.conv2d_backward_input(g, w, x.shape[2:], stride=stride, padding=padding)
    assert dx.dtype == dtype
    assert_close(dx, CONV_REFS[version][1](g, w, x.shape[2:], stride, padding),
                 _conv_bounds(x, w, b, g, stride, padding)[1])


@pytest.mark.parametrize("version", ["loops", "im2col"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_weight_matches_reference(api, case, dtype, version, assert_close):
    x, w, b, g, stride, padding = _conv_data(case, dtype)
    dw, db = api.conv2d_backward_weight(x, g, w.shape[2:], stride=stride, padding=padding)
    assert dw.dtype == db.dtype == dtype
    ref_dw, ref_db = CONV_REFS[version][2](x, g, w.shape[2:], stride, padding)
    _, _, bound_w, bound_b = _conv_bounds(x, w, b, g, stride, padding)
    assert_close(dw, ref_dw, bound_w)
    assert_close(db, ref_db, bound_b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_without_bias_matches_reference(api, case, dtype, assert_close):
    x, w, b, g, stride, padding = _conv_data(case, dtype)
    assert_close(api.conv2d(x, w, stride=stride, padding=padding),
                 ref.conv2d_im2col(x, w, None, stride, padding),
                 _conv_bounds(x, w, 0 * b, g, stride, padding)[0])


@pytest.mark.parametrize("version", ["loops", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_matches_reference(api, case, dtype, version):
    shape, kernel, stride, padding = case
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    y, argmax = api.max_pool2d(x, kernel, stride, padding)
    ref_y, ref_argmax = POOL_REFS[version](x, kernel, stride, padding)
    assert y.dtype == dtype and argmax.dtype == np.int64 and argmax.shape == y.shape
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(argmax, ref_argmax)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_backward_matches_reference(api, case, dtype, assert_close):
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(dtype)
    _, argmax = ref.max_pool2d_numpy(x, kernel, stride, padding)
    g = rng.standard_normal(argmax.shape).astype(dtype)
    dx = api.max_pool2d_backward(g, argmax, shape[2:])
    assert dx.dtype == dtype
    assert_close(dx, ref.max_pool2d_backward_ref(g, argmax, shape[2:]),
                 ref.max_pool2d_backward_ref(np.abs(g).astype(F64), argmax, shape[2:]))


def test_max_pool2d_default_stride_is_kernel_size(api):
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 8))
    y, argmax = api.max_pool2d(x, (3, 2))
    y2, argmax2 = api.max_pool2d(x, (3, 2), stride=(3, 2))
    assert y.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(argmax, argmax2)


RELU_SHAPES = [pytest.param((7,), id="1-D"), pytest.param((3, 50), id="2-D"),
               pytest.param((2, 3, 9, 11), id="4-D"), pytest.param((1, 1, 1, 1), id="single")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", RELU_SHAPES)
def test_relu_matches_reference(api, shape, dtype):
    x = np.random.default_rng(4).standard_normal(shape).astype(dtype)
    y = api.relu(x)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_array_equal(y, ref.relu_ref(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", RELU_SHAPES)
def test_relu_backward_matches_reference(api, shape, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    dx = api.relu_backward(g, x)
    assert dx.dtype == dtype and dx.shape == shape
    np.testing.assert_array_equal(dx, ref.relu_backward_ref(g, x))


# --- float64 central-difference gradient checks --------------------------------------------------

GRAD_CONV_CASES = [
    pytest.param((2, 2, 6, 5, 3, 3, 2, (2, 1), (1, 0)), id="k3x2-s(2,1)-pad(1,0)"),
    pytest.param((1, 3, 6, 6, 2, 3, 3, 2, 1), id="k3-s2-pad1-remainder"),
    pytest.param((2, 2, 5, 9, 2, 1, 4, 3, 0), id="k1x4-s3-remainder"),
    pytest.param((2, 3, 5, 5, 4, 5, 5, 1, 0), id="kernel=input"),
    pytest.param((1, 2, 7, 6, 5, 3, 3, 1, 2), id="s1-pad2-F5"),
]


@pytest.mark.parametrize("case", GRAD_CONV_CASES)
def test_conv2d_input_gradient_matches_finite_differences(api, case, numerical_gradient,
                                                          relative_error):
    x, w, b, g, stride, padding = _conv_data(case, F64, seed=6)
    analytic = api.conv2d_backward_input(g, w, x.shape[2:], stride, padding)
    numeric = numerical_gradient(lambda a: np.sum(api.conv2d(a, w, b, stride, padding) * g), x)
    assert relative_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("case", GRAD_CONV_CASES)
def test_conv2d_weight_gradient_matches_finite_differences(api, case, numerical_gradient,
                                                           relative_error):
    x, w, b, g, stride, padding = _conv_data(case, F64, seed=7)
    analytic, _ = api.conv2d_backward_weight(x, g, w.shape[2:], stride, padding)
    numeric = numerical_gradient(lambda a: np.sum(api.conv2d(x, a, b, stride, padding) * g), w)
    assert relative_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("case", GRAD_CONV_CASES)
def test_conv2d_bias_gradient_matches_finite_differences(api, case, numerical_gradient,
                                                         relative_error):
    x, w, b, g, stride, padding = _conv_data(case, F64, seed=8)
    _, analytic = api.conv2d_backward_weight(x, g, w.shape[2:], stride, padding)
    numeric = numerical_gradient(lambda a: np.sum(api.conv2d(x, w, a, stride, padding) * g), b)
    assert relative_error(analytic, numeric) < 1e-6


GRAD_POOL_CASES = [
    pytest.param(((2, 2, 6, 6), 2, None, 0), id="2x2"),
    pytest.param(((1, 2, 7, 7), 3, 2, 1), id="3x3-s2-pad1-overlap"),
    pytest.param(((2, 1, 7, 6), (3, 2), (2, 1), (1, 0)), id="3x2-s(2,1)-pad(1,0)"),
]


@pytest.mark.parametrize("case", GRAD_POOL_CASES)
def test_max_pool2d_gradient_matches_finite_differences(api, case, numerical_gradient,
                                                        relative_error):
    shape, kernel, stride, padding = case
    x = _pool_input(shape, F64, seed=9)
    y, argmax = api.max_pool2d(x, kernel, stride, padding)
    g = np.random.default_rng(9).standard_normal(y.shape)
    analytic = api.max_pool2d_backward(g, argmax, shape[2:])
    numeric = numerical_gradient(lambda a: np.sum(api.max_pool2d(a, kernel, stride, padding)[0]
                                                  * g), x)
    assert relative_error(analytic, numeric) < 1e-6


def test_relu_gradient_matches_finite_differences(api, numerical_gradient, relative_error):
    rng = np.random.default_rng(10)
    x = rng.uniform(0.1, 1.0, (2, 3, 4, 5)) * rng.choice([-1.0, 1.0], (2, 3, 4, 5))  # |x| >= 0.1
    g = rng.standard_normal(x.shape)
    analytic = api.relu_backward(g, x)
    numeric = numerical_gradient(lambda a: np.sum(api.relu(a) * g), x)
    assert relative_error(analytic, numeric) < 1e-6


# --- float32 against float64 ---------------------------------------------------------------------
# The float32 inputs are exactly representable in float64, so the float64 result is the exact
# answer to within 1e-12 and the float32 result must be within TOL[float32] * bound of it.


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_float32_close_to_float64(api, case, assert_close):
    x, w, b, g, stride, padding = _conv_data(case, F32, seed=11)
    y32 = api.conv2d(x, w, b, stride, padding)
    y64 = api.conv2d(x.astype(F64), w.astype(F64), b.astype(F64), stride, padding)
    assert_close(y32, y64, _conv_bounds(x, w, b, g, stride, padding)[0], dtype=F32)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_input_float32_close_to_float64(api, case, assert_close):
    x, w, b, g, stride, padding = _conv_data(case, F32, seed=12)
    size = x.shape[2:]
    dx32 = api.conv2d_backward_input(g, w, size, stride, padding)
    dx64 = api.conv2d_backward_input(g.astype(F64), w.astype(F64), size, stride, padding)
    assert_close(dx32, dx64, _conv_bounds(x, w, b, g, stride, padding)[1], dtype=F32)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_weight_float32_close_to_float64(api, case, assert_close):
    x, w, b, g, stride, padding = _conv_data(case, F32, seed=13)
    k = w.shape[2:]
    dw32, db32 = api.conv2d_backward_weight(x, g, k, stride, padding)
    dw64, db64 = api.conv2d_backward_weight(x.astype(F64), g.astype(F64), k, stride, padding)
    _, _, bound_w, bound_b = _conv_bounds(x, w, b, g, stride, padding)
    assert_close(dw32, dw64, bound_w, dtype=F32)
    assert_close(db32, db64, bound_b, dtype=F32)


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_float32_equals_float64(api, case):
    # Max and argmax involve no rounding: float32 must match float64 exactly.
    shape, kernel, stride, padding = case
    x = np.random.default_rng(14).standard_normal(shape).astype(F32)
    y32, a32 = api.max_pool2d(x, kernel, stride, padding)
    y64, a64 = api.max_pool2d(x.astype(F64), kernel, stride, padding)
    np.testing.assert_array_equal(y32, y64.astype(F32))
    np.testing.assert_array_equal(a32, a64)


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_backward_float32_close_to_float64(api, case, assert_close):
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(25)
    x = rng.integers(0, 3, shape).astype(F32)  # ties: overlapping windows share maxima
    _, argmax = api.max_pool2d(x, kernel, stride, padding)
    g = rng.standard_normal(argmax.shape).astype(F32)
    dx32 = api.max_pool2d_backward(g, argmax, shape[2:])
    dx64 = api.max_pool2d_backward(g.astype(F64), argmax, shape[2:])
    assert_close(dx32, dx64, ref.max_pool2d_backward_ref(np.abs(g).astype(F64), argmax,
                                                         shape[2:]), dtype=F32)


@pytest.mark.parametrize("shape", RELU_SHAPES)
def test_relu_float32_equals_float64(api, shape):
    # max(x, 0) and the select g * (x > 0) involve no rounding: float32 must match exactly.
    rng = np.random.default_rng(26)
    x = rng.standard_normal(shape).astype(F32)
    g = rng.standard_normal(shape).astype(F32)
    np.testing.assert_array_equal(api.relu(x), api.relu(x.astype(F64)).astype(F32))
    np.testing.assert_array_equal(api.relu_backward(g, x),
                                  api.relu_backward(g.astype(F64), x.astype(F64)).astype(F32))


# --- max-pool semantics --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [pytest.param((2, None, 0), id="2x2"),
                                  pytest.param((3, 2, 1), id="3x3-s2-pad1"),
                                  pytest.param(((2, 3), (1, 2), (1, 1)), id="2x3-s(1,2)-pad1")])
def test_max_pool2d_ties_go_to_first_element(api, case, dtype):
    kernel, stride, padding = case
    x = np.zeros((1, 2, 5, 6), dtype=dtype)
    _, argmax = api.max_pool2d(x, kernel, stride, padding)
    # First element in row-major order = the window's top-left real element.
    kh, kw = (kernel, kernel) if np.isscalar(kernel) else kernel
    sh, sw = (kh, kw) if stride is None else ((stride, stride) if np.isscalar(stride) else stride)
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    OH, OW = argmax.shape[2:]
    u = np.maximum(np.arange(OH) * sh - ph, 0)
    v = np.maximum(np.arange(OW) * sw - pw, 0)
    expected = u[:, None] * 6 + v[None, :]
    np.testing.assert_array_equal(argmax[0, 0], expected)
    np.testing.assert_array_equal(argmax[0, 1], expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_many_ties_match_loop_reference(api, dtype):
    x = np.random.default_rng(15).integers(-2, 2, (2, 3, 9, 9)).astype(dtype)
    y, argmax = api.max_pool2d(x, 3, 2, 1)
    ref_y, ref_argmax = ref.max_pool2d_loops(x, 3, 2, 1)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(argmax, ref_argmax)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_hand_case_ties(api, dtype):
    x = np.array([[3, 3, 1, 7], [3, 0, 7, 7]], dtype=dtype).reshape(1, 1, 2, 4)
    _, argmax = api.max_pool2d(x, 2)
    np.testing.assert_array_equal(argmax[0, 0], [[0, 3]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [pytest.param((2, None, 0), id="2x2"),
                                  pytest.param((3, 2, 1), id="3x3-s2-pad1")])
def test_max_pool2d_nan_propagates(api, case, dtype):
    kernel, stride, padding = case
    rng = np.random.default_rng(16)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    x[rng.random(x.shape) < 0.1] = np.nan
    y, argmax = api.max_pool2d(x, kernel, stride, padding)
    ref_y, ref_argmax = ref.max_pool2d_loops(x, kernel, stride, padding)
    # Output NaN exactly where the window holds a NaN; argmax points at the window's first NaN.
    window_has_nan = ref.max_pool2d_numpy(np.isnan(x).astype(dtype), kernel, stride, padding)[0]
    np.testing.assert_array_equal(np.isnan(y), window_has_nan > 0)
    assert np.isnan(y).any() and not np.isnan(y).all()
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(argmax, ref_argmax)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_hand_case_nan(api, dtype):
    # Window 0 holds two NaNs: the first (flat index 1) wins. Window 1 has none.
    x = np.array([[1, np.nan, 7, 2], [np.nan, 3, 1, 0]], dtype=dtype).reshape(1, 1, 2, 4)
    y, argmax = api.max_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 7
    np.testing.assert_array_equal(argmax[0, 0], [[1, 2]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_backward_overlapping_windows_add_up(api, dtype):
    # 5x5 with its maximum in the centre: all four 3x3/2 windows pick it, so dx there = sum(g).
    x = np.zeros((1, 1, 5, 5), dtype=dtype)
    x[0, 0, 2, 2] = 1
    _, argmax = api.max_pool2d(x, 3, 2)
    np.testing.assert_array_equal(argmax, np.full((1, 1, 2, 2), 12))
    dx = api.max_pool2d_backward(np.array([[[[1, 2], [3, 4]]]], dtype=dtype), argmax, (5, 5))
    expected = np.zeros((1, 1, 5, 5))
    expected[0, 0, 2, 2] = 10
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_backward_overlapping_windows_match_reference(api, dtype, assert_close):
    # Small integer values make many windows share their maximum.
    rng = np.random.default_rng(17)
    x = rng.integers(0, 3, (2, 3, 11, 11)).astype(dtype)
    _, argmax = api.max_pool2d(x, 3, 2)
    g = rng.standard_normal(argmax.shape).astype(dtype)
    dx = api.max_pool2d_backward(g, argmax, (11, 11))
    assert np.bincount(argmax[0, 0].ravel()).max() > 1  # the case really overlaps
    assert_close(dx, ref.max_pool2d_backward_ref(g, argmax, (11, 11)),
                 ref.max_pool2d_backward_ref(np.abs(g).astype(F64), argmax, (11, 11)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_padding_is_never_the_max(api, dtype):
    # All inputs negative: a zero (or any finite) padding value would win; -inf never does.
    x = -1 - np.random.default_rng(18).random((2, 2, 6, 5)).astype(dtype)
    y, argmax = api.max_pool2d(x, 3, 2, 1)
    assert np.all(y < 0) and np.all(np.isfinite(y))
    assert argmax.min() >= 0 and argmax.max() < 6 * 5
    np.testing.assert_array_equal(np.take_along_axis(x.reshape(2, 2, -1),
                                                     argmax.reshape(2, 2, -1), axis=2),
                                  y.reshape(2, 2, -1))
    np.testing.assert_array_equal(argmax, ref.max_pool2d_loops(x, 3, 2, 1)[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_hand_case_padding(api, dtype):
    # 3x3 input of -1..-9, kernel 2, stride 2, padding 1: windows hold 1, 2, 2 and 4 elements.
    x = -np.arange(1, 10, dtype=dtype).reshape(1, 1, 3, 3)
    y, argmax = api.max_pool2d(x, 2, 2, 1)
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -5]])
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1], [3, 4]])


# --- PyTorch -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_and_backward_match_torch(api, case, dtype, assert_close):
    torch = pytest.importorskip("torch")
    x, w, b, g, stride, padding = _conv_data(case, dtype, seed=19)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding)
    ty.backward(torch.tensor(g))
    bound_y, bound_dx, bound_dw, bound_db = _conv_bounds(x, w, b, g, stride, padding)
    assert_close(api.conv2d(x, w, b, stride, padding), ty.detach().numpy(), bound_y)
    assert_close(api.conv2d_backward_input(g, w, x.shape[2:], stride, padding),
                 tx.grad.numpy(), bound_dx)
    dw, db = api.conv2d_backward_weight(x, g, w.shape[2:], stride, padding)
    assert_close(dw, tw.grad.numpy(), bound_dw)
    assert_close(db, tb.grad.numpy(), bound_db)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_forward_and_backward_match_torch(api, case, dtype, assert_close):
    torch = pytest.importorskip("torch")
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(20)
    x = rng.standard_normal(shape).astype(dtype)  # no ties: PyTorch breaks them differently
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, kernel, stride, padding, return_indices=True)
    g = rng.standard_normal(ty.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    y, argmax = api.max_pool2d(x, kernel, stride, padding)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(argmax, tidx.numpy())
    assert_close(api.max_pool2d_backward(g, argmax, shape[2:]), tx.grad.numpy(),
                 ref.max_pool2d_backward_ref(np.abs(g).astype(F64), argmax, shape[2:]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_forward_and_backward_match_torch(api, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.relu(tx)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(api.relu(x), ty.detach().numpy())
    np.testing.assert_array_equal(api.relu_backward(g, x), tx.grad.numpy())


# --- kernels as (inputs, call) for the thread and layout tests -----------------------------------


def _conv_kernel_inputs(kernel, dtype, case):
    x, w, b, g, stride, padding = _conv_data(case, dtype, seed=22)
    if kernel == "conv2d":
        return (x, w, b), lambda api, x, w, b: api.conv2d(x, w, b, stride, padding)
    if kernel == "conv2d_backward_input":
        size = x.shape[2:]
        return (g, w), lambda api, g, w: api.conv2d_backward_input(g, w, size, stride, padding)
    k = w.shape[2:]
    return (x, g), lambda api, x, g: api.conv2d_backward_weight(x, g, k, stride, padding)


def _pool_kernel_inputs(kernel, dtype, case):
    shape, size, stride, padding = case
    rng = np.random.default_rng(23)
    x = rng.integers(0, 4, shape).astype(dtype)  # ties and overlaps
    if kernel == "max_pool2d":
        return (x,), lambda api, x: api.max_pool2d(x, size, stride, padding)
    _, argmax = ref.max_pool2d_numpy(x, size, stride, padding)
    g = rng.standard_normal(argmax.shape).astype(dtype)
    return (g, argmax), lambda api, g, a: api.max_pool2d_backward(g, a, shape[2:])


def _relu_kernel_inputs(kernel, dtype, shape):
    rng = np.random.default_rng(24)
    x = rng.standard_normal(shape).astype(dtype)
    if kernel == "relu":
        return (x,), lambda api, x: api.relu(x)
    g = rng.standard_normal(shape).astype(dtype)
    return (g, x), lambda api, g, x: api.relu_backward(g, x)


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


CONV_KERNELS = ["conv2d", "conv2d_backward_input", "conv2d_backward_weight"]
POOL_KERNELS = ["max_pool2d", "max_pool2d_backward"]
RELU_KERNELS = ["relu", "relu_backward"]

# Big enough that 2 and 3 threads really split the work (N=8, F=16), with odd splits too.
THREAD_CONV_CASES = [
    pytest.param((8, 6, 14, 14, 16, 5, 5, 1, 0), id="N8-lenet-C3"),
    pytest.param((8, 3, 12, 23, 32, 3, 3, 1, 0), id="N8-F32-3x3-vector-filters"),
    pytest.param((8, 1, 32, 32, 6, 5, 5, 1, 0), id="N8-lenet-C1"),
    pytest.param((7, 3, 17, 15, 16, 3, 3, 2, 1), id="N7-F16-s2-pad1"),
    pytest.param((5, 4, 13, 12, 16, 3, 2, (2, 1), (1, 0)), id="N5-F16-s(2,1)-pad(1,0)"),
    pytest.param((8, 16, 5, 5, 120, 5, 5, 1, 0), id="N8-lenet-C5"),
    pytest.param((64, 16, 5, 5, 120, 5, 5, 1, 0), id="N64-lenet-C5"),
    pytest.param((128, 16, 5, 5, 120, 5, 5, 1, 0), id="N128-lenet-C5"),
]
THREAD_POOL_CASES = [
    pytest.param(((8, 16, 28, 28), 2, None, 0), id="N8-C16-2x2"),
    pytest.param(((7, 5, 15, 13), 3, 2, 1), id="N7-C5-3x3-s2-pad1"),
]
THREAD_RELU_SHAPES = [pytest.param((8, 16, 28, 28), id="N8-C16-28x28"),
                      pytest.param((7, 5, 13, 11), id="N7-C5-13x11")]


def _assert_bitwise_equal_across_threads(api, set_threads, inputs, call):
    results = {}
    for n in (1, 2, 3):
        set_threads(n)
        assert fastcnn.get_num_threads() == n
        results[n] = _outputs(call(api, *inputs))
    for n in (2, 3):
        for k, (one, many) in enumerate(zip(results[1], results[n])):
            assert one.dtype == many.dtype and one.shape == many.shape
            assert np.array_equal(one, many, equal_nan=True), (
                f"output {k} with {n} threads differs from 1 thread by up to "
                f"{np.nanmax(np.abs(one.astype(F64) - many.astype(F64))):.3g}")
            assert one.tobytes() == many.tobytes(), f"output {k}: bytes differ with {n} threads"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", THREAD_CONV_CASES)
@pytest.mark.parametrize("kernel", CONV_KERNELS)
def test_conv_kernels_bitwise_identical_for_1_2_3_threads(api, set_threads, kernel, case, dtype):
    _assert_bitwise_equal_across_threads(api, set_threads,
                                         *_conv_kernel_inputs(kernel, dtype, case))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", THREAD_POOL_CASES)
@pytest.mark.parametrize("kernel", POOL_KERNELS)
def test_pool_kernels_bitwise_identical_for_1_2_3_threads(api, set_threads, kernel, case, dtype):
    _assert_bitwise_equal_across_threads(api, set_threads,
                                         *_pool_kernel_inputs(kernel, dtype, case))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", THREAD_RELU_SHAPES)
@pytest.mark.parametrize("kernel", RELU_KERNELS)
def test_relu_kernels_bitwise_identical_for_1_2_3_threads(api, set_threads, kernel, shape,
                                                          dtype):
    _assert_bitwise_equal_across_threads(api, set_threads,
                                         *_relu_kernel_inputs(kernel, dtype, shape))


def test_set_num_threads_round_trips(set_threads):
    set_threads(3)
    assert fastcnn.get_num_threads() == 3
    set_threads(1)
    assert fastcnn.get_num_threads() == 1


# --- read-only and non-contiguous inputs ---------------------------------------------------------


def _relayout(a, layout):
    """The same values as ``a`` in another memory layout (never C-contiguous except read-only)."""
    if layout == "readonly":
        a = a.copy()
        a.setflags(write=False)
        return a
    if layout == "sliced":  # every other element of a twice-as-wide buffer
        buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        buf[..., ::2] = a
        return buf[..., ::2]
    if layout == "transposed" and a.ndim >= 2:  # last two axes swapped in memory
        return np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2)
    if layout == "transposed":  # 1-D: a reversed view of a reversed copy (negative stride)
        return a[::-1].copy()[::-1]
    if layout == "fortran":
        return np.asfortranarray(a)
    raise ValueError(layout)


LAYOUTS = ["readonly", "sliced", "transposed", "fortran"]
LAYOUT_CONV_CASE = (2, 3, 7, 6, 5, 3, 2, (2, 1), (1, 0))
LAYOUT_POOL_CASE = ((2, 3, 7, 6), 3, 2, 1)


def _layout_inputs(kernel, dtype):
    if kernel in CONV_KERNELS:
        return _conv_kernel_inputs(kernel, dtype, LAYOUT_CONV_CASE)
    if kernel in POOL_KERNELS:
        return _pool_kernel_inputs(kernel, dtype, LAYOUT_POOL_CASE)
    return _relu_kernel_inputs(kernel, dtype, (2, 3, 5, 4))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", CONV_KERNELS + POOL_KERNELS + RELU_KERNELS)
def test_any_input_layout_gives_the_contiguous_result(api, kernel, layout, dtype):
    inputs, call = _layout_inputs(kernel, dtype)
    expected = _outputs(call(api, *inputs))
    moved = tuple(_relayout(a, layout) for a in inputs)
    if layout != "readonly":
        assert not any(a.flags.c_contiguous for a in moved if a.ndim >= 2 and a.size > 1)
    copies = tuple(a.copy() for a in moved)
    got = _outputs(call(api, *moved))
    for e, r in zip(expected, got):
        assert r.dtype == e.dtype
        assert np.array_equal(e, r) and e.tobytes() == r.tobytes()
    for before, after in zip(copies, moved):  # inputs are left untouched
        np.testing.assert_array_equal(before, after)


# --- empty batch ---------------------------------------------------------------------------------
# The API accepts N = 0 (only C, H, W must be non-empty): every kernel must return empty outputs
# of the right shape, and zero weight and bias gradients.

EMPTY_BATCH_CASES = [
    pytest.param((0, 3, 6, 6, 4, 3, 3, 1, 0), id="k3"),
    pytest.param((0, 3, 7, 6, 4, 3, 2, (2, 1), (1, 0)), id="k3x2-s(2,1)-pad(1,0)"),
    pytest.param((0, 16, 5, 5, 120, 5, 5, 1, 0), id="kernel=input-lenet-C5"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", EMPTY_BATCH_CASES)
def test_conv_kernels_accept_an_empty_batch(api, case, dtype):
    x, w, b, g, stride, padding = _conv_data(case, dtype)
    y = api.conv2d(x, w, b, stride, padding)
    assert y.shape == g.shape and y.dtype == dtype
    dx = api.conv2d_backward_input(g, w, x.shape[2:], stride, padding)
    assert dx.shape == x.shape and dx.dtype == dtype
    dw, db = api.conv2d_backward_weight(x, g, w.shape[2:], stride, padding)
    np.testing.assert_array_equal(dw, np.zeros(w.shape))
    np.testing.assert_array_equal(db, np.zeros(b.shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_and_relu_accept_an_empty_batch(api, dtype):
    x = np.zeros((0, 3, 6, 6), dtype=dtype)
    y, argmax = api.max_pool2d(x, 2)
    assert y.shape == argmax.shape == (0, 3, 3, 3)
    assert api.max_pool2d_backward(y, argmax, (6, 6)).shape == x.shape
    assert api.relu(x).shape == api.relu_backward(x, x).shape == x.shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    pytest.param(((2, 1, 12, 12), 5, 6), id="C1-like-wide-rows"),
    pytest.param(((2, 3, 9, 9), 3, 5), id="3x3-F5-wide-rows"),
    pytest.param(((2, 3, 9, 13), 3, 16), id="3x3-F16-vector-filters"),
])
def test_weight_gradient_of_inf_input_is_non_finite_only_where_it_is_seen(api, case, dtype):
    """A pixel in the last column is seen only by the last kernel column: the wide-row path,
    which also multiplies the unused columns by zero, must not leak it into other taps."""
    shape, k, f = case
    rng = np.random.default_rng(31)
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, 2, shape[3] - 1] = np.inf
    g = rng.standard_normal((shape[0], f, shape[2] - k + 1, shape[3] - k + 1)).astype(dtype)
    dw, _ = api.conv2d_backward_weight(x, g, k)
    dw_ref, _ = ref.conv2d_backward_weight_loops(x, g, k)
    np.testing.assert_array_equal(~np.isfinite(dw), ~np.isfinite(dw_ref))
    assert (~np.isfinite(dw)).any() and np.isfinite(dw[:, :, :, : k - 1]).all()
