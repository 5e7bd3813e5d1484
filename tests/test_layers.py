"""Tests of the layers (``fastcnn.layers``): Conv2d, MaxPool2d, ReLU, Flatten, Linear, Sequential
and CrossEntropyLoss.

Each layer's forward and backward are checked against plain NumPy / ``fastcnn._reference`` (in
float32 and float64) and against PyTorch (when installed), a small network is checked against
float64 central differences (including the L2 term), and the layer contract is pinned down:
``params``/``grads`` keys, errors for bad arguments and inputs, fresh outputs, buffer reuse inside
``Sequential``, fused Conv2d+ReLU equal to the unfused layers, reprs and seeded fan-in init.
Tolerances are explained in ``conftest.py``: errors are compared to ``TOL[dtype] * bound`` where
``bound`` is the same operation applied to absolute values, in float64.
"""

import numpy as np
import pytest

import fastcnn
from fastcnn import (
    Conv2d,
    CrossEntropyLoss,
    Flatten,
    Linear,
    MaxPool2d,
    Parameter,
    ReLU,
    Sequential,
)
from fastcnn import _reference as ref

F32, F64 = np.float32, np.float64
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]

# (N, C, H, W, out_channels, kernel_size, stride, padding, bias)
CONV_CASES = [
    pytest.param((2, 3, 7, 6, 4, 3, 1, 0, True), id="3x3-odd-HW"),
    pytest.param((2, 2, 9, 7, 3, (3, 2), 2, 1, True), id="k3x2-s2-pad1"),
    pytest.param((1, 3, 8, 7, 5, (2, 3), (2, 1), (1, 0), False), id="k2x3-s(2,1)-pad(1,0)-nobias"),
    pytest.param((1, 1, 12, 12, 6, 5, 1, 0, True), id="N1-C1-5x5"),
    pytest.param((3, 4, 5, 5, 7, 5, 1, 0, True), id="kernel=input-matmul-path"),
    pytest.param((1, 2, 3, 3, 1, 3, 1, 0, True), id="N1-F1-kernel=input-matmul-path"),
    pytest.param((2, 5, 4, 6, 3, 1, 1, 0, False), id="1x1-nobias"),
    pytest.param((2, 2, 6, 6, 3, 3, 3, 2, True), id="s3-pad2"),
]

# (input shape, kernel_size, stride, padding)
POOL_CASES = [
    pytest.param(((2, 3, 8, 6), 2, None, 0), id="2x2"),
    pytest.param(((2, 2, 7, 5), 2, None, 0), id="2x2-odd-HW"),
    pytest.param(((2, 2, 9, 9), 3, 2, 0), id="3x3-s2-overlap"),
    pytest.param(((1, 2, 7, 6), (3, 2), (2, 1), (1, 0)), id="3x2-s(2,1)-pad(1,0)"),
]

# (N, in_features, out_features, bias)
LINEAR_CASES = [
    pytest.param((4, 7, 5, True), id="7->5"),
    pytest.param((1, 3, 9, False), id="N1-3->9-nobias"),
    pytest.param((6, 120, 84, True), id="lenet-F6"),
    pytest.param((5, 4, 1, True), id="out_features=1"),
    pytest.param((3, 1, 4, True), id="in_features=1"),
    pytest.param((1, 1, 1, False), id="N1-1->1-nobias"),
]


# --- helpers -------------------------------------------------------------------------------------


def _conv_layer(case, dtype, seed=0):
    """A Conv2d for the case with a seeded weight and a random (non-zero) bias, and its input."""
    N, C, H, W, Fo, k, s, p, bias = case
    rng = np.random.default_rng(seed)
    layer = Conv2d(C, Fo, k, stride=s, padding=p, bias=bias, dtype=dtype, seed=seed + 1)
    if bias:
        layer.params["bias"][...] = rng.standard_normal(Fo)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    return layer, x, rng


def _conv_ref(layer, x, g):
    """Reference y, dx, dw, db in float64 and their bounds (the same sums over |terms|)."""
    s, p = layer.stride, layer.padding
    w = layer.params["weight"].astype(F64)
    b = layer.params["bias"].astype(F64) if "bias" in layer.params else np.zeros(w.shape[0])
    x, g = x.astype(F64), g.astype(F64)
    exact = (ref.conv2d_im2col(x, w, b, s, p),
             ref.conv2d_backward_input_im2col(g, w, x.shape[2:], s, p),
             *ref.conv2d_backward_weight_im2col(x, g, w.shape[2:], s, p))
    ax, aw, ab, ag = (np.abs(a) for a in (x, w, b, g))
    bound = (ref.conv2d_im2col(ax, aw, ab, s, p),
             ref.conv2d_backward_input_im2col(ag, aw, x.shape[2:], s, p),
             *ref.conv2d_backward_weight_im2col(ax, ag, w.shape[2:], s, p))
    return exact, bound


