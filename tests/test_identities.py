"""The identities of DESIGN.md section 4, checked on the public convolution.

* transpose: ``vec(y - b) = C vec(x)`` for a matrix ``C``; then ``vec(dx) = C^T vec(g)``, and
  ``dw`` matches finite differences;
* wide (full) convolution commutes: ``rot180(W) ~* X == rot180(X) ~* W``;
* a 1x1 convolution is a per-pixel matrix product over channels;
* the cost formula ``OH*OW*KH*KW*C*F`` multiply-adds and ``KH*KW*C*F + F`` parameters.
"""

import numpy as np
import pytest

F64 = np.float64

# (N, C, H, W, F, KH, KW, stride, padding), small: C has (F*OH*OW) x (C*H*W) entries.
TRANSPOSE_CASES = [
    pytest.param((1, 2, 4, 5, 3, 3, 2, (2, 1), (1, 0)), id="k3x2-s(2,1)-pad(1,0)"),
    pytest.param((2, 2, 6, 6, 2, 3, 3, 2, 1), id="k3-s2-pad1-remainder"),
    pytest.param((1, 3, 5, 4, 2, 1, 1, 1, 0), id="k1x1"),
    pytest.param((1, 1, 3, 3, 1, 2, 2, 1, 2), id="pad2>kernel"),
    pytest.param((2, 2, 4, 4, 3, 4, 4, 1, 0), id="kernel=input"),
]


def _transpose_data(case, seed):
    N, C, H, W, F, KH, KW, stride, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, KH, KW))
    return x, w, stride, padding


def _conv_matrix(api, w, input_size, stride, padding):
    """The matrix C with vec(conv2d(x, w)[n]) = C vec(x[n]), one column per unit vector.

    The unit vectors of the (C, H, W) input space go through conv2d as one batch, sample k giving
    column k. With a batch, C acts on each sample alone (the full matrix is block-diagonal).
    """
    C, H, W = w.shape[1], *input_size
    units = np.eye(C * H * W).reshape(C * H * W, C, H, W)
    return api.conv2d(units, w, None, stride, padding).reshape(C * H * W, -1).T


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_conv2d_is_the_linear_map_C(api, case):
    x, w, stride, padding = _transpose_data(case, seed=0)
    C = _conv_matrix(api, w, x.shape[2:], stride, padding)
    b = np.random.default_rng(1).standard_normal(w.shape[0])
    y = api.conv2d(x, w, b, stride, padding)
    N = x.shape[0]
    np.testing.assert_allclose((y - b.reshape(1, -1, 1, 1)).reshape(N, -1),
                               x.reshape(N, -1) @ C.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_input_gradient_is_C_transpose(api, case):
    x, w, stride, padding = _transpose_data(case, seed=2)
    C = _conv_matrix(api, w, x.shape[2:], stride, padding)
    N = x.shape[0]
    g = np.random.default_rng(3).standard_normal((N, C.shape[0]))
    y_shape = api.conv2d(x, w, None, stride, padding).shape
    dx = api.conv2d_backward_input(g.reshape(y_shape), w, x.shape[2:], stride, padding)
    # vec(dx[n]) = C^T vec(g[n]). Each entry of C is one weight or zero, so C^T g is accurate to
    # a few ulps of sum |terms|.
    bound = np.abs(g) @ np.abs(C)
    assert np.all(np.abs(dx.reshape(N, -1) - g @ C) <= 1e-12 * bound + 1e-300)


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_weight_gradient_matches_finite_differences(api, case, numerical_gradient,
                                                    relative_error):
    x, w, stride, padding = _transpose_data(case, seed=4)
    y_shape = api.conv2d(x, w, None, stride, padding).shape
    g = np.random.default_rng(5).standard_normal(y_shape)
    dw, db = api.conv2d_backward_weight(x, g, w.shape[2:], stride, padding)
    numeric = numerical_gradient(lambda a: np.sum(api.conv2d(x, a, None, stride, padding) * g), w)
    assert relative_error(dw, numeric) < 1e-6
    np.testing.assert_allclose(db, g.sum(axis=(0, 2, 3)), rtol=1e-12)


# --- wide (full) convolution commutes ------------------------------------------------------------


def _full_convolution(X, W):
    """The true (flipped) full 2-D convolution by its definition: sum of shifted copies of X."""
    M, N = X.shape
    U, V = W.shape
    out = np.zeros((M + U - 1, N + V - 1))
    for p in range(U):
        for q in range(V):
            out[p:p + M, q:q + N] += W[p, q] * X
    return out


def _wide(api, kernel, image):
    """``kernel ~* image``: correlation over full zero padding, single channel."""
    KH, KW = kernel.shape
    return api.conv2d(image[None, None], kernel[None, None], padding=(KH - 1, KW - 1))[0, 0]


@pytest.mark.parametrize("sizes", [
    pytest.param(((4, 5), (2, 3)), id="X4x5-W2x3"),
    pytest.param(((3, 3), (3, 3)), id="X3x3-W3x3"),
    pytest.param(((1, 6), (4, 1)), id="X1x6-W4x1"),
    pytest.param(((6, 2), (3, 5)), id="X6x2-W3x5"),
    pytest.param(((2, 2), (5, 4)), id="X2x2-W5x4"),
])
def test_wide_convolution_commutes(api, sizes):
    (M, N), (U, V) = sizes
    rng = np.random.default_rng(6)
    X, W = rng.standard_normal((M, N)), rng.standard_normal((U, V))
    rot180 = np.rot90  # applied twice below
    lhs = _wide(api, rot180(W, 2), X)
    rhs = _wide(api, rot180(X, 2), W)
    assert lhs.shape == rhs.shape == (M + U - 1, N + V - 1)
    bound = _full_convolution(np.abs(X), np.abs(W))
    assert np.all(np.abs(lhs - rhs) <= 1e-12 * bound + 1e-300)
    assert np.all(np.abs(lhs - _full_convolution(X, W)) <= 1e-12 * bound + 1e-300)


# --- 1x1 convolution -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"),
                                   pytest.param(F64, id="f64")])
