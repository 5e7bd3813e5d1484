"""Input validation of the public functional API, and NaN propagation.

Every bad input must raise ``ValueError`` (bad value or shape) or ``TypeError`` (bad type or
dtype) with a message that names the offending argument and value. Each case is one line below:
``(call, exception, regex)``; the regex is matched against the message.
"""

import numpy as np
import pytest

from fastcnn import _reference as ref

F32, F64 = np.float32, np.float64

# A valid conv: x (2, 3, 6, 6) * w (4, 3, 3, 3) -> y (2, 4, 4, 4); a valid 2x2 pool: 6x6 -> 3x3.
X = np.zeros((2, 3, 6, 6))
WT = np.zeros((4, 3, 3, 3))
B = np.zeros(4)
G = np.zeros((2, 4, 4, 4))
GP = np.zeros((2, 3, 3, 3))
AP = np.zeros((2, 3, 3, 3), dtype=np.int64)


def _argmax_with(value):
    a = AP.copy()
    a[1, 2, 0, 1] = value
    return a


BAD_CALLS = [
    # --- wrong ndim
    pytest.param(lambda f: f.conv2d(X[0], WT), ValueError, r"x must be 4-D.*\(3, 6, 6\)",
                 id="conv2d-x-3d"),
    pytest.param(lambda f: f.conv2d(X[None], WT), ValueError, r"x must be 4-D.*\(1, 2, 3, 6, 6\)",
                 id="conv2d-x-5d"),
    pytest.param(lambda f: f.conv2d(X, WT[0]), ValueError, r"weight must be 4-D.*\(3, 3, 3\)",
                 id="conv2d-weight-3d"),
    pytest.param(lambda f: f.conv2d(X, WT, B[:, None]), ValueError, r"bias must be 1-D.*\(4, 1\)",
                 id="conv2d-bias-2d"),
    pytest.param(lambda f: f.conv2d_backward_input(G[0], WT, (6, 6)), ValueError,
                 r"grad_y must be 4-D.*\(4, 4, 4\)", id="backward_input-grad_y-3d"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT[0, 0], (6, 6)), ValueError,
                 r"weight must be 4-D.*\(3, 3\)", id="backward_input-weight-2d"),
    pytest.param(lambda f: f.conv2d_backward_weight(X[0], G, 3), ValueError,
                 r"x must be 4-D.*\(3, 6, 6\)", id="backward_weight-x-3d"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, G[0], 3), ValueError,
                 r"grad_y must be 4-D.*\(4, 4, 4\)", id="backward_weight-grad_y-3d"),
    pytest.param(lambda f: f.max_pool2d(X[0], 2), ValueError, r"x must be 4-D.*\(3, 6, 6\)",
                 id="max_pool2d-x-3d"),
    pytest.param(lambda f: f.max_pool2d_backward(GP[0], AP[0], (6, 6)), ValueError,
                 r"grad_y must be 4-D.*\(3, 3, 3\)", id="max_pool2d_backward-grad_y-3d"),
    # --- channels
    pytest.param(lambda f: f.conv2d(X, np.zeros((4, 2, 3, 3))), ValueError,
                 r"2 input channels.*x has 3", id="conv2d-channel-mismatch"),
    # --- mixed dtypes
    pytest.param(lambda f: f.conv2d(X.astype(F32), WT), TypeError,
                 r"weight has dtype float64.*float32", id="conv2d-x32-weight64"),
    pytest.param(lambda f: f.conv2d(X, WT.astype(F32)), TypeError,
                 r"weight has dtype float32.*float64", id="conv2d-x64-weight32"),
    pytest.param(lambda f: f.conv2d(X, WT, B.astype(F32)), TypeError,
                 r"bias has dtype float32", id="conv2d-bias32"),
    pytest.param(lambda f: f.conv2d_backward_input(G.astype(F32), WT, (6, 6)), TypeError,
                 r"weight has dtype float64", id="backward_input-grad_y32-weight64"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, G.astype(F32), 3), TypeError,
                 r"grad_y has dtype float32", id="backward_weight-x64-grad_y32"),
    pytest.param(lambda f: f.relu_backward(G.astype(F32), G), TypeError,
                 r"grad_y has dtype float32", id="relu_backward-grad_y32-x64"),
    # --- integer, complex, half, bool and non-array data
    pytest.param(lambda f: f.conv2d(X.astype(np.int64), WT), TypeError,
                 r"x must be float32 or float64, got dtype int64", id="conv2d-x-int64"),
    pytest.param(lambda f: f.conv2d(X, WT.astype(np.int32)), TypeError,
                 r"weight must be float32 or float64, got dtype int32", id="conv2d-weight-int32"),
    pytest.param(lambda f: f.conv2d(X.astype(np.complex128), WT), TypeError,
                 r"x must be float32 or float64, got dtype complex128", id="conv2d-x-complex"),
    pytest.param(lambda f: f.conv2d(X.astype(np.float16), WT), TypeError,
                 r"x must be float32 or float64, got dtype float16", id="conv2d-x-float16"),
    pytest.param(lambda f: f.conv2d(None, WT), TypeError, r"x must be an array, got None",
                 id="conv2d-x-None"),
    pytest.param(lambda f: f.conv2d_backward_input(G.astype(np.int64), WT, (6, 6)), TypeError,
                 r"grad_y must be float32 or float64, got dtype int64",
                 id="backward_input-grad_y-int"),
    pytest.param(lambda f: f.conv2d_backward_weight(X.astype(np.complex64), G, 3), TypeError,
                 r"x must be float32 or float64, got dtype complex64",
                 id="backward_weight-x-complex"),
    pytest.param(lambda f: f.max_pool2d(X.astype(np.int16), 2), TypeError,
                 r"x must be float32 or float64, got dtype int16", id="max_pool2d-x-int"),
    pytest.param(lambda f: f.max_pool2d(X.astype(np.complex128), 2), TypeError,
                 r"x must be float32 or float64, got dtype complex128",
                 id="max_pool2d-x-complex"),
    pytest.param(lambda f: f.max_pool2d_backward(GP.astype(np.int64), AP, (6, 6)), TypeError,
                 r"grad_y must be float32 or float64, got dtype int64",
                 id="max_pool2d_backward-grad_y-int"),
    pytest.param(lambda f: f.relu(X.astype(np.int64)), TypeError,
                 r"input must be float32 or float64, got dtype int64", id="relu-x-int"),
    pytest.param(lambda f: f.relu(X.astype(np.complex128)), TypeError,
                 r"input must be float32 or float64, got dtype complex128", id="relu-x-complex"),
    pytest.param(lambda f: f.relu(X.astype(bool)), TypeError,
                 r"input must be float32 or float64, got dtype bool", id="relu-x-bool"),
    pytest.param(lambda f: f.relu_backward(G.astype(np.int64), G), TypeError,
                 r"grad_y.*float32 or float64|grad_y has dtype int64",
                 id="relu_backward-grad_y-int"),
    # --- kernel larger than the padded input
    pytest.param(lambda f: f.conv2d(X, np.zeros((4, 3, 7, 7))), ValueError,
                 r"kernel \(7, 7\) is larger than the padded input \(6, 6\)",
                 id="conv2d-kernel7-input6"),
    pytest.param(lambda f: f.conv2d(X, np.zeros((4, 3, 9, 3)), padding=1), ValueError,
                 r"kernel \(9, 3\) is larger than the padded input \(8, 8\)",
                 id="conv2d-kernel9x3-padded8"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, (2, 2)), ValueError,
                 r"kernel \(3, 3\) is larger than the padded input \(2, 2\)",
                 id="backward_input-input_size-too-small"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, G, 7), ValueError,
                 r"kernel \(7, 7\) is larger than the padded input \(6, 6\)",
                 id="backward_weight-kernel_size7"),
    pytest.param(lambda f: f.max_pool2d(X, (7, 2)), ValueError,
                 r"kernel \(7, 2\) is larger than the padded input", id="max_pool2d-kernel7"),
    # --- stride < 1
    pytest.param(lambda f: f.conv2d(X, WT, stride=0), ValueError, r"stride must be >= 1, got 0",
                 id="conv2d-stride0"),
    pytest.param(lambda f: f.conv2d(X, WT, stride=-1), ValueError, r"stride must be >= 1, got -1",
                 id="conv2d-stride-1"),
    pytest.param(lambda f: f.conv2d(X, WT, stride=(1, 0)), ValueError,
                 r"stride must be >= 1, got \(1, 0\)", id="conv2d-stride(1,0)"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, (6, 6), stride=0), ValueError,
                 r"stride must be >= 1, got 0", id="backward_input-stride0"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, G, 3, stride=-1), ValueError,
                 r"stride must be >= 1, got -1", id="backward_weight-stride-1"),
    pytest.param(lambda f: f.max_pool2d(X, 2, stride=0), ValueError,
                 r"stride must be >= 1, got 0", id="max_pool2d-stride0"),
    pytest.param(lambda f: f.max_pool2d(X, 2, stride=(-1, 2)), ValueError,
                 r"stride must be >= 1, got \(-1, 2\)", id="max_pool2d-stride(-1,2)"),
    # --- negative padding
    pytest.param(lambda f: f.conv2d(X, WT, padding=-1), ValueError,
                 r"padding must be >= 0, got -1", id="conv2d-padding-1"),
    pytest.param(lambda f: f.conv2d(X, WT, padding=(0, -2)), ValueError,
                 r"padding must be >= 0, got \(0, -2\)", id="conv2d-padding(0,-2)"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, (6, 6), padding=-1), ValueError,
                 r"padding must be >= 0, got -1", id="backward_input-padding-1"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, G, 3, padding=-1), ValueError,
                 r"padding must be >= 0, got -1", id="backward_weight-padding-1"),
    pytest.param(lambda f: f.max_pool2d(X, 2, padding=-1), ValueError,
                 r"padding must be >= 0, got -1", id="max_pool2d-padding-1"),
    # --- max-pool padding more than half the kernel
    pytest.param(lambda f: f.max_pool2d(X, 2, padding=2), ValueError,
                 r"half the kernel.*padding \(2, 2\).*kernel_size \(2, 2\)",
                 id="max_pool2d-k2-pad2"),
    pytest.param(lambda f: f.max_pool2d(X, 3, stride=1, padding=2), ValueError,
                 r"half the kernel.*padding \(2, 2\).*kernel_size \(3, 3\)",
                 id="max_pool2d-k3-pad2"),
    pytest.param(lambda f: f.max_pool2d(X, (4, 2), padding=(1, 2)), ValueError,
                 r"half the kernel.*padding \(1, 2\).*kernel_size \(4, 2\)",
                 id="max_pool2d-k(4,2)-pad(1,2)"),
    # --- argmax
    pytest.param(lambda f: f.max_pool2d_backward(GP, AP[:, :, :2], (6, 6)), ValueError,
                 r"argmax has shape \(2, 3, 2, 3\), expected \(2, 3, 3, 3\)",
                 id="argmax-wrong-shape"),
    pytest.param(lambda f: f.max_pool2d_backward(GP, AP.astype(F64), (6, 6)), TypeError,
                 r"argmax must be an int64.*float64", id="argmax-float"),
    pytest.param(lambda f: f.max_pool2d_backward(GP, _argmax_with(-1), (6, 6)), ValueError,
                 r"argmax holds index -1, outside the input plane \[0, 36\)",
                 id="argmax-negative"),
    pytest.param(lambda f: f.max_pool2d_backward(GP, _argmax_with(36), (6, 6)), ValueError,
                 r"argmax holds index 36, outside the input plane \[0, 36\)",
                 id="argmax-equal-H*W"),
    pytest.param(lambda f: f.max_pool2d_backward(GP, _argmax_with(35), (5, 6)), ValueError,
                 r"argmax holds index 35, outside the input plane \[0, 30\)",
                 id="argmax-input_size-too-small"),
    # --- grad_y of the wrong shape, for every backward
    pytest.param(lambda f: f.conv2d_backward_input(np.zeros((2, 5, 4, 4)), WT, (6, 6)),
                 ValueError, r"grad_y has shape \(2, 5, 4, 4\), expected \(2, 4, 4, 4\)",
                 id="backward_input-grad_y-wrong-F"),
    pytest.param(lambda f: f.conv2d_backward_input(np.zeros((2, 4, 4, 3)), WT, (6, 6)),
                 ValueError, r"grad_y has shape \(2, 4, 4, 3\), expected \(2, 4, 4, 4\)",
                 id="backward_input-grad_y-wrong-OW"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, (6, 6), stride=2), ValueError,
                 r"grad_y has shape \(2, 4, 4, 4\), expected \(2, 4, 2, 2\)",
                 id="backward_input-grad_y-not-for-stride2"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, np.zeros((3, 4, 4, 4)), 3), ValueError,
                 r"grad_y has shape \(3, 4, 4, 4\), expected \(2, 4, 4, 4\)",
                 id="backward_weight-grad_y-wrong-N"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, np.zeros((2, 4, 5, 4)), 3), ValueError,
                 r"grad_y has shape \(2, 4, 5, 4\), expected \(2, 4, 4, 4\)",
                 id="backward_weight-grad_y-wrong-OH"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, G, 3, padding=1), ValueError,
                 r"grad_y has shape \(2, 4, 4, 4\), expected \(2, 4, 6, 6\)",
                 id="backward_weight-grad_y-not-for-padding1"),
    pytest.param(lambda f: f.max_pool2d_backward(np.zeros((2, 3, 3, 2)), AP, (6, 6)), ValueError,
                 r"argmax has shape \(2, 3, 3, 3\), expected \(2, 3, 3, 2\)",
                 id="max_pool2d_backward-grad_y-wrong-shape"),
    pytest.param(lambda f: f.relu_backward(np.zeros((2, 3)), np.zeros((3, 2))), ValueError,
                 r"grad_y has shape \(2, 3\), expected \(3, 2\)",
                 id="relu_backward-grad_y-wrong-shape"),
    # --- bias of the wrong shape
    pytest.param(lambda f: f.conv2d(X, WT, np.zeros(5)), ValueError,
                 r"bias must have shape \(4,\).*got \(5,\)", id="conv2d-bias-5-for-F4"),
    pytest.param(lambda f: f.conv2d(X, WT, np.zeros(3)), ValueError,
                 r"bias must have shape \(4,\).*got \(3,\)", id="conv2d-bias-3-for-F4"),
    # --- input_size
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, (7, 7)), ValueError,
                 r"grad_y has shape \(2, 4, 4, 4\), expected \(2, 4, 5, 5\)",
                 id="backward_input-input_size-7x7-for-6x6"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, (6, 5)), ValueError,
                 r"grad_y has shape \(2, 4, 4, 4\), expected \(2, 4, 4, 3\)",
                 id="backward_input-input_size-6x5-for-6x6"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, (0, 6)), ValueError,
                 r"input_size must be >= 1, got \(0, 6\)", id="backward_input-input_size-0"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, (6, 6, 6)), ValueError,
                 r"input_size must be an int or a pair", id="backward_input-input_size-3-long"),
    pytest.param(lambda f: f.max_pool2d_backward(GP, AP, (-6, 6)), ValueError,
                 r"input_size must be >= 1, got \(-6, 6\)",
                 id="max_pool2d_backward-input_size-neg"),
    # --- kernel_size
    pytest.param(lambda f: f.conv2d_backward_weight(X, G, 0), ValueError,
                 r"kernel_size must be >= 1, got 0", id="backward_weight-kernel_size0"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, G, (3, -1)), ValueError,
                 r"kernel_size must be >= 1, got \(3, -1\)",
                 id="backward_weight-kernel_size(3,-1)"),
    pytest.param(lambda f: f.max_pool2d(X, 0), ValueError, r"kernel_size must be >= 1, got 0",
                 id="max_pool2d-kernel_size0"),
    pytest.param(lambda f: f.max_pool2d(X, (2, 0)), ValueError,
                 r"kernel_size must be >= 1, got \(2, 0\)", id="max_pool2d-kernel_size(2,0)"),
    pytest.param(lambda f: f.conv2d(X, np.zeros((4, 3, 0, 3))), ValueError,
                 r"weight has an empty dimension.*\(4, 3, 0, 3\)", id="conv2d-weight-KH0"),
    # --- non-int hyper-parameters
    pytest.param(lambda f: f.conv2d(X, WT, stride=1.5), TypeError, r"stride must be an int.*1\.5",
                 id="conv2d-stride-1.5"),
    pytest.param(lambda f: f.conv2d(X, WT, stride="2"), TypeError, r"stride must be an int.*'2'",
                 id="conv2d-stride-str"),
    pytest.param(lambda f: f.conv2d(X, WT, stride=(1, 2.0)), TypeError,
                 r"stride must be an int.*2\.0", id="conv2d-stride-(1,2.0)"),
    pytest.param(lambda f: f.conv2d(X, WT, padding=0.5), TypeError,
                 r"padding must be an int.*0\.5", id="conv2d-padding-0.5"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, (6, 6), stride=1.5), TypeError,
                 r"stride must be an int.*1\.5", id="backward_input-stride-1.5"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, G, 3, stride="2"), TypeError,
                 r"stride must be an int.*'2'", id="backward_weight-stride-str"),
    pytest.param(lambda f: f.conv2d_backward_weight(X, G, 3.0), TypeError,
                 r"kernel_size must be an int.*3\.0", id="backward_weight-kernel_size-3.0"),
    pytest.param(lambda f: f.max_pool2d(X, 2, stride=1.5), TypeError,
                 r"stride must be an int.*1\.5", id="max_pool2d-stride-1.5"),
    pytest.param(lambda f: f.max_pool2d(X, "2"), TypeError, r"kernel_size must be an int.*'2'",
                 id="max_pool2d-kernel_size-str"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, (6.0, 6)), TypeError,
                 r"input_size must be an int.*6\.0", id="backward_input-input_size-float"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_CALLS)