def _distinct(shape, dtype, seed=0):
    """A scaled shuffled arange plus small noise: distinct values, so max-pool has no ties."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    x = rng.permutation(n).reshape(shape) * (4.0 / n) - 2.0 + rng.uniform(0, 0.1 / n, shape)
    return x.astype(dtype)


def _linear_layer(case, dtype, seed=0):
    N, fin, fout, bias = case
    rng = np.random.default_rng(seed)
    layer = Linear(fin, fout, bias=bias, dtype=dtype, seed=seed + 1)
    if bias:
        layer.params["bias"][...] = rng.standard_normal(fout)
    return layer, rng.standard_normal((N, fin)).astype(dtype), rng


def _torch():
    return pytest.importorskip("torch")


def _t(torch, a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


# --- Conv2d --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_hand_case(dtype):
    # Weight of ones over arange(16) in 4x4 with bias 1: each 3x3 window sums 9 * centre + 1.
    layer = Conv2d(1, 1, 3, dtype=dtype)
    layer.params["weight"][...] = 1
    layer.params["bias"][...] = 1
    y = layer.forward(np.arange(16, dtype=dtype).reshape(1, 1, 4, 4))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[0, 0], [[9 * 5 + 1, 9 * 6 + 1], [9 * 9 + 1, 9 * 10 + 1]])
    dx = layer.backward(np.ones((1, 1, 2, 2), dtype=dtype))
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2],
                                             [1, 2, 2, 1]])
    np.testing.assert_array_equal(layer.grads["weight"][0, 0], [[10, 14, 18], [26, 30, 34],
                                                                [42, 46, 50]])
    np.testing.assert_array_equal(layer.grads["bias"], [4])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_reference(case, dtype, assert_close):
    layer, x, _rng = _conv_layer(case, dtype)
    y = layer.forward(x)
    assert y.dtype == dtype and y.shape == layer.output_shape(x.shape)
    exact, bound = _conv_ref(layer, x, np.zeros(y.shape))
    assert_close(y, exact[0], bound[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_matches_reference(case, dtype, assert_close):
    layer, x, rng = _conv_layer(case, dtype)
    y = layer.forward(x)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    exact, bound = _conv_ref(layer, x, g)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close(dx, exact[1], bound[1])
    assert_close(layer.grads["weight"], exact[2], bound[2])
    if "bias" in layer.grads:
        assert_close(layer.grads["bias"], exact[3], bound[3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_and_all_gradients_match_torch(case, dtype, assert_close):
    torch = _torch()
    layer, x, rng = _conv_layer(case, dtype)
    _N, C, _H, _W, Fo, k, s, p, bias = case
    tconv = torch.nn.Conv2d(C, Fo, k, stride=s, padding=p, bias=bias,
                            dtype=torch.float32 if dtype == F32 else torch.float64)
    with torch.no_grad():
        tconv.weight.copy_(_t(torch, layer.params["weight"]))
        if bias:
            tconv.bias.copy_(_t(torch, layer.params["bias"]))
    y = layer.forward(x)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    xt = _t(torch, x, grad=True)
    yt = tconv(xt)
    yt.backward(_t(torch, g))
    _, bound = _conv_ref(layer, x, g)
    assert_close(y, yt.detach().numpy(), bound[0])
    assert_close(dx, xt.grad.numpy(), bound[1])
    assert_close(layer.grads["weight"], tconv.weight.grad.numpy(), bound[2])
    if bias:
        assert_close(layer.grads["bias"], tconv.bias.grad.numpy(), bound[3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_compute_input_grad_false_returns_none_and_same_param_grads(dtype):
    case = (2, 3, 7, 6, 4, 3, 1, 1, True)
    full, x, rng = _conv_layer(case, dtype)
    skip, _, _ = _conv_layer(case, dtype)
    skip.compute_input_grad = False
    g = rng.standard_normal(full.forward(x).shape).astype(dtype)
    skip.forward(x)
    assert full.backward(g) is not None
    assert skip.backward(g) is None
    np.testing.assert_array_equal(skip.grads["weight"], full.grads["weight"])
    np.testing.assert_array_equal(skip.grads["bias"], full.grads["bias"])


def test_conv2d_backward_overwrites_grads_instead_of_accumulating():
    layer, x, rng = _conv_layer((2, 2, 5, 5, 3, 3, 1, 0, True), F64)
    g = rng.standard_normal(layer.forward(x).shape)
    layer.backward(g)
    first = {k: v.copy() for k, v in layer.grads.items()}
    layer.backward(g)
    for key, value in first.items():
        np.testing.assert_array_equal(layer.grads[key], value, err_msg=key)


# --- MaxPool2d -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_hand_case(dtype):
    x = np.array([[1, 5, 2, 0], [3, 4, 8, 6], [0, 1, 2, 3], [9, 1, 1, 7]], dtype=dtype)
    layer = MaxPool2d(2, dtype=dtype)
    y = layer.forward(x.reshape(1, 1, 4, 4))
    np.testing.assert_array_equal(y[0, 0], [[5, 8], [9, 7]])
    dx = layer.backward(np.array([[[[1, 2], [3, 4]]]], dtype=dtype))
    expected = np.zeros(16)
    expected[[1, 6, 12, 15]] = [1, 2, 3, 4]
    np.testing.assert_array_equal(dx.reshape(-1), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_forward_and_backward_match_reference(case, dtype, assert_close):
    shape, k, s, p = case
    x = _distinct(shape, dtype)
    layer = MaxPool2d(k, stride=s, padding=p, dtype=dtype)
    y = layer.forward(x)
    y_ref, argmax = ref.max_pool2d_loops(x, k, s, p)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, y_ref)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close(dx, ref.max_pool2d_backward_ref(g.astype(F64), argmax, shape[2:]),
                 ref.max_pool2d_backward_ref(np.abs(g).astype(F64), argmax, shape[2:]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_forward_and_backward_match_torch(case, dtype, assert_close):
    torch = _torch()
    shape, k, s, p = case
    x = _distinct(shape, dtype)
    layer = MaxPool2d(k, stride=s, padding=p, dtype=dtype)
    y = layer.forward(x)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    xt = _t(torch, x, grad=True)
    yt = torch.nn.MaxPool2d(k, stride=s, padding=p)(xt)
    yt.backward(_t(torch, g))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    _, argmax = ref.max_pool2d_loops(x, k, s, p)
    assert_close(dx, xt.grad.numpy(), ref.max_pool2d_backward_ref(np.abs(g), argmax, shape[2:]))


# --- ReLU and Flatten ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_numpy_and_zero_gets_no_gradient(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    x[0, 0, :3] = [0.0, -0.0, 1e-30]
    layer = ReLU(dtype=dtype)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    g = rng.standard_normal(x.shape).astype(dtype)
    dx = layer.backward(g)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, np.where(x > 0, g, 0))
    assert dx[0, 0, 0] == 0 and dx[0, 0, 1] == 0 and dx[0, 0, 2] == g[0, 0, 2]


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_torch(dtype):
    torch = _torch()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    x[0, 0, 0, :2] = 0
    g = rng.standard_normal(x.shape).astype(dtype)
    layer = ReLU(dtype=dtype)
    y, dx = layer.forward(x), layer.backward(g)
    xt = _t(torch, x, grad=True)
    yt = torch.nn.ReLU()(xt)
    yt.backward(_t(torch, g))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(dx, xt.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_flatten_forward_and_backward_are_reshapes(dtype):
    x = np.random.default_rng(4).standard_normal((3, 2, 4, 5)).astype(dtype)
    layer = Flatten(dtype=dtype)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, x.reshape(3, 40))
    g = np.arange(120, dtype=dtype).reshape(3, 40)
    dx = layer.backward(g)
    assert dx.shape == x.shape and dx.dtype == dtype
    np.testing.assert_array_equal(dx, g.reshape(x.shape))


# --- Linear --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_hand_case(dtype):
    layer = Linear(2, 3, dtype=dtype)
    layer.params["weight"][...] = [[1, 2], [3, 4], [5, 6]]
    layer.params["bias"][...] = [1, 0, -1]
    y = layer.forward(np.array([[1, -1], [2, 0]], dtype=dtype))
    np.testing.assert_array_equal(y, [[0, -1, -2], [3, 6, 9]])
    dx = layer.backward(np.array([[1, 0, 0], [0, 1, 1]], dtype=dtype))
    np.testing.assert_array_equal(dx, [[1, 2], [8, 10]])
    np.testing.assert_array_equal(layer.grads["weight"], [[1, -1], [2, 0], [2, 0]])
    np.testing.assert_array_equal(layer.grads["bias"], [1, 1, 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear_forward_and_backward_match_numpy(case, dtype, assert_close):
    layer, x, rng = _linear_layer(case, dtype)
    y = layer.forward(x)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    w = layer.params["weight"].astype(F64)
    b = layer.params["bias"].astype(F64) if case[3] else 0.0
    x64, g64 = x.astype(F64), g.astype(F64)
    assert y.dtype == dx.dtype == dtype
    assert_close(y, ref.linear_ref(x64, w) + b, np.abs(x64) @ np.abs(w).T + np.abs(b))
    assert_close(dx, g64 @ w, np.abs(g64) @ np.abs(w))
    assert_close(layer.grads["weight"], g64.T @ x64, np.abs(g64).T @ np.abs(x64))
    if case[3]:
        assert_close(layer.grads["bias"], g64.sum(axis=0), np.abs(g64).sum(axis=0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear_forward_and_all_gradients_match_torch(case, dtype, assert_close):
    torch = _torch()
    layer, x, rng = _linear_layer(case, dtype)
    _N, fin, fout, bias = case
    tlin = torch.nn.Linear(fin, fout, bias=bias,
                           dtype=torch.float32 if dtype == F32 else torch.float64)
    with torch.no_grad():
        tlin.weight.copy_(_t(torch, layer.params["weight"]))
        if bias:
            tlin.bias.copy_(_t(torch, layer.params["bias"]))
    y = layer.forward(x)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    xt = _t(torch, x, grad=True)
    yt = tlin(xt)
    yt.backward(_t(torch, g))
    aw, ax, ag = (np.abs(a).astype(F64) for a in (layer.params["weight"], x, g))
    ab = np.abs(layer.params["bias"]).astype(F64) if bias else 0.0
    assert_close(y, yt.detach().numpy(), ax @ aw.T + ab)
    assert_close(dx, xt.grad.numpy(), ag @ aw)
    assert_close(layer.grads["weight"], tlin.weight.grad.numpy(), ag.T @ ax)
    if bias:
        assert_close(layer.grads["bias"], tlin.bias.grad.numpy(), ag.sum(axis=0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_products_are_bitwise_the_functional_forms(dtype):
    """A Linear (or a Conv2d covering its input: one dense product) reads its weight as it is
    held, in training and in eval mode (where Sequential's bound call holds its pointer), for
    batches that fill the row tiles and batches that do not, and narrow outputs (fewer than a
    register tile); each output must be the functional form's, bitwise, also after an in-place
    change of the weight."""
    rng = np.random.default_rng(41)
    for fout in (1, 3, 7, 13):
        lin = Linear(37, fout, seed=1, dtype=dtype)
        conv = fastcnn.Conv2d(3, fout, 5, seed=2, dtype=dtype)
        assert conv._geometry((1, 3, 5, 5)).covers_input()  # one matrix product
        for mode in ("train", "eval", "eval"):
            getattr(lin, mode)(), getattr(conv, mode)()
            for n in (1, 4, 7, 64):
                x = rng.standard_normal((n, 37)).astype(dtype)
                y = fastcnn.functional.linear(x, lin.params["weight"], lin.params["bias"])
                assert lin.forward(x).tobytes() == y.tobytes()
                xc = rng.standard_normal((n, 3, 5, 5)).astype(dtype)
                yc = fastcnn.functional.conv2d(xc, conv.params["weight"], conv.params["bias"])
                assert conv.forward(xc).tobytes() == yc.tobytes()
                seq = fastcnn.Sequential(conv)  # reused buffers and plans
                assert seq.forward(xc).tobytes() == yc.tobytes()
            lin.params["weight"][0, 0] += 1  # an in-place change: the eval cache must see it


@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_product_rows_are_the_same_sums_whatever_the_batch(dtype, set_threads):
    """The dense product's rows run in 4x3 register tiles or alone (1x4 tiles, single dot
    products at the edges): a row must be the same dot product in every case, so an image's
    outputs do not depend on its batch, nor on the thread count."""
    rng = np.random.default_rng(43)
    for _ in range(12):
        m, k, n = int(rng.integers(1, 14)), int(rng.integers(1, 300)), int(rng.integers(1, 200))
        x = rng.standard_normal((m, k)).astype(dtype)
        w = rng.standard_normal((n, k)).astype(dtype)
        set_threads(2)
        y = fastcnn.functional.linear(x, w)
        np.testing.assert_allclose(y, x.astype(F64) @ w.T.astype(F64),
                                   rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=(1e-4 if dtype == np.float32 else 1e-12) * np.sqrt(k))
        set_threads(1)
        for i in rng.choice(m, size=min(m, 3), replace=False):
            row = fastcnn.functional.linear(x[i:i + 1], w)
            assert row.tobytes() == y[i:i + 1].tobytes(), (m, k, n, i)


def test_eval_conv_reuses_packed_weights_only_while_unchanged():
    """An eval-mode Conv2d keeps its packed weights between calls (functional.conv._PackCache).
    Every output must still be the functional result for the weight and bias of that call:
    after in-place changes of either, after train/eval switches, with two input shapes
    alternating on one layer, and with plans of both tile layouts packing into the one
    buffer in turn (here by forcing the algorithm; in use, input shapes that pick different
    kernels)."""
    from fastcnn.functional import conv as fconv

    rng = np.random.default_rng(47)
    conv = fastcnn.Conv2d(5, 19, 3, padding=1, seed=3)
    seq = fastcnn.Sequential(conv, fastcnn.ReLU())  # the fused step, reused buffers
    w, b = conv.params["weight"], conv.params["bias"]
    b[...] = rng.standard_normal(b.shape)
    xs = [rng.standard_normal((n, 5, h, h)).astype(np.float32) for n, h in ((1, 6), (2, 9))]
    for step in range(24):
        if step % 8 == 5:
            w.flat[rng.integers(w.size)] += 0.5  # in place: the cache must see it
        if step % 8 == 7:
            b[rng.integers(b.size)] -= 0.25
        seq.train() if step == 12 else seq.eval()
        x = xs[step // 6 % 2]
        with fconv._force_algo(("lanes", "lanes", "tiles")[step % 3]):
            want = fastcnn.functional.conv2d(x, w, b, padding=1)
            layer_out = (seq.forward(x) if step % 2 else conv.forward(x)).tobytes()
            assert layer_out == (np.maximum(want, 0) if step % 2 else want).tobytes(), step
        # eval mode keeps the packing (so the checks above ran on reused packed weights)
        assert (conv._ws.writers["apack"].snaps is not None) == (not seq.training)


@pytest.mark.parametrize("name", ["lenet5", "bnnet", "lenet5-1998"])
def test_frozen_model_gives_the_same_outputs_and_refuses_changes(name):
    """freeze(): eval mode, every parameter and buffer read-only, outputs bitwise those of the
    unfrozen model (the derived weights are reused by identity, not by a byte comparison);
    training, loading and an optimiser's step are refused; unfreeze() lets the weights
    change again, and the next forward follows them."""
    from fastcnn.models import get_model
    from fastcnn.models.zoo import get_spec

    rng = np.random.default_rng(5)
    model = get_model(name, seed=1)
    x = rng.random((3, *get_spec(name)["input_shape"])).astype(np.float32)
    model.train()
    model.forward(x)  # moves the batch-norm statistics away from their initial values
    reference = get_model(name, seed=1)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    want = reference.forward(x)
    assert model.freeze() is model and model.frozen and not model.training
    assert all(not a.flags.writeable for _, a in model.named_buffers())
    assert all(not p.data.flags.writeable for p in model.parameters())
    for _ in range(3):  # the first call derives, the others reuse
        assert model.forward(x).tobytes() == want.tobytes()
    assert model.forward(x[:1]).tobytes() == want[:1].tobytes()
    with pytest.raises(RuntimeError, match="frozen"):
        model.train()
    with pytest.raises(RuntimeError, match="frozen"):
        model.load_state_dict(reference.state_dict())
    with pytest.raises(ValueError, match="read-only"):
        model.parameters()[0].data[...] = 0
    model.forward(x)
    model.backward(np.ones_like(want))  # gradients in eval mode stay possible
    with pytest.raises(ValueError, match="read-only"):
        fastcnn.SGD(model.parameters(), lr=0.1).step()
    model.unfreeze()
    assert not model.frozen and not model.training
    weight = model.parameters()[0].data
    weight *= 0.5  # in place: the derived weights must follow
    reference.parameters()[0].data[...] *= 0.5
    assert model.forward(x).tobytes() == reference.forward(x).tobytes()
    model.train()  # allowed again


def _vgg_like(seed, slope):
    return fastcnn.Sequential(
        fastcnn.Conv2d(1, 4, 3, padding=1, seed=seed), fastcnn.ReLU(), fastcnn.MaxPool2d(2),
        fastcnn.Conv2d(4, 6, 3, padding=1, seed=seed + 1), fastcnn.LeakyReLU(slope),
        fastcnn.Conv2d(6, 5, 1, seed=seed + 2), fastcnn.Flatten(), fastcnn.Dropout(0.3),
        fastcnn.Linear(5 * 7 * 7, 3, seed=seed + 3), fastcnn.Tanh())


@pytest.mark.parametrize("name", ["vgg-like", "lenet5", "bnnet", "lenet5-1998"])
def test_frozen_forward_runs_as_one_chain_bitwise_and_follows_every_change(name, set_threads):
    """A frozen Sequential runs its eval forward as one compiled chain of the bound kernel
    calls (Sequential._chain): bitwise the checked path, on 1 and 2 threads; it follows a
    parameter replaced by another read-only array, an array made writeable by hand and
    edited, an activation's parameter, the batch-norm buffers of a fold; and a backward pass
    after a chained forward gives the gradients of the unfrozen model."""
    from fastcnn.models import get_model
    from fastcnn.models.zoo import get_spec

    def build():
        return _vgg_like(3, 0.2) if name == "vgg-like" else get_model(name, seed=2)

    rng = np.random.default_rng(11)
    shape = (1, 14, 14) if name == "vgg-like" else tuple(get_spec(name)["input_shape"])
    x = rng.random((2, *shape)).astype(np.float32)
    model, reference = build(), build()
    model.train()
    model.forward(x)  # batch-norm statistics away from their initial values
    reference.load_state_dict(model.state_dict())
    model.freeze()
    reference.eval()
    for threads in (1, 2):
        set_threads(threads)
        for _ in range(3):
            assert model.forward(x).tobytes() == reference.forward(x).tobytes(), threads
        assert model._bound[2], "the frozen forward did not run as a chain"
    set_threads(1)
    model.forward(x)
    model.forward(x)
    assert model._bound[2]  # the changes below meet a chain made for them

    def same():
        assert model.forward(x).tobytes() == reference.forward(x).tobytes()
        assert model.forward(x).tobytes() == reference.forward(x).tobytes()

    convs = [m for m in model.layers if isinstance(m, fastcnn.Conv2d)]
    ref_convs = [m for m in reference.layers if isinstance(m, fastcnn.Conv2d)]
    # a parameter replaced by another read-only array
    new = convs[-1].params["weight"] * 0.5
    new.flags.writeable = False
    convs[-1].params["weight"] = new
    ref_convs[-1].params["weight"][...] = new
    same()
    assert model._bound[2]  # made again
    # an array made writeable by hand and edited, without unfreeze()
    w = convs[0].params["weight"]
    w.base.flags.writeable = True
    w.flags.writeable = True
    w.flat[0] += 1.0
    ref_convs[0].params["weight"].flat[0] += 1.0
    same()
    if name == "vgg-like":
        model[4].negative_slope = reference[4].negative_slope = 0.05
        same()
    if name == "bnnet":
        bn = model[1]
        mean = bn.buffers["running_mean"] + 0.25
        mean.flags.writeable = False
        bn.buffers["running_mean"] = mean
        reference[1].buffers["running_mean"][...] = mean
        same()
    model.forward(x)  # chained again
    g = rng.standard_normal(reference.forward(x).shape).astype(np.float32)
    got, want = model.backward(g), reference.backward(g)  # (None: no input gradient asked)
    assert (got is None and want is None) or got.tobytes() == want.tobytes()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert p.grad.tobytes() == q.grad.tobytes(), p.name


@pytest.mark.parametrize("threads, batch", [(1, 48), (2, 48), (1, 47)])
def test_frozen_forward_over_batch_slices_is_bitwise_the_whole_batch(threads, batch,
                                                                      set_threads):
    """When a batch's feature maps outgrow the cache, a frozen model's chain runs its
    convolution part slice by slice (Sequential._chain_split; a prime batch: slices of one
    sample) and the dense part on the whole batch: the same bytes as the unfrozen model, and
    the slicing really happened."""
    from fastcnn import _kernels
    from fastcnn.models import get_model

    set_threads(threads)
    rng = np.random.default_rng(3)
    model, reference = get_model("bnnet", seed=4), get_model("bnnet", seed=4)
    x = rng.random((batch, 1, 28, 28)).astype(np.float32)
    model.train()
    model.forward(x[:8])
    reference.load_state_dict(model.state_dict())
    model.freeze()
    reference.eval()
    want = reference.forward(x)
    for _ in range(3):
        assert model.forward(x).tobytes() == want.tobytes()
    run = model._bound[2][0]
    assert not isinstance(run, _kernels.conv.Chain), "the batch was not sliced"
    g = rng.standard_normal(want.shape).astype(np.float32)
    model.backward(g)  # after a sliced forward: the layers' caches are made first
    reference.backward(g)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert p.grad.tobytes() == q.grad.tobytes(), p.name
    assert model.forward(x[:3]).tobytes() == want[:3].tobytes()  # small: one chain


@pytest.mark.parametrize("dtype", DTYPES)
def test_frozen_average_pool_chain_is_bitwise_the_layer(dtype):
    """AvgPool2d's and AdaptiveAvgPool2d's bound calls (and chain links), on windows of every
    kind: padded, ceil mode, padding left out of the divisor, a divisor override, the grouped
    2x2 path; global, uneven and overlapping adaptive windows."""
    rng = np.random.default_rng(9)
    for kwargs in ({"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1},
                   {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                    "count_include_pad": False},
                   {"kernel_size": (2, 3), "stride": 1, "divisor_override": 5}):
        layers = [fastcnn.Conv2d(2, 3, 3, padding=1, seed=1, dtype=dtype),
                  fastcnn.Tanh(dtype=dtype), fastcnn.AvgPool2d(**kwargs, dtype=dtype)]
        model = fastcnn.Sequential(*layers).freeze()
        x = rng.standard_normal((3, 2, 9, 8)).astype(dtype)
        want = fastcnn.functional.avg_pool2d(np.tanh(fastcnn.functional.conv2d(
            x, layers[0].params["weight"], layers[0].params["bias"], padding=1)), **kwargs)
        for _ in range(3):
            got = model.forward(x)
            np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                       atol=1e-6 if dtype == np.float32 else 1e-13)
        assert model._bound[2], kwargs
        assert model.forward(x).tobytes() == layers[2].forward(layers[1].forward(
            layers[0].forward(x))).tobytes(), kwargs
    for size in (1, (2, 3), (4, 4)):  # adaptive: global, uneven and overlapping windows
        layers = [fastcnn.Conv2d(2, 3, 3, padding=1, seed=2, dtype=dtype),
                  fastcnn.AdaptiveAvgPool2d(size, dtype=dtype), fastcnn.Flatten(dtype=dtype)]
        model = fastcnn.Sequential(*layers).freeze()
        x = rng.standard_normal((3, 2, 9, 7)).astype(dtype)
        want = layers[2].forward(layers[1].forward(layers[0].forward(x)))
        np.testing.assert_allclose(want, fastcnn.functional.adaptive_avg_pool2d(
            fastcnn.functional.conv2d(x, layers[0].params["weight"], layers[0].params["bias"],
                                      padding=1), size).reshape(3, -1), rtol=1e-6, atol=1e-6)
        for _ in range(3):
            assert model.forward(x).tobytes() == want.tobytes(), size
        assert model._bound[2], size


def test_snapshot_keeps_a_reference_to_a_frozen_array_and_a_copy_of_any_other():
    """functional._snapshot: a read-only array (and base) is not copied; the snapshot stays
    valid while it is the same object and read-only, and falls back to copying when it is made
    writeable; a writeable array is compared by its bytes."""
    from fastcnn.functional._snapshot import _Snapshot

    base = np.arange(12, dtype=np.float32)
    view = base[2:8].reshape(2, 3)
    view.flags.writeable = False  # but its base is writeable: not frozen, so copied
    snap = _Snapshot(view)
    assert snap.copy is not None and snap.same(view) and snap.same(view.copy())
    base[3] = -1.0
    assert not snap.same(view)
    base.flags.writeable = False
    snap.update(view)
    assert snap.copy is None and snap.source is view and snap.same(view)
    assert not snap.same(view.copy())  # equal bytes, another array: not known to be frozen
    base.flags.writeable = True
    assert not snap.same(view)
    snap.update(view)  # writeable again: a copy, compared by bytes
    assert snap.copy is not None and snap.same(view) and snap.same(view.copy())
    base[4] = 7.0
    assert not snap.same(view)
    frozen_bytes = np.frombuffer(b"\0" * 16, dtype=np.float32)
    assert _Snapshot(frozen_bytes).copy is None


def test_linear_compute_input_grad_false_returns_none():
    layer, x, rng = _linear_layer((4, 7, 5, True), F64)
    full, _, _ = _linear_layer((4, 7, 5, True), F64)
    layer.compute_input_grad = False
    g = rng.standard_normal((4, 5))
    layer.forward(x)
    full.forward(x)
    assert layer.backward(g) is None
    full.backward(g)
    np.testing.assert_array_equal(layer.grads["weight"], full.grads["weight"])
    np.testing.assert_array_equal(layer.grads["bias"], full.grads["bias"])


# --- CrossEntropyLoss ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_uniform_logits_give_log_num_classes(dtype):
    loss_fn = CrossEntropyLoss(dtype=dtype)
    loss = loss_fn.forward(np.full((4, 5), 3.0, dtype=dtype), [0, 1, 2, 4])
    assert loss == pytest.approx(np.log(5), rel=1e-6)
    grad = loss_fn.backward()
    expected = np.full((4, 5), 0.2)
    expected[np.arange(4), [0, 1, 2, 4]] -= 1
    np.testing.assert_allclose(grad, expected / 4, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_matches_reference(dtype):
    rng = np.random.default_rng(5)
    z = (3 * rng.standard_normal((6, 10))).astype(dtype)
    labels = rng.integers(0, 10, 6)
    loss_fn = CrossEntropyLoss(dtype=dtype)
    loss = loss_fn.forward(z, labels)
    grad = loss_fn.backward()
    loss_ref, grad_ref = ref.softmax_cross_entropy_ref(z.astype(F64), labels)
    rtol = 1e-6 if dtype == F32 else 1e-13
    assert isinstance(loss, float)
    assert loss == pytest.approx(loss_ref, rel=rtol)
    assert grad.dtype == dtype and grad.shape == z.shape
    np.testing.assert_allclose(grad, grad_ref, rtol=rtol, atol=rtol / 6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_matches_torch(dtype):
    torch = _torch()
    rng = np.random.default_rng(6)
    z = (3 * rng.standard_normal((7, 4))).astype(dtype)
    labels = rng.integers(0, 4, 7)
    loss_fn = CrossEntropyLoss(dtype=dtype)
    loss = loss_fn.forward(z, labels)
    grad = loss_fn.backward()
    zt = _t(torch, z, grad=True)
    lt = torch.nn.CrossEntropyLoss()(zt, torch.tensor(labels))
    lt.backward()
    rtol = 1e-6 if dtype == F32 else 1e-13
    assert loss == pytest.approx(lt.item(), rel=rtol)
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=rtol, atol=rtol / 7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_l2_covers_weights_not_biases(dtype):
    rng = np.random.default_rng(7)
    layer = Linear(3, 4, dtype=dtype, seed=0)
    layer.params["bias"][...] = rng.standard_normal(4)
    layer.grads["weight"][...] = rng.standard_normal((4, 3))
    layer.grads["bias"][...] = rng.standard_normal(4)
    before = {k: v.copy() for k, v in layer.grads.items()}
    z = rng.standard_normal((5, 4)).astype(dtype)
    labels = rng.integers(0, 4, 5)
    loss_fn = CrossEntropyLoss(l2=0.3, dtype=dtype)
    loss = loss_fn.forward(z, labels, params=layer.parameters())
    data_loss, _ = ref.softmax_cross_entropy_ref(z.astype(F64), labels)
    w = layer.params["weight"].astype(F64)
    assert loss == pytest.approx(data_loss + 0.15 * np.sum(w * w), rel=1e-6)
    loss_fn.backward_l2()
    np.testing.assert_allclose(layer.grads["weight"], before["weight"] + 0.3 * w, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_array_equal(layer.grads["bias"], before["bias"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [pytest.param(1e4, id="1e4"), pytest.param(1e30, id="1e30")])
def test_cross_entropy_is_stable_for_huge_logits(scale, dtype):
    z = np.array([[1, -1, 0], [-1, 1, 0], [0, 1, -1], [1, 1, -1]], dtype=F64) * scale
    labels = np.array([0, 0, 1, 2])
    loss_fn = CrossEntropyLoss(dtype=dtype)
    loss = loss_fn.forward(z.astype(dtype), labels)
    grad = loss_fn.backward()
    lse = np.logaddexp.reduce(z, axis=1)  # independent log-sum-exp oracle, float64
    expected = np.mean(lse - z[np.arange(4), labels])
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(expected, rel=1e-6)
    # Rows: label is the max (p = onehot, grad 0); the label loses all mass; two tied maxima.
    np.testing.assert_allclose(grad * 4, [[0, 0, 0], [-1, 1, 0], [0, 0, 0], [0.5, 0.5, -1]],
                               atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_accepts_whole_float_and_unsigned_labels(dtype):
    z = np.random.default_rng(8).standard_normal((3, 4)).astype(dtype)
    loss_fn = CrossEntropyLoss(dtype=dtype)
    expected = loss_fn.forward(z, np.array([0, 3, 1]))
    assert loss_fn.forward(z, np.array([0.0, 3.0, 1.0])) == expected
    assert loss_fn.forward(z, np.array([0, 3, 1], dtype=np.uint8)) == expected
    assert loss_fn.forward(z, [0, 3, 1]) == expected


# --- gradient check of a whole network (float64 central differences) ----------------------------


def _net_conv3x3_pad1():
    return Sequential(Conv2d(2, 3, 3, padding=1, dtype=F64, seed=1), ReLU(dtype=F64),
                      MaxPool2d(2, dtype=F64), Flatten(dtype=F64),
                      Linear(3 * 3 * 3, 4, dtype=F64, seed=2))


def _net_conv3x2_stride2_pad():
    # 9x9 input: conv (9+2-3)//2+1 = 5 by (9+2-2)//2+1 = 5, pool -> 2x2 (the last conv row and
    # column are unused: their gradient must be zero).
    return Sequential(Conv2d(2, 3, (3, 2), stride=2, padding=1, dtype=F64, seed=3),
                      ReLU(dtype=F64), MaxPool2d(2, dtype=F64), Flatten(dtype=F64),
                      Linear(3 * 2 * 2, 4, dtype=F64, seed=4))


# name: (model factory, input shape, input seed); the seeds keep every pre-activation > 1e-3
# away from a ReLU kink or a pool tie (asserted in the test).
GRADCHECK_NETS = {
    "conv3x3-pad1": (_net_conv3x3_pad1, (3, 2, 6, 6), 10),
    "conv3x2-s2-pad1": (_net_conv3x2_stride2_pad, (2, 2, 9, 9), 12),
}


def _kink_margin(model, x):
    """Distance of the pre-activations from the ReLU kink and from a tie in a pool window.

    Central differences are only valid if a +-h step changes neither which pre-activation is
    positive nor which element of a pool window is the maximum.
    """
    conv, pool = model[0], model[2]
    z = ref.conv2d_im2col(x, conv.params["weight"], conv.params["bias"], conv.stride,
                          conv.padding)
    cols = ref.im2col(np.maximum(z, 0), pool.kernel_size, pool.stride)
    windows = np.sort(cols.reshape(z.shape[0], z.shape[1], -1, *cols.shape[4:]), axis=2)
    top, second = windows[:, :, -1], windows[:, :, -2]
    gaps = (top - second)[top > 0]
    return min(np.abs(z).min(), gaps.min() if gaps.size else np.inf)


@pytest.fixture
def one_thread():
    """Run on one thread; back to the default thread count after the test.

    Results do not depend on the thread count (tested in test_model.py and test_functional.py);
    on a busy 2-vCPU machine the hundreds of tiny forward passes of a finite-difference check run
    up to 100x faster without a parallel region per call.
    """
    fastcnn.set_num_threads(1)
    yield
    fastcnn.set_num_threads(None)


@pytest.mark.parametrize("wrt", ["0.weight", "0.bias", "4.weight", "4.bias", "input"])
@pytest.mark.parametrize("net", list(GRADCHECK_NETS))
def test_network_gradients_match_central_differences(net, wrt, numerical_gradient,
                                                     relative_error, one_thread):
    make, shape, x_seed = GRADCHECK_NETS[net]
    model = make()
    rng = np.random.default_rng(9)
    model[0].params["bias"][...] = 0.1 * rng.standard_normal(3)
    model[4].params["bias"][...] = 0.1 * rng.standard_normal(4)
    x = _distinct(shape, F64, seed=x_seed)
    labels = rng.integers(0, 4, shape[0])
    assert _kink_margin(model, x) > 1e-3, "test input too close to a kink: change the seed"
    loss_fn = CrossEntropyLoss(l2=0.05, dtype=F64)

    def loss(_):
        return loss_fn.forward(model.forward(x), labels, params=model.parameters())

    loss(None)
    dx = model.backward(loss_fn.backward())
    loss_fn.backward_l2()
    params = {p.name: p for p in model.parameters()}
    if wrt == "input":
        analytic, target = dx, x
    else:
        analytic, target = params[wrt].grad.copy(), params[wrt].data
    numeric = numerical_gradient(loss, target, h=1e-5)
    assert relative_error(analytic, numeric) < 1e-6


# --- params / grads contract, seeded init, reprs ----------------------------------------------


PARAM_LAYERS = {
    "conv": (lambda: Conv2d(2, 3, (3, 2)), {"weight": (3, 2, 3, 2), "bias": (3,)}),
    "conv-nobias": (lambda: Conv2d(2, 3, 1, bias=False), {"weight": (3, 2, 1, 1)}),
    "linear": (lambda: Linear(4, 5), {"weight": (5, 4), "bias": (5,)}),
    "linear-nobias": (lambda: Linear(4, 5, bias=False), {"weight": (5, 4)}),
    "pool": (lambda: MaxPool2d(2), {}),
    "relu": (lambda: ReLU(), {}),
    "flatten": (lambda: Flatten(), {}),
}


@pytest.mark.parametrize("name", list(PARAM_LAYERS))
def test_params_and_grads_share_keys_shapes_and_dtype(name):
    make, shapes = PARAM_LAYERS[name]
    layer = make()
    assert list(layer.params) == list(shapes)
    assert list(layer.grads) == list(layer.params)
    for key, shape in shapes.items():
        assert layer.params[key].shape == layer.grads[key].shape == shape
        assert layer.params[key].dtype == layer.grads[key].dtype == F32
        assert not np.shares_memory(layer.params[key], layer.grads[key])
    assert [(p.name, p.is_weight) for p in layer.parameters("3.")] == \
        [(f"3.{k}", k == "weight") for k in shapes]
    assert all(p.data is layer.params[p.name[2:]] and p.grad is layer.grads[p.name[2:]]
               for p in layer.parameters("3."))


def test_sequential_parameter_names_follow_torch_numbering():
    model = _net_conv3x3_pad1()
    assert [p.name for p in model.parameters()] == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert all(isinstance(p, Parameter) for p in model.parameters())
    assert len(model) == 5 and isinstance(model[2], MaxPool2d)
    assert [type(m) for m in model] == [Conv2d, ReLU, MaxPool2d, Flatten, Linear]


INIT_LAYERS = {
    "conv": lambda seed, dtype: Conv2d(3, 4, (3, 2), dtype=dtype, seed=seed),
    "linear": lambda seed, dtype: Linear(6, 5, dtype=dtype, seed=seed),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(INIT_LAYERS))
def test_seeded_init_is_reproducible(kind, dtype):
    a, b, c = (INIT_LAYERS[kind](seed, dtype) for seed in (7, 7, 8))
    assert a.params["weight"].dtype == dtype
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    assert not np.any(a.params["weight"] == c.params["weight"])
    np.testing.assert_array_equal(a.params["bias"], 0)


# (factory, fan_in): enough weights for the sample std to be within a few percent.
FAN_IN_LAYERS = {
    "conv16->120-5x5": (lambda: Conv2d(16, 120, 5, seed=0), 16 * 25),
    "conv1->200-3x3": (lambda: Conv2d(1, 200, 3, seed=1), 9),
    "linear500->300": (lambda: Linear(500, 300, seed=2), 500),
}


@pytest.mark.parametrize("kind", list(FAN_IN_LAYERS))
def test_init_is_fan_in_scaled_kaiming(kind):
    make, fan_in = FAN_IN_LAYERS[kind]
    w = make().params["weight"].astype(F64)
    assert abs(w.mean()) < 5 * np.sqrt(2 / fan_in) / np.sqrt(w.size)
    assert w.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.05)
    assert np.abs(w).max() <= np.sqrt(6.0 / fan_in) * (1 + 1e-6)  # He uniform bound


REPRS = {
    "conv": (lambda: Conv2d(2, 3, (3, 2), stride=(2, 1), padding=1),
             ["Conv2d(2, 3", "kernel_size=(3, 2)", "stride=(2, 1)", "padding=(1, 1)"]),
    "conv-nobias": (lambda: Conv2d(1, 6, 5, bias=False), ["Conv2d(1, 6", "kernel_size=(5, 5)",
                                                          "bias=False"]),
    # Pooling reprs (PyTorch's exact text) are tested in test_pooling.py.
    "pool": (lambda: MaxPool2d(3, stride=2, padding=1),
             ["MaxPool2d(", "kernel_size=3", "stride=2", "padding=1"]),
    "pool-default-stride": (lambda: MaxPool2d(2), ["kernel_size=2", "stride=2"]),
    "linear": (lambda: Linear(120, 84), ["Linear(", "in_features=120", "out_features=84"]),
    "linear-nobias": (lambda: Linear(3, 2, bias=False), ["bias=False"]),
    "relu": (lambda: ReLU(), ["ReLU()"]),
    "flatten": (lambda: Flatten(), ["Flatten()"]),
    "loss": (lambda: CrossEntropyLoss(l2=0.01), ["CrossEntropyLoss(", "l2=0.01"]),
    "sequential": (lambda: Sequential(Conv2d(1, 2, 3), ReLU(), Flatten()),
                   ["Sequential(", "(0): Conv2d(1, 2", "(1): ReLU()", "(2): Flatten()"]),
}


@pytest.mark.parametrize("kind", list(REPRS))
def test_repr_shows_hyper_parameters(kind):
    make, parts = REPRS[kind]
    text = repr(make())
    for part in parts:
        assert part in text, f"{part!r} not in {text!r}"


def test_repr_of_biased_layers_does_not_mention_bias():
    assert "bias" not in repr(Conv2d(2, 3, 3)) and "bias" not in repr(Linear(2, 3))


# --- errors --------------------------------------------------------------------------------------


BAD_CONSTRUCTORS = [
    pytest.param(lambda: Conv2d(1, 1, 0), ValueError, r"kernel_size must be >= 1, got 0",
                 id="conv-kernel_size-0"),
    pytest.param(lambda: Conv2d(1, 1, (3, 0)), ValueError, r"kernel_size.*\(3, 0\)",
                 id="conv-kernel_size-(3,0)"),
    pytest.param(lambda: Conv2d(1, 1, (1, 2, 3)), ValueError, r"kernel_size.*\(1, 2, 3\)",
                 id="conv-kernel_size-triple"),
    pytest.param(lambda: Conv2d(1, 1, 3, stride=0), ValueError, r"stride must be >= 1, got 0",
                 id="conv-stride-0"),
    pytest.param(lambda: Conv2d(1, 1, 3, padding=-1), ValueError,
                 r"padding must be >= 0, got -1", id="conv-padding-negative"),
    pytest.param(lambda: Conv2d(1, 1, 3, padding=(0, -2)), ValueError, r"padding.*-2",
                 id="conv-padding-pair-negative"),
    pytest.param(lambda: Conv2d(2.0, 1, 3), TypeError, r"in_channels must be an int, got 2\.0",
                 id="conv-in_channels-float"),
    pytest.param(lambda: Conv2d(True, 1, 3), TypeError, r"in_channels.*True",
                 id="conv-in_channels-bool"),
    pytest.param(lambda: Conv2d(1, "3", 3), TypeError, r"out_channels must be an int, got '3'",
                 id="conv-out_channels-str"),
    pytest.param(lambda: Conv2d(1, 0, 3), ValueError, r"out_channels must be >= 1, got 0",
                 id="conv-out_channels-0"),
    pytest.param(lambda: Conv2d(1, 1, 2.5), TypeError, r"kernel_size.*2\.5",
                 id="conv-kernel_size-float"),
    pytest.param(lambda: Conv2d(1, 1, 3, dtype=np.int32), TypeError,
                 r"dtype must be float32 or float64, got int32", id="conv-dtype-int32"),
    pytest.param(lambda: MaxPool2d(0), ValueError, r"kernel_size must be >= 1, got 0",
                 id="pool-kernel_size-0"),
    pytest.param(lambda: MaxPool2d(2, stride=0), ValueError, r"stride must be >= 1, got 0",
                 id="pool-stride-0"),
    pytest.param(lambda: MaxPool2d(2, padding=-1), ValueError, r"padding must be >= 0, got -1",
                 id="pool-padding-negative"),
    pytest.param(lambda: MaxPool2d(2, padding=2), ValueError, r"at most half.*\(2, 2\)",
                 id="pool-padding-over-half-kernel"),
    pytest.param(lambda: MaxPool2d(2, dtype=int), TypeError, r"dtype must be float32 or float64",
                 id="pool-dtype-int"),
    pytest.param(lambda: Linear(0, 3), ValueError, r"in_features must be >= 1, got 0",
                 id="linear-in_features-0"),
    pytest.param(lambda: Linear(3, 2.5), TypeError, r"out_features must be an int, got 2\.5",
                 id="linear-out_features-float"),
    pytest.param(lambda: Linear(3, 2, dtype=np.float16), TypeError, r"got float16",
                 id="linear-dtype-float16"),
    pytest.param(lambda: ReLU(dtype=np.int64), TypeError, r"got int64", id="relu-dtype-int"),
    pytest.param(lambda: Flatten(dtype="complex128"), TypeError, r"got complex128",
                 id="flatten-dtype-complex"),
    pytest.param(lambda: CrossEntropyLoss(l2=-0.1), ValueError, r"l2 must be .*got -0\.1",
                 id="loss-l2-negative"),
    pytest.param(lambda: CrossEntropyLoss(l2=float("nan")), ValueError, r"l2 .*nan",
                 id="loss-l2-nan"),
    pytest.param(lambda: Sequential(Conv2d(1, 2, 3, dtype=F64), ReLU()), TypeError,
                 r"share one dtype", id="sequential-mixed-dtypes"),
    pytest.param(lambda: Sequential(ReLU(), np.tanh), TypeError, r"layer 1 is not a fastcnn",
                 id="sequential-not-a-layer"),
]


@pytest.mark.parametrize("make, exc, match", BAD_CONSTRUCTORS)
def test_bad_constructor_arguments_raise_naming_the_value(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


BAD_FORWARDS = [
    pytest.param(lambda: Conv2d(2, 3, 3), (2, 5, 5), F32, ValueError,
                 r"4-D input, got shape \(2, 5, 5\)", id="conv-3d-input"),
    pytest.param(lambda: Conv2d(2, 3, 3), (1, 3, 5, 5), F32, ValueError,
                 r"expects 2 input channels.*\(1, 3, 5, 5\)", id="conv-channel-mismatch"),
    pytest.param(lambda: Conv2d(2, 3, 3), (1, 2, 5, 5), F64, TypeError,
                 r"dtype float32 but x has dtype float64", id="conv-float64-into-float32"),
    pytest.param(lambda: Conv2d(2, 3, 3, dtype=F64), (1, 2, 5, 5), F32, TypeError,
                 r"dtype float64 but x has dtype float32", id="conv-float32-into-float64"),
    pytest.param(lambda: Conv2d(2, 3, 3), (1, 2, 5, 5), np.int64, TypeError,
                 r"float32 or float64, got dtype int64", id="conv-int-input"),
    pytest.param(lambda: Conv2d(2, 3, 5), (1, 2, 4, 6), F32, ValueError,
                 r"larger than the padded input", id="conv-kernel-larger-than-input"),
    pytest.param(lambda: MaxPool2d(2), (4, 4), F32, ValueError, r"4-D input, got shape \(4, 4\)",
                 id="pool-2d-input"),
    pytest.param(lambda: MaxPool2d(2), (1, 1, 4, 4), F64, TypeError, r"x has dtype float64",
                 id="pool-wrong-dtype"),
    pytest.param(lambda: MaxPool2d(3), (1, 1, 2, 4), F32, ValueError,
                 r"larger than the padded input", id="pool-window-larger-than-input"),
    pytest.param(lambda: ReLU(), (3, 4), F64, TypeError, r"x has dtype float64",
                 id="relu-wrong-dtype"),
    pytest.param(lambda: Flatten(), (5,), F32, ValueError, r"start_dim=1 is out of range.*\(5,\)",
                 id="flatten-1d-input"),
    pytest.param(lambda: Linear(4, 3), (2, 1, 2, 2), F32, ValueError,
                 r"2-D input, got shape \(2, 1, 2, 2\)", id="linear-4d-input"),
    pytest.param(lambda: Linear(4, 3), (2, 5), F32, ValueError, r"expects 4 .*\(2, 5\)",
                 id="linear-feature-mismatch"),
    pytest.param(lambda: Linear(4, 3), (2, 4), np.int32, TypeError, r"got dtype int32",
                 id="linear-int-input"),
    pytest.param(lambda: Sequential(Conv2d(2, 3, 3), ReLU()), (1, 1, 5, 5), F32, ValueError,
                 r"expects 2 input channels", id="sequential-channel-mismatch"),
]


@pytest.mark.parametrize("make, shape, dtype, exc, match", BAD_FORWARDS)
def test_bad_forward_input_raises_clear_error(make, shape, dtype, exc, match):
    with pytest.raises(exc, match=match):
        make().forward(np.ones(shape, dtype=dtype))


BACKWARD_FIRST = {
    "conv": lambda: Conv2d(1, 1, 3).backward(np.ones((1, 1, 1, 1), F32)),
    "pool": lambda: MaxPool2d(2).backward(np.ones((1, 1, 1, 1), F32)),
    "relu": lambda: ReLU().backward(np.ones((1, 1), F32)),
    "flatten": lambda: Flatten().backward(np.ones((1, 1), F32)),
    "linear": lambda: Linear(1, 1).backward(np.ones((1, 1), F32)),
    "sequential": lambda: Sequential(Linear(1, 1)).backward(np.ones((1, 1), F32)),
    "loss": lambda: CrossEntropyLoss().backward(),
    "loss-l2": lambda: CrossEntropyLoss(l2=0.1).backward_l2(),
}


@pytest.mark.parametrize("kind", list(BACKWARD_FIRST))
def test_backward_before_forward_raises_runtime_error(kind):
    with pytest.raises(RuntimeError, match="before forward"):
        BACKWARD_FIRST[kind]()


# (layer factory, input shape, wrong grad_y shape)
BAD_GRAD_SHAPES = [
    pytest.param(lambda: Conv2d(2, 3, 3), (2, 2, 5, 5), (2, 3, 3, 4), id="conv"),
    pytest.param(lambda: MaxPool2d(2), (2, 2, 4, 4), (2, 2, 4, 4), id="pool"),
    pytest.param(lambda: ReLU(), (2, 3), (3, 2), id="relu"),
    pytest.param(lambda: Flatten(), (2, 3, 2, 2), (2, 3, 2, 2), id="flatten"),
    pytest.param(lambda: Linear(4, 3), (2, 4), (2, 4), id="linear"),
    pytest.param(lambda: Sequential(Conv2d(2, 3, 3), ReLU(), Flatten()), (2, 2, 5, 5), (2, 28),
                 id="sequential"),
]


@pytest.mark.parametrize("make, x_shape, g_shape", BAD_GRAD_SHAPES)
def test_grad_of_wrong_shape_raises_value_error(make, x_shape, g_shape):
    layer = make()
    layer.forward(np.ones(x_shape, dtype=F32))
    with pytest.raises(ValueError, match=r"grad_y has shape"):
        layer.backward(np.ones(g_shape, dtype=F32))


def test_grad_of_wrong_dtype_raises_type_error():
    layer = Conv2d(1, 1, 3)
    y = layer.forward(np.ones((1, 1, 4, 4), dtype=F32))
    with pytest.raises(TypeError, match=r"grad_y has dtype float64"):
        layer.backward(np.ones(y.shape, dtype=F64))


# --- buffers: fresh outputs, reuse inside Sequential -----------------------------------------


# (layer factory, input shape, output shape)
STANDALONE = {
    "conv": (lambda: Conv2d(2, 3, 3, seed=0), (2, 2, 5, 6), (2, 3, 3, 4)),
    "conv-matmul-path": (lambda: Conv2d(2, 3, 3, seed=0), (2, 2, 3, 3), (2, 3, 1, 1)),
    "pool": (lambda: MaxPool2d(2), (2, 2, 4, 6), (2, 2, 2, 3)),
    "relu": (lambda: ReLU(), (2, 3, 4), (2, 3, 4)),
    "flatten": (lambda: Flatten(), (2, 3, 4), (2, 12)),
    "linear": (lambda: Linear(4, 3, seed=0), (5, 4), (5, 3)),
}


@pytest.mark.parametrize("kind", list(STANDALONE))
def test_standalone_layer_returns_fresh_arrays(kind):
    make, x_shape, y_shape = STANDALONE[kind]
    layer = make()
    rng = np.random.default_rng(11)
    x1, x2 = (_distinct(x_shape, F32, seed) for seed in (1, 2))
    g1, g2 = (rng.standard_normal(y_shape).astype(F32) for _ in range(2))
    y1 = layer.forward(x1)
    y1_copy = y1.copy()
    dx1 = layer.backward(g1)
    dx1_copy = dx1.copy()
    y2 = layer.forward(x2)
    dx2 = layer.backward(g2)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(dx1, dx2)
    np.testing.assert_array_equal(y1, y1_copy)
    np.testing.assert_array_equal(dx1, dx1_copy)


def test_cross_entropy_returns_fresh_gradients():
    loss_fn = CrossEntropyLoss()
    rng = np.random.default_rng(12)
    loss_fn.forward(rng.standard_normal((3, 4)).astype(F32), [0, 1, 2])
    g1 = loss_fn.backward()
    g1_copy = g1.copy()
    loss_fn.forward(rng.standard_normal((3, 4)).astype(F32), [3, 2, 1])
    assert not np.shares_memory(g1, loss_fn.backward())
    np.testing.assert_array_equal(g1, g1_copy)


def _small_layers(dtype=F32):
    """Seeded layers of a small net (the last conv covers its whole input: the matmul path)."""
    return [Conv2d(2, 4, 3, padding=1, dtype=dtype, seed=5), ReLU(dtype=dtype),
            MaxPool2d(2, dtype=dtype), Conv2d(4, 3, 3, dtype=dtype, seed=6), ReLU(dtype=dtype),
            Flatten(dtype=dtype), Linear(3, 5, dtype=dtype, seed=7)]


def _small_net(dtype=F32):
    return Sequential(*_small_layers(dtype))


def test_sequential_returns_fresh_outputs_and_gradients():
    model = _small_net()
    rng = np.random.default_rng(13)
    x1, x2 = (rng.standard_normal((3, 2, 6, 6)).astype(F32) for _ in range(2))
    g1, g2 = (rng.standard_normal((3, 5)).astype(F32) for _ in range(2))
    y1 = model.forward(x1)
    y1_copy = y1.copy()
    dx1 = model.backward(g1)
    dx1_copy = dx1.copy()
    y2 = model.forward(x2)
    dx2 = model.backward(g2)
    np.testing.assert_array_equal(y1, y1_copy)
    np.testing.assert_array_equal(dx1, dx1_copy)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(dx1, dx2)
    assert not np.array_equal(y1, y2)


def test_sequential_copy_false_reuses_the_buffer_and_gives_the_same_values():
    model = _small_net()
    rng = np.random.default_rng(14)
    x1, x2 = (rng.standard_normal((3, 2, 6, 6)).astype(F32) for _ in range(2))
    g = rng.standard_normal((3, 5)).astype(F32)
    y_fresh = model.forward(x1)
    dx_fresh = model.backward(g)
    y_buf = model.forward(x1, copy=False)
    np.testing.assert_array_equal(y_buf, y_fresh)
    dx_buf = model.backward(g, copy=False)
    np.testing.assert_array_equal(dx_buf, dx_fresh)
    assert not np.shares_memory(y_buf, y_fresh) and not np.shares_memory(dx_buf, dx_fresh)
    y_buf2 = model.forward(x2, copy=False)
    dx_buf2 = model.backward(g, copy=False)
    assert np.shares_memory(y_buf, y_buf2) and np.shares_memory(dx_buf, dx_buf2)
    np.testing.assert_array_equal(y_buf2, model.forward(x2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_matches_layers_run_one_by_one_over_two_steps(dtype):
    # Buffer reuse must not leak one step's values into the next (two different batches).
    model, layers = _small_net(dtype), _small_layers(dtype)  # layers: no fusion, no reuse
    rng = np.random.default_rng(15)
    for step in range(2):
        x = rng.standard_normal((3, 2, 6, 6)).astype(dtype)
        g = rng.standard_normal((3, 5)).astype(dtype)
        y, out = model.forward(x), x
        for layer in layers:
            out = layer.forward(out)
        np.testing.assert_array_equal(y, out, err_msg=f"forward, step {step}")
        dx, grad = model.backward(g), g
        for layer in reversed(layers):
            grad = layer.backward(grad)
        np.testing.assert_array_equal(dx, grad, err_msg=f"backward, step {step}")
        for p, q in zip(model.parameters(), [p for i, m in enumerate(layers)
                                              for p in m.parameters(f"{i}.")]):
            np.testing.assert_array_equal(p.grad, q.grad, err_msg=f"{p.name}, step {step}")


# --- validation once per shape, packed parameters, cached transposed weights ---------------------


def test_sequential_packs_parameters_into_one_buffer_with_the_same_values():
    layers = _small_layers()
    values = [(k, p.copy()) for layer in layers for k, p in layer.params.items()]
    model = Sequential(*layers)
    params = model.parameters()
    assert [v for _, v in values] and all(
        np.array_equal(p.data, v) for p, (_, v) in zip(params, values))
    bases = {id(p.data.base) for p in params} | {id(p.grad.base) for p in params}
    assert len(bases) == 2  # one buffer of values, one of gradients
    for p in params:
        assert p.data is model[int(p.name.split(".")[0])].params[p.name.split(".")[1]]


class _Scale(fastcnn.Module):
    """A user's layer that keeps its own reference to its parameter: y = x * weight."""

    def __init__(self, n):
        super().__init__()
        self.w = np.ones(n, dtype=F32)
        self.params["weight"] = self.w
        self.grads["weight"] = np.zeros(n, dtype=F32)

    def forward(self, x):
        self._cache = x
        return x * self.w

    def backward(self, grad_y):
        np.sum(grad_y * self._cache, axis=0, out=self.grads["weight"])
        return grad_y * self.w


