"""Tests of the NumPy references themselves (``fastcnn._reference``).

The references are the oracle for every kernel test, so they are checked here on hand-computed
cases, against each other (the loop and the im2col versions share no code but the padding) and,
where PyTorch is installed, against PyTorch.
"""

import numpy as np
import pytest

from fastcnn import _reference as ref

CONV_LOOPS = (ref.conv2d_loops, ref.conv2d_backward_input_loops, ref.conv2d_backward_weight_loops)
CONV_IM2COL = (ref.conv2d_im2col, ref.conv2d_backward_input_im2col,
               ref.conv2d_backward_weight_im2col)
CONV_VERSIONS = [pytest.param(CONV_LOOPS, id="loops"), pytest.param(CONV_IM2COL, id="im2col")]
POOL_VERSIONS = [pytest.param(ref.max_pool2d_loops, id="loops"),
                 pytest.param(ref.max_pool2d_numpy, id="numpy")]
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]

# (N, C, H, W, F, KH, KW, stride, padding); small, because the loop version is slow.
CONV_CASES = [
    pytest.param((1, 1, 4, 4, 1, 2, 2, 1, 0), id="N1-C1-F1-2x2"),
    pytest.param((2, 3, 7, 6, 4, 3, 2, 1, 0), id="k3x2-odd"),
    pytest.param((2, 2, 5, 9, 3, 1, 4, 1, (1, 0)), id="k1x4-pad(1,0)"),
    pytest.param((2, 3, 9, 7, 2, 3, 3, 2, 1), id="s2-pad1"),
    pytest.param((1, 2, 10, 11, 3, 3, 3, 3, 2), id="s3-pad2-remainder"),
    pytest.param((2, 2, 8, 7, 3, 3, 2, (2, 1), (1, 0)), id="s(2,1)-pad(1,0)"),
    pytest.param((2, 4, 5, 6, 3, 1, 1, 1, 0), id="k1x1"),
    pytest.param((2, 3, 4, 5, 2, 6, 7, 1, 1), id="kernel=padded-input"),
    pytest.param((1, 2, 3, 3, 2, 2, 2, 1, 3), id="pad>kernel"),
    pytest.param((2, 6, 14, 14, 3, 5, 5, 1, 0), id="lenet-C3-F3"),
]


def _conv_data(case, dtype, seed=0):
    N, C, H, W, F, KH, KW, stride, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    y_shape = ref.conv2d_im2col(x, w, b, stride, padding).shape
    g = rng.standard_normal(y_shape).astype(dtype)
    return x, w, b, g, stride, padding


# --- hand-computed cases -------------------------------------------------------------------------


@pytest.mark.parametrize("fns", CONV_VERSIONS)
def test_conv2d_hand_case_difference_kernel(fns):
    # w = [[1, 0], [0, -1]] gives x[i, j] - x[i+1, j+1] = -5 for x = arange(16) in 4x4.
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    y = fns[0](x, w, np.array([1.0]))
    np.testing.assert_array_equal(y, np.full((1, 1, 3, 3), -4.0))


@pytest.mark.parametrize("fns", CONV_VERSIONS)
def test_conv2d_hand_case_stride2_pad1(fns):
    # xp is arange(9) framed by zeros; the 2x2 windows at stride 2 sum to 0, 1+2, 3+6, 4+5+7+8.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = fns[0](x, np.ones((1, 1, 2, 2)), stride=2, padding=1)
    np.testing.assert_array_equal(y[0, 0], [[0.0, 3.0], [9.0, 24.0]])


@pytest.mark.parametrize("fns", CONV_VERSIONS)
def test_conv2d_backward_input_hand_case(fns):
    # Full correlation of ones(2x2) with rot180(w): each dx[u, v] sums the w taps covering it.
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    dx = fns[1](np.ones((1, 1, 2, 2)), w, (3, 3))
    np.testing.assert_array_equal(dx[0, 0], [[1, 3, 2], [4, 10, 6], [3, 7, 4]])