@pytest.mark.parametrize("shape", [pytest.param((2, 5, 4, 7, 3), id="C5-F3"),
                                   pytest.param((1, 1, 6, 6, 4), id="C1-F4"),
                                   pytest.param((3, 16, 5, 5, 8), id="C16-F8")])
def test_1x1_convolution_is_per_pixel_matrix_product(api, shape, dtype, assert_close):
    N, C, H, W, F = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, 1, 1)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    y = api.conv2d(x, w, b)
    x64, w64, b64 = x.astype(F64), w[:, :, 0, 0].astype(F64), b.astype(F64)
    expected = np.einsum("fc,nchw->nfhw", w64, x64) + b64.reshape(1, F, 1, 1)
    bound = np.einsum("fc,nchw->nfhw", np.abs(w64), np.abs(x64)) + np.abs(b64).reshape(1, F, 1, 1)
    assert_close(y, expected, bound)
    np.testing.assert_allclose(y[1 % N, :, 2, 3], w64 @ x64[1 % N, :, 2, 3] + b64,
                               rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-5)


# --- cost ----------------------------------------------------------------------------------------


def conv_cost(H, W, C, F, KH, KW, stride=1, padding=0):
    """Multiply-adds ``OH*OW*KH*KW*C*F`` and parameters ``KH*KW*C*F + F`` of one conv layer."""
    OH = (H + 2 * padding - KH) // stride + 1
    OW = (W + 2 * padding - KW) // stride + 1
    return OH * OW * KH * KW * C * F, KH * KW * C * F + F


def test_cost_of_3x3_layer_on_100x100x256():
    macs, params = conv_cost(100, 100, 256, 256, 3, 3, padding=1)
    assert macs == 5_898_240_000
    assert params == 3 * 3 * 256 * 256 + 256 == 590_080


def test_cost_of_1x1_bottleneck_before_3x3_layer():
    reduce_macs, _ = conv_cost(100, 100, 256, 64, 1, 1)
    conv_macs, _ = conv_cost(100, 100, 64, 256, 3, 3, padding=1)
    assert reduce_macs == 163_840_000
    assert conv_macs == 1_474_560_000
    assert reduce_macs + conv_macs == 1_638_400_000
    assert conv_cost(100, 100, 256, 256, 3, 3, padding=1)[0] / (reduce_macs + conv_macs) == 3.6


LENET_CONVS = [
    pytest.param((32, 32, 1, 6, 117_600, 156), id="C1"),
    pytest.param((14, 14, 6, 16, 240_000, 2_416), id="C3"),
    pytest.param((5, 5, 16, 120, 48_000, 48_120), id="C5"),
]


@pytest.mark.parametrize("layer", LENET_CONVS)
def test_lenet5_conv_costs(api, layer):
    H, W, C, F, macs, params = layer
    assert conv_cost(H, W, C, F, 5, 5) == (macs, params)
    # The output size in the formula is the one conv2d really produces.
    y = api.conv2d(np.zeros((1, C, H, W)), np.zeros((F, C, 5, 5)))
    assert y.shape[2] * y.shape[3] * 25 * C * F == macs


def test_lenet5_forward_cost_per_image():
    convs = [conv_cost(32, 32, 1, 6, 5, 5), conv_cost(14, 14, 6, 16, 5, 5),
             conv_cost(5, 5, 16, 120, 5, 5)]
    linear_macs = 120 * 84 + 84 * 10  # F6 10,080 and F7 840
    assert linear_macs == 10_920
    assert sum(m for m, _ in convs) + linear_macs == 416_520