def test_user_layer_in_a_sequential_keeps_its_arrays_and_trains():
    model = Sequential(*_small_layers(), _Scale(5))
    user = model[-1]
    assert user.params["weight"] is user.w  # not moved into the packed buffer
    rng = np.random.default_rng(31)
    x = rng.standard_normal((3, 2, 6, 6)).astype(F32)
    labels = np.array([0, 3, 1])
    opt = fastcnn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = CrossEntropyLoss()
    losses = []
    for _ in range(3):
        losses.append(loss_fn.forward(model.forward(x, copy=False), labels))
        model.backward(loss_fn.backward(), copy=False)
        opt.step()
    assert user.params["weight"] is user.w and not np.array_equal(user.w, np.ones(5))
    assert losses[-1] < losses[0]


def test_sequential_validates_again_when_the_input_changes():
    model = _small_net()
    rng = np.random.default_rng(32)
    x = rng.standard_normal((3, 2, 6, 6)).astype(F32)
    y = model.forward(x)
    model.backward(np.ones_like(y))
    with pytest.raises(ValueError, match=r"expects 2 input channels, got x of shape \(3, 1, 6"):
        model.forward(x[:, :1].copy())
    with pytest.raises(TypeError, match="has dtype float32 but x has dtype float64"):
        model.forward(x.astype(F64))
    with pytest.raises(ValueError, match=r"expects a 4-D input, got shape \(3, 2, 6\)"):
        model.forward(x[..., 0].copy())
    np.testing.assert_array_equal(model.forward(x), y)
    with pytest.raises(ValueError, match=r"grad_y has shape \(3, 4\), expected \(3, 5\)"):
        model.backward(np.ones((3, 4), dtype=F32))
    with pytest.raises(TypeError, match="grad_y has dtype float64"):
        model.backward(np.ones((3, 5)))
    # another batch size, then back: each result as a fresh model computes it
    for n in (1, 3):
        xn = rng.standard_normal((n, 2, 6, 6)).astype(F32)
        np.testing.assert_array_equal(model.forward(xn), _small_net().forward(xn))