@pytest.mark.parametrize("fns", CONV_VERSIONS)
def test_conv2d_backward_input_hand_case_stride2_unreached(fns):
    # Stride 2 spreads each g into its own 2x2 block; row 4 and column 4 are never read.
    g = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    dx = fns[1](g, np.ones((1, 1, 2, 2)), (5, 5), stride=2)
    expected = np.zeros((5, 5))
    expected[:4, :4] = np.kron([[1.0, 2.0], [3.0, 4.0]], np.ones((2, 2)))
    np.testing.assert_array_equal(dx[0, 0], expected)


@pytest.mark.parametrize("fns", CONV_VERSIONS)
def test_conv2d_backward_weight_hand_case(fns):
    # dw[p, q] = sum of the 2x2 block of arange(9) starting at (p, q); db = number of outputs.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    dw, db = fns[2](x, np.ones((1, 1, 2, 2)), 2)
    np.testing.assert_array_equal(dw[0, 0], [[8.0, 12.0], [20.0, 24.0]])
    np.testing.assert_array_equal(db, [4.0])


POOL_HAND_X = np.array([[1, 5, 2, 0], [3, 4, 8, 6], [0, 1, 2, 3], [9, 1, 1, 9]], dtype=float)


@pytest.mark.parametrize("pool", POOL_VERSIONS)
def test_max_pool2d_hand_case(pool):
    y, argmax = pool(POOL_HAND_X.reshape(1, 1, 4, 4), 2)
    np.testing.assert_array_equal(y[0, 0], [[5.0, 8.0], [9.0, 9.0]])
    np.testing.assert_array_equal(argmax[0, 0], [[1, 6], [12, 15]])
    assert argmax.dtype == np.int64


@pytest.mark.parametrize("pool", POOL_VERSIONS)
def test_max_pool2d_ties_go_to_first(pool):
    # All-equal input: every window's first element (row-major) wins, padding never does.
    y, argmax = pool(np.zeros((1, 1, 5, 5)), 3, 2, 1)
    np.testing.assert_array_equal(y, np.zeros((1, 1, 3, 3)))
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1, 3], [5, 6, 8], [15, 16, 18]])


@pytest.mark.parametrize("pool", POOL_VERSIONS)
def test_max_pool2d_nan_is_max_first_nan_wins(pool):
    x = np.array([[1.0, np.nan, 7.0, 2.0], [np.nan, 3.0, 1.0, 0.0]]).reshape(1, 1, 2, 4)
    y, argmax = pool(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 7.0
    np.testing.assert_array_equal(argmax[0, 0], [[1, 2]])


@pytest.mark.parametrize("pool", POOL_VERSIONS)
def test_max_pool2d_all_minus_inf_window_picks_first_real_element(pool):
    x = np.full((1, 1, 3, 3), -np.inf)
    y, argmax = pool(x, 2, 2, 1)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), -np.inf))
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1], [3, 4]])


def test_max_pool2d_backward_hand_case():
    g = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    argmax = np.array([[[[1, 6], [12, 15]]]])
    dx = ref.max_pool2d_backward_ref(g, argmax, (4, 4))
    expected = np.zeros(16)
    expected[[1, 6, 12, 15]] = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_array_equal(dx.reshape(-1), expected)


def test_max_pool2d_backward_overlapping_windows_add_up():
    # 5x5 with its maximum in the centre: all four 3x3/2 windows pick it.
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 1.0
    _, argmax = ref.max_pool2d_numpy(x, 3, 2)
    dx = ref.max_pool2d_backward_ref(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), argmax, (5, 5))
    assert dx[0, 0, 2, 2] == 10.0 and dx.sum() == 10.0


def test_relu_hand_case():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0, np.nan])
    np.testing.assert_array_equal(ref.relu_ref(x), [0.0, 0.0, 0.0, 0.5, 2.0, np.nan])
    g = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    np.testing.assert_array_equal(ref.relu_backward_ref(g[:5], x[:5]), [0.0, 0.0, 0.0, 4.0, 5.0])


def test_linear_hand_case():
    x = np.array([[1.0, 2.0]])
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(ref.linear_ref(x, w, np.array([0.0, 1.0, 2.0])), [[1, 3, 5]])