def test_bad_input_raises_a_clear_error(validating_api, call, exc, match):
    with pytest.raises(exc, match=match):
        call(validating_api)


GOOD_CALLS = [
    pytest.param(lambda f: f.conv2d(X, WT, B, stride=np.int64(2), padding=np.int32(1)),
                 id="numpy-int-hyperparameters"),
    pytest.param(lambda f: f.conv2d(X, WT, stride=[2, 1], padding=[1, 0]), id="list-pairs"),
    pytest.param(lambda f: f.conv2d_backward_input(G, WT, np.array([6, 6])),
                 id="input_size-ndarray"),
    pytest.param(lambda f: f.max_pool2d(X, 3, stride=2, padding=1), id="pool-pad-half-kernel"),
    pytest.param(lambda f: f.max_pool2d(X, (6, 6)), id="pool-window=input"),
    pytest.param(lambda f: f.conv2d(X, np.zeros((4, 3, 8, 8)), padding=1),
                 id="conv-kernel=padded-input"),
    pytest.param(lambda f: f.relu(np.zeros(5)), id="relu-1d"),
]


@pytest.mark.parametrize("call", GOOD_CALLS)
def test_valid_edge_input_is_accepted(validating_api, call):
    call(validating_api)


# --- NaN propagates ------------------------------------------------------------------------------

DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]
# (stride, padding) of the NaN tests; x (2, 3, 7, 6), w (4, 3, 3, 2).
NAN_CONVS = [pytest.param((1, 0), id="s1"), pytest.param(((2, 1), (1, 0)), id="s(2,1)-pad(1,0)")]


def _nan_conv_data(dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    w = rng.uniform(0.5, 1.5, (4, 3, 3, 2)).astype(dtype)  # no zero weights: no NaN * 0 doubt
    b = rng.standard_normal(4).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("conv", NAN_CONVS)
def test_conv2d_nan_in_x_propagates(api, conv, dtype):
    stride, padding = conv
    x, w, b = _nan_conv_data(dtype, seed=0)
    x[0, 1, 3, 2] = np.nan
    x[1, 2, 6, 5] = np.nan  # in the last row/column: maybe unread with stride 2
    y = api.conv2d(x, w, b, stride, padding)
    expected = ref.conv2d_loops(x, w, b, stride, padding)
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_nan_in_weight_or_bias_propagates(api, dtype):
    x, w, b = _nan_conv_data(dtype, seed=1)
    w[1, 0, 2, 1] = np.nan
    b[3] = np.nan
    y = api.conv2d(x, w, b)
    assert np.isnan(y[:, [1, 3]]).all()
    assert not np.isnan(y[:, [0, 2]]).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("conv", NAN_CONVS)
def test_conv2d_backward_nan_in_grad_y_propagates(api, conv, dtype):
    stride, padding = conv
    x, w, _ = _nan_conv_data(dtype, seed=2)
    g = np.random.default_rng(3).standard_normal(
        ref.conv2d_im2col(x, w, None, stride, padding).shape).astype(dtype)
    g[1, 2, 1, 1] = np.nan
    dx = api.conv2d_backward_input(g, w, x.shape[2:], stride, padding)
    dw, db = api.conv2d_backward_weight(x, g, w.shape[2:], stride, padding)
    ref_dx = ref.conv2d_backward_input_loops(g, w, x.shape[2:], stride, padding)
    ref_dw, ref_db = ref.conv2d_backward_weight_loops(x, g, w.shape[2:], stride, padding)
    assert np.isnan(ref_dx).any() and not np.isnan(ref_dx).all()
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(ref_dx))
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(ref_dw))
    np.testing.assert_array_equal(np.isnan(db), np.isnan(ref_db))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_nan_propagates(api, dtype):
    x = np.array([[np.nan, -1.0, 2.0, np.nan, 0.0, -np.inf, np.inf]], dtype=dtype)
    y = api.relu(x)
    np.testing.assert_array_equal(y, [[np.nan, 0.0, 2.0, np.nan, 0.0, 0.0, np.inf]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_nan_grad_propagates_where_x_is_positive(api, dtype):
    x = np.array([1.0, 2.0, -1.0], dtype=dtype)
    dx = api.relu_backward(np.array([np.nan, 1.0, 3.0], dtype=dtype), x)
    assert np.isnan(dx[0]) and dx[1] == 1.0 and dx[2] == 0.0