# Networks for the bound eval forward (Sequential._forward_bound): fused steps, the Conv-BN
# fold, layers without a binding (run through their plain forward), a user's layer.
BOUND_NETS = {
    "lenet5": (lambda: fastcnn.models.get_model("lenet5"), (1, 32, 32)),
    "bnnet": (lambda: fastcnn.models.get_model("bnnet"), (1, 28, 28)),
    "mixed": (lambda: Sequential(
        Conv2d(3, 8, 3, padding=1, seed=1), fastcnn.BatchNorm2d(8), fastcnn.LeakyReLU(0.1),
        Conv2d(8, 8, 3, stride=2, dilation=2, padding=2, seed=2), fastcnn.Tanh(),
        fastcnn.AvgPool2d(2), Conv2d(8, 16, 2, groups=8, seed=3), fastcnn.Dropout(0.3),
        Flatten(), Linear(64, 7, seed=4), fastcnn.Sigmoid(), _Scale(7)), (3, 13, 13)),
}


@pytest.mark.parametrize("net", list(BOUND_NETS))
def test_bound_eval_forward_is_bitwise_the_plain_path(net, set_threads):
    """In eval mode a Sequential runs functions bound to the input's shape; outputs, and the
    gradients of a backward pass after them, must be the plain path's, bitwise, across input
    shapes, thread counts, replaced and changed parameters and a layer put in training mode;
    a bad input must get the plain path's error."""
    make, image = BOUND_NETS[net]
    rng = np.random.default_rng(51)
    model, plain = make(), make()
    for m in (model, plain):
        bn = [layer for layer in m if isinstance(layer, fastcnn.BatchNorm2d)]
        for layer in bn:  # running statistics that are not the defaults
            layer.buffers["running_mean"][...] = np.linspace(-0.5, 0.5, layer.num_features)
            layer.buffers["running_var"][...] = np.linspace(0.5, 2.0, layer.num_features)
    state = model.state_dict()  # biases that are not zero
    model.load_state_dict({k: v + (rng.standard_normal(v.shape) if k.endswith("bias") else 0)
                           for k, v in state.items()})
    plain.load_state_dict(model.state_dict())
    plain._forward_bound = lambda x: None  # the plain path only
    model.eval(), plain.eval()

    def check(n, step):
        x = rng.standard_normal((n,) + image).astype(F32)
        y = model.forward(x)
        assert y.tobytes() == plain.forward(x).tobytes(), step
        g = rng.standard_normal(y.shape).astype(F32)
        gx, pgx = model.backward(g), plain.backward(g)
        assert (gx is None and pgx is None) or gx.tobytes() == pgx.tobytes(), step
        for a, b in zip(model.parameters(), plain.parameters()):
            assert a.grad.tobytes() == b.grad.tobytes(), (step, a.name)

    for n in (1, 3, 1):
        check(n, f"batch {n}")
    assert model._bound is not None and any(f is not None for _, f, _ in model._bound[1])
    set_threads(2)
    check(2, "2 threads")
    set_threads(1)
    conv = next(layer for layer in model if isinstance(layer, Conv2d))
    pconv = next(layer for layer in plain if isinstance(layer, Conv2d))
    new = rng.standard_normal(conv.params["weight"].shape).astype(F32)
    conv.params["weight"], pconv.params["weight"] = new, new.copy()  # replaced
    check(1, "replaced weight")
    conv.params["weight"][0] *= -2.0  # changed in place
    pconv.params["weight"][0] *= -2.0
    check(1, "weight changed in place")
    # biases (read by the bound kernel calls through pointers taken at binding)
    for layer, player in zip(model, plain):
        bias = layer.params.get("bias") if isinstance(layer, (Conv2d, Linear)) else None
        if bias is None:
            continue
        new = rng.standard_normal(bias.shape).astype(F32)
        layer.params["bias"], player.params["bias"] = new, new.copy()
        check(1, f"replaced bias of {layer!r}")
        layer.params["bias"][:2] = 3.0
        player.params["bias"][:2] = 3.0
        check(1, f"bias of {layer!r} changed in place")
    model[-2].train(), plain[-2].train()  # one layer in training mode: bound again
    check(1, "a layer in training mode")
    with pytest.raises(ValueError, match="channels"):
        model.forward(np.zeros((1, image[0] + 1) + image[1:], F32))
    with pytest.raises(TypeError, match="dtype"):
        model.forward(np.zeros((1,) + image, F64))