def test_softmax_cross_entropy_hand_case():
    # Equal logits: p = 1/K, loss = log K, grad = (1/K - onehot) / N.
    loss, grad = ref.softmax_cross_entropy_ref(np.zeros((2, 4)), np.array([1, 3]), l2=0.5,
                                               weights=[np.ones((2, 2))])
    assert loss == pytest.approx(np.log(4.0) + 0.5 * 0.5 * 4.0, rel=1e-14)
    expected = np.full((2, 4), 0.125)
    expected[0, 1] -= 0.5
    expected[1, 3] -= 0.5
    np.testing.assert_allclose(grad, expected, rtol=1e-14)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    loss, grad = ref.softmax_cross_entropy_ref(np.array([[1000.0, 0.0], [0.0, 1000.0]]),
                                               np.array([0, 0]))
    assert loss == pytest.approx(500.0) and np.all(np.isfinite(grad))


def test_softmax_cross_entropy_gradient_matches_finite_differences(numerical_gradient,
                                                                   relative_error):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((3, 5))
    t = np.array([0, 4, 2])
    _, grad = ref.softmax_cross_entropy_ref(z, t)
    num = numerical_gradient(lambda a: ref.softmax_cross_entropy_ref(a, t)[0], z)
    assert relative_error(grad, num) < 1e-6


# --- the two versions agree ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_loops_and_im2col_agree(case, dtype, assert_close):
    x, w, b, _, stride, padding = _conv_data(case, dtype)
    bound = ref.conv2d_im2col(np.abs(x).astype(float), np.abs(w).astype(float), np.abs(b), stride,
                              padding)
    assert_close(ref.conv2d_loops(x, w, b, stride, padding),
                 ref.conv2d_im2col(x, w, b, stride, padding), bound)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_input_loops_and_im2col_agree(case, dtype, assert_close):
    x, w, _, g, stride, padding = _conv_data(case, dtype)
    size = x.shape[2:]
    bound = ref.conv2d_backward_input_im2col(np.abs(g).astype(float), np.abs(w).astype(float),
                                             size, stride, padding)
    dx = ref.conv2d_backward_input_loops(g, w, size, stride, padding)
    assert dx.dtype == dtype
    assert_close(dx, ref.conv2d_backward_input_im2col(g, w, size, stride, padding), bound)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_weight_loops_and_im2col_agree(case, dtype, assert_close):
    x, w, _, g, stride, padding = _conv_data(case, dtype)
    k = w.shape[2:]
    bound_w, bound_b = ref.conv2d_backward_weight_im2col(np.abs(x).astype(float),
                                                         np.abs(g).astype(float), k, stride,
                                                         padding)
    dw, db = ref.conv2d_backward_weight_loops(x, g, k, stride, padding)
    dw2, db2 = ref.conv2d_backward_weight_im2col(x, g, k, stride, padding)
    assert dw.dtype == db.dtype == dtype
    assert_close(dw, dw2, bound_w)
    assert_close(db, db2, bound_b)


def test_im2col_and_col2im_are_adjoint():
    # <im2col(x), c> == <x, col2im(c)> for any x, c: col2im is the transpose of im2col.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 8))
    cols_shape = ref.im2col(x, (3, 2), (2, 3), (1, 2)).shape
    c = rng.standard_normal(cols_shape)
    lhs = np.vdot(ref.im2col(x, (3, 2), (2, 3), (1, 2)), c)
    rhs = np.vdot(x, ref.col2im(c, (7, 8), (2, 3), (1, 2)))
    assert lhs == pytest.approx(rhs, rel=1e-12)


POOL_CASES = [
    pytest.param(((2, 3, 8, 8), 2, None, 0), id="2x2"),
    pytest.param(((1, 2, 7, 5), 2, None, 0), id="2x2-odd-HW"),
    pytest.param(((2, 2, 9, 9), 3, 2, 0), id="3x3-s2-overlap"),
    pytest.param(((2, 2, 8, 7), 3, 2, 1), id="3x3-s2-pad1"),
    pytest.param(((2, 2, 7, 6), (3, 2), (2, 1), (1, 0)), id="3x2-s(2,1)-pad(1,0)"),
    pytest.param(((1, 1, 5, 4), (5, 4), None, 0), id="window=input"),
    pytest.param(((1, 2, 8, 8), 2, 3, 0), id="2x2-s3-gaps"),
]