class _Halve(fastcnn.Module):
    """A user's layer that keeps every other row and column without saying so in output_shape
    (the default, the identity): a strided view (not C-contiguous), or a contiguous copy."""

    def __init__(self, copy):
        super().__init__()
        self.copy = copy

    def forward(self, x):
        y = x[:, :, ::2, ::2]
        return np.ascontiguousarray(y) if self.copy else y


@pytest.mark.parametrize("copy", [False, True], ids=["view", "copy"])
def test_bound_eval_forward_follows_a_user_layer_that_changes_the_shape_unannounced(copy):
    """The layers bound after a user's layer were bound for the shape its output_shape gave;
    when it returns another shape (or a non-contiguous view), the steps after it must run the
    plain path (no kernel may read the array by the bound geometry), with the plain result."""
    make = lambda: Sequential(Conv2d(2, 4, 3, padding=1, seed=1), _Halve(copy),  # noqa: E731
                              Conv2d(4, 3, 3, padding=1, seed=2), ReLU(), MaxPool2d(2),
                              Flatten(), Linear(12, 5, seed=3))
    model, plain = make().eval(), make().eval()
    plain._forward_bound = lambda x: None
    x = np.random.default_rng(53).standard_normal((2, 2, 8, 8)).astype(F32)
    for _ in range(3):
        assert model.forward(x).tobytes() == plain.forward(x).tobytes()
    assert model._bound is not None and model._bound[1] is None  # the rest ran plain


# Layers whose forward multiplies by a transposed copy of the weight (large enough to be
# cached in eval mode): Linear, and a convolution whose kernel covers its input.
CACHED_WEIGHT_NETS = {
    "linear": (lambda: Sequential(Flatten(), Linear(80, 64, seed=1), ReLU(),
                                  Linear(64, 70, seed=2)), (2, 5, 4, 4)),
    "conv-matmul": (lambda: Sequential(Conv2d(5, 300, 4, seed=3), ReLU(), Flatten()),
                    (2, 5, 4, 4)),
}


@pytest.mark.parametrize("net", list(CACHED_WEIGHT_NETS))
def test_eval_forward_sees_every_change_of_the_weights(net):
    make, shape = CACHED_WEIGHT_NETS[net]
    model = make().eval()
    layer = next(m for m in model if "weight" in m.params and m.params["weight"].size >= 4096)
    rng = np.random.default_rng(33)
    x = rng.standard_normal(shape).astype(F32)

    def fresh():
        other = make().eval()
        other.load_state_dict(model.state_dict())
        return other.forward(x)

    y0 = model.forward(x, copy=True)
    np.testing.assert_array_equal(model.forward(x), y0)
    w = layer.params["weight"]
    changes = [lambda: w.reshape(-1).__setitem__(slice(None, None, 7), 0.5),
               lambda: w.__setitem__(Ellipsis, -w),
               lambda: model.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()}),
               lambda: w.reshape(-1).__setitem__(-1, np.nan)]
    for i, change in enumerate(changes):
        before = model.forward(x)
        change()
        after = model.forward(x)
        np.testing.assert_array_equal(after, fresh(), err_msg=f"change {i}")
        assert not np.array_equal(after, before, equal_nan=True), f"change {i}"
    # a training-mode forward in between (which transposes every time) and back
    model.train()
    model.forward(x)
    w += 1.0
    model.eval()
    np.testing.assert_array_equal(model.forward(x), fresh())