@pytest.mark.parametrize("integers", [pytest.param(False, id="random"),
                                      pytest.param(True, id="many-ties")])
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_loops_and_numpy_agree(case, integers):
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 2, shape).astype(float) if integers else rng.standard_normal(shape)
    y1, a1 = ref.max_pool2d_loops(x, kernel, stride, padding)
    y2, a2 = ref.max_pool2d_numpy(x, kernel, stride, padding)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(np.take_along_axis(x.reshape(*shape[:2], -1),
                                                     a1.reshape(*shape[:2], -1), axis=2),
                                  y1.reshape(*shape[:2], -1))


def test_max_pool2d_loops_and_numpy_agree_with_nans():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 9, 9))
    x[rng.random(x.shape) < 0.15] = np.nan
    y1, a1 = ref.max_pool2d_loops(x, 3, 2, 1)
    y2, a2 = ref.max_pool2d_numpy(x, 3, 2, 1)
    np.testing.assert_array_equal(y1, y2)  # NaNs compare equal here
    np.testing.assert_array_equal(a1, a2)


# --- against PyTorch -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_im2col_matches_torch(case, assert_close):
    torch = pytest.importorskip("torch")
    x, w, b, g, stride, padding = _conv_data(case, np.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding)
    ty.backward(torch.tensor(g))
    y = ref.conv2d_im2col(x, w, b, stride, padding)
    dx = ref.conv2d_backward_input_im2col(g, w, x.shape[2:], stride, padding)
    dw, db = ref.conv2d_backward_weight_im2col(x, g, w.shape[2:], stride, padding)
    ax, aw, ag = np.abs(x), np.abs(w), np.abs(g)
    assert_close(y, ty.detach().numpy(), ref.conv2d_im2col(ax, aw, np.abs(b), stride, padding))
    assert_close(dx, tx.grad.numpy(),
                 ref.conv2d_backward_input_im2col(ag, aw, x.shape[2:], stride, padding))
    bw, bb = ref.conv2d_backward_weight_im2col(ax, ag, w.shape[2:], stride, padding)
    assert_close(dw, tw.grad.numpy(), bw)
    assert_close(db, tb.grad.numpy(), bb)


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_numpy_matches_torch(case):
    torch = pytest.importorskip("torch")
    shape, kernel, stride, padding = case
    x = np.random.default_rng(9).standard_normal(shape)
    ty, ti = torch.nn.functional.max_pool2d(torch.tensor(x), kernel, stride, padding,
                                            return_indices=True)
    y, argmax = ref.max_pool2d_numpy(x, kernel, stride, padding)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(argmax, ti.numpy())


def _torch_lenet5(torch, params):
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    ).double()
    model.load_state_dict({k: torch.tensor(v) for k, v in params.items()})
    return model


def test_lenet5_train_step_numpy_matches_torch_sgd():
    torch = pytest.importorskip("torch")
    params = ref.lenet5_init_params(seed=0, dtype=np.float64)
    model = _torch_lenet5(torch, params)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 1, 32, 32))
    labels = rng.integers(0, 10, 4)
    losses = []
    for _ in range(3):
        loss = ref.lenet5_train_step_numpy(params, x, labels, 0.1)
        opt.zero_grad()
        t_loss = torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(labels))
        t_loss.backward()
        opt.step()
        losses.append((loss, t_loss.item()))
    for loss, t_loss in losses:
        assert loss == pytest.approx(t_loss, rel=1e-12)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(params[name], value.numpy(), rtol=0, atol=1e-13)


def test_lenet5_train_step_numpy_lowers_the_loss_in_float32():
    params = ref.lenet5_init_params(seed=1)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((8, 1, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, 8)
    first = ref.lenet5_train_step_numpy(params, x, labels, 0.05)
    for _ in range(4):
        last = ref.lenet5_train_step_numpy(params, x, labels, 0.05)
    assert last < first
    assert all(p.dtype == np.float32 for p in params.values())