# (conv factory, input shape): convolutions followed by a ReLU, fused inside a Sequential.
FUSED_CASES = {
    "3x3-pad1": (lambda d: Conv2d(2, 4, 3, padding=1, dtype=d, seed=1), (3, 2, 7, 6)),
    "lenet-C1": (lambda d: Conv2d(1, 6, 5, dtype=d, seed=2), (2, 1, 32, 32)),
    "k3x2-s2-nobias": (lambda d: Conv2d(3, 5, (3, 2), stride=2, bias=False, dtype=d, seed=3),
                       (2, 3, 9, 8)),
    "kernel=input-matmul-path": (lambda d: Conv2d(16, 12, 5, dtype=d, seed=4), (3, 16, 5, 5)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_conv_relu_equals_unfused_layers_exactly(case, dtype):
    make, shape = FUSED_CASES[case]
    conv, relu = make(dtype), ReLU(dtype=dtype)
    model = Sequential(make(dtype), ReLU(dtype=dtype))
    assert [n for _, n, _ in model.fusion_plan()] == [2]  # fused; layers unchanged
    rng = np.random.default_rng(16)
    if "bias" in conv.params:
        conv.params["bias"][...] = rng.standard_normal(conv.out_channels)
        model[0].params["bias"][...] = conv.params["bias"]
    x = rng.standard_normal(shape).astype(dtype)
    y = model.forward(x)
    y_ref = relu.forward(conv.forward(x))
    assert (y_ref == 0).any() and (y_ref > 0).any()
    np.testing.assert_array_equal(y, y_ref)
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(model.backward(g), conv.backward(relu.backward(g)))
    for key in conv.grads:
        np.testing.assert_array_equal(model[0].grads[key], conv.grads[key], err_msg=key)


@pytest.mark.parametrize("use", ["standalone", "second-sequential-without-relu"])
def test_putting_a_conv_in_a_sequential_does_not_change_it_elsewhere(use):
    # Fusing is a property of the Sequential (conv followed by ReLU there), not of the conv: the
    # same conv called on its own, or shared with a Sequential where no ReLU follows it, must
    # still return the plain convolution.
    conv = Conv2d(1, 2, 3, dtype=F64, seed=0)
    x = np.random.default_rng(19).standard_normal((2, 1, 5, 5))
    expected = conv.forward(x).copy()
    assert (expected < 0).any()
    Sequential(conv, ReLU(dtype=F64))
    if use == "standalone":
        y = conv.forward(x)
    else:
        y = Sequential(conv, MaxPool2d(1, dtype=F64)).forward(x)
    np.testing.assert_array_equal(y, expected)


# --- input layouts -------------------------------------------------------------------------------


# (layer factory, input shape)
LAYOUT_LAYERS = {
    "conv": (lambda: Conv2d(2, 3, 3, stride=2, padding=1, seed=0), (2, 2, 7, 6)),
    "pool": (lambda: MaxPool2d(3, stride=2, padding=1), (2, 2, 7, 6)),
    "relu": (lambda: ReLU(), (2, 2, 7, 6)),
    "flatten": (lambda: Flatten(), (2, 2, 7, 6)),
    "linear": (lambda: Linear(6, 4, seed=0), (5, 6)),
    "sequential": (lambda: _small_net(), (3, 2, 6, 6)),
}


def _layout(a, layout):
    """The same values as ``a`` in a non-contiguous and/or read-only array."""
    if layout == "transposed":
        a = np.ascontiguousarray(np.swapaxes(a, 0, -1)).swapaxes(0, -1)
    elif layout == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        a = big[..., ::2]
    a = a.view()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("layout", ["read-only", "transposed", "strided"])
@pytest.mark.parametrize("kind", list(LAYOUT_LAYERS))
def test_non_contiguous_and_read_only_inputs_give_the_contiguous_result(kind, layout):
    make, shape = LAYOUT_LAYERS[kind]
    layer = make()
    x = _distinct(shape, F32, seed=17)
    y = np.array(layer.forward(x))
    g = np.random.default_rng(18).standard_normal(y.shape).astype(F32)
    dx = np.array(layer.backward(g))
    grads = {p.name: p.grad.copy() for p in layer.parameters()}
    x_odd, g_odd = _layout(x, layout), _layout(g, layout)
    if layout != "read-only":
        assert not x_odd.flags.c_contiguous
    np.testing.assert_array_equal(layer.forward(x_odd), y)
    np.testing.assert_array_equal(layer.backward(g_odd), dx)
    for p in layer.parameters():
        np.testing.assert_array_equal(p.grad, grads[p.name], err_msg=p.name)


# (conv factory, pool factory, input shape): Conv2d - ReLU - MaxPool2d triples, run as one kernel.
FUSED_POOL_CASES = {
    "lenet-C1-S2": (lambda d: Conv2d(1, 6, 5, dtype=d, seed=2), lambda d: MaxPool2d(2, dtype=d),
                    (3, 1, 32, 32)),
    "lenet-C3-S4": (lambda d: Conv2d(6, 16, 5, dtype=d, seed=5), lambda d: MaxPool2d(2, dtype=d),
                    (2, 6, 14, 14)),
    "strided-padded-overlapping": (
        lambda d: Conv2d(3, 5, (3, 2), stride=2, padding=1, dtype=d, seed=3),
        lambda d: MaxPool2d(3, stride=2, padding=1, dtype=d), (2, 3, 11, 9)),
    "odd-plane-pool2": (lambda d: Conv2d(2, 4, 3, dtype=d, seed=6), lambda d: MaxPool2d(2, dtype=d),
                        (2, 2, 10, 9)),
    "kernel=input-then-pool1": (lambda d: Conv2d(4, 3, 5, dtype=d, seed=7),
                                lambda d: MaxPool2d(1, dtype=d), (2, 4, 5, 5)),
}


@pytest.mark.parametrize("with_nan", [False, True], ids=["finite", "nan-in-input"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(FUSED_POOL_CASES))
def test_fused_conv_relu_pool_equals_unfused_layers_exactly(case, dtype, with_nan):
    make_conv, make_pool, shape = FUSED_POOL_CASES[case]
    conv, relu, pool = make_conv(dtype), ReLU(dtype=dtype), make_pool(dtype)
    model = Sequential(make_conv(dtype), ReLU(dtype=dtype), make_pool(dtype))
    assert [(i, n) for i, n, _ in model.fusion_plan()] == [(0, 3)]
    rng = np.random.default_rng(23)
    conv.params["bias"][...] = rng.standard_normal(conv.out_channels)
    model[0].params["bias"][...] = conv.params["bias"]
    x = rng.standard_normal(shape).astype(dtype)
    if with_nan:
        x[0, 0, 1, 1] = np.nan
    for step in range(2):  # the second step runs on reused buffers
        y = model.forward(x)
        y_ref = pool.forward(relu.forward(conv.forward(x)))
        np.testing.assert_array_equal(y, y_ref)
        g = rng.standard_normal(y.shape).astype(dtype)
        np.testing.assert_array_equal(model.backward(g),
                                      conv.backward(relu.backward(pool.backward(g))))
        for key in conv.grads:
            np.testing.assert_array_equal(model[0].grads[key], conv.grads[key],
                                          err_msg=f"{key}, step {step}")
