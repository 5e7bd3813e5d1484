"""Batch normalisation: kernels against the NumPy twin, finite differences and PyTorch autograd;
running statistics; thread determinism; errors; the eval-mode Conv2d+BatchNorm2d fold."""

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import _reference as ref

TOL = {np.float32: 2e-5, np.float64: 1e-11}

# (shape, layer class) samples: odd sizes, batch 1 with spatial extent, 1-D forms.
SHAPES = [
    ((2, 3, 5, 7), fastcnn.BatchNorm2d),
    ((1, 4, 3, 3), fastcnn.BatchNorm2d),
    ((7, 1, 1, 2), fastcnn.BatchNorm2d),
    ((3, 5, 33, 35), fastcnn.BatchNorm2d),
    ((9, 6), fastcnn.BatchNorm1d),
    ((4, 3, 11), fastcnn.BatchNorm1d),
]
IDS = ["x".join(map(str, s)) for s, _ in SHAPES]


def _input(shape, dtype, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2 + offset).astype(dtype)


def _layer(cls, C, dtype, seed=1, **kw):
    layer = cls(C, dtype=dtype, **kw)
    if layer.affine:
        rng = np.random.default_rng(seed)
        layer.params["weight"][...] = rng.uniform(0.5, 1.5, C)
        layer.params["bias"][...] = rng.standard_normal(C)
    return layer


# -- against the twin and finite differences ---------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,cls", SHAPES, ids=IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_functional_matches_twin(shape, cls, dtype, training):
    x = _input(shape, dtype, offset=3.0)
    C = shape[1]
    rng = np.random.default_rng(5)
    w, b = rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    rm2, rv2 = rm.copy(), rv.copy()
    y = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.2, eps=1e-3)
    y_ref, mean, invstd = ref.batch_norm_ref(x, rm2, rv2, w, b, training, 0.2, 1e-3)
    tol = TOL[dtype]
    np.testing.assert_allclose(y, y_ref, rtol=tol * 10, atol=tol * 10 * np.abs(y_ref).max())
    np.testing.assert_allclose(rm, rm2, rtol=tol, atol=tol)
    np.testing.assert_allclose(rv, rv2, rtol=tol, atol=tol)
    g = _input(shape, dtype, seed=3)
    if training:
        mean_k, invstd_k = F.batch_norm_stats(x, eps=1e-3)
        # float32 input is summed in float32 lanes (blocked partial sums): ~1e-7 relative.
        stol = 1e-12 if dtype == np.float64 else 1e-6
        np.testing.assert_allclose(mean_k, mean, rtol=stol, atol=stol)
        np.testing.assert_allclose(invstd_k, invstd, rtol=1e-10 if dtype == np.float64 else 1e-6)
    got = F.batch_norm_backward(g, x, mean, invstd, w, training=training)
    want = ref.batch_norm_backward_ref(g, x, mean, invstd, w, training=training)
    for a, e in zip(got, want):
        assert a.dtype == dtype
        scale = np.abs(e).max() + np.abs(g).sum() / max(1, g.size // C) * 1e-3
        np.testing.assert_allclose(a, e, rtol=tol * 50, atol=tol * 50 * scale)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(3, 2, 2, 2), (4, 3), (2, 2, 3)], ids=str)
def test_backward_finite_differences(shape, training, numerical_gradient, relative_error):
    x = _input(shape, np.float64, seed=7)
    C = shape[1]
    rng = np.random.default_rng(8)
    w, b = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    g = rng.standard_normal(shape)

    def loss_x(xx):
        return float((F.batch_norm(xx, rm.copy(), rv.copy(), w, b, training) * g).sum())

    def loss_w(ww):
        return float((F.batch_norm(x, rm.copy(), rv.copy(), ww, b, training) * g).sum())

    if training:
        mean, invstd = F.batch_norm_stats(x)
    else:
        mean, invstd = rm, 1 / np.sqrt(rv + 1e-5)
    dx, dw, db = F.batch_norm_backward(g, x, mean, invstd, w, training)
    assert relative_error(dx, numerical_gradient(loss_x, x.copy())) < 1e-6
    assert relative_error(dw, numerical_gradient(loss_w, w.copy())) < 1e-6
    np.testing.assert_allclose(db, g.sum(axis=tuple(i for i in range(len(shape)) if i != 1)))


def test_large_offset_float32_is_accurate():
    """Statistics in float64 lanes: an offset of 1e4 (std 1) does not wreck float32 results."""
    x = _input((8, 3, 9, 9), np.float32, offset=1e4) / 2
    y = F.batch_norm(x, None, None, training=True)
    y_ref, _, _ = ref.batch_norm_ref(x.astype(np.float64), training=True)
    np.testing.assert_allclose(y, y_ref, atol=2e-3)


@pytest.mark.parametrize("shape", [(300, 3, 7), (700, 2, 1, 3), (2100, 4), (160, 2, 7, 7)],
                         ids=str)
def test_short_rows_grouped_into_blocks_are_accurate(shape):
    """Rows shorter than half a block are summed several to a block (lanes reduced once per
    block, scalar tails in float64): several blocks per channel, float32 with a large offset,
    still within float32 rounding of the float64 statistics and gradients."""
    x = _input(shape, np.float32, offset=1e3)
    g = _input(shape, np.float32, seed=9)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    mean, invstd = F.batch_norm_stats(x)
    axes = tuple(i for i in range(len(shape)) if i != 1)
    np.testing.assert_allclose(mean, x64.mean(axis=axes), rtol=1e-6)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(x64.var(axis=axes) + 1e-5), rtol=1e-4)
    y = F.batch_norm(x, None, None, training=True)
    y_ref, _, _ = ref.batch_norm_ref(x64, training=True)
    np.testing.assert_allclose(y, y_ref, atol=2e-3)
    dx, dw, db = F.batch_norm_backward(g, x, mean, invstd, np.ones(shape[1], np.float32))
    np.testing.assert_allclose(db, g64.sum(axis=axes), rtol=1e-5, atol=1e-3)
    xhat = (x64 - x64.mean(axis=axes, keepdims=True)) * invstd.reshape((1, -1) + (1,) * (
        len(shape) - 2))
    np.testing.assert_allclose(dw, (g64 * xhat).sum(axis=axes), rtol=1e-4, atol=2e-2)


def test_hand_computed():
    x = np.array([[1.0], [3.0]])  # one channel, mean 2, biased var 1
    rm, rv = np.zeros(1), np.ones(1)
    y = F.batch_norm(x, rm, rv, training=True, momentum=0.5, eps=0.0)
    np.testing.assert_allclose(y, [[-1.0], [1.0]])
    np.testing.assert_allclose(rm, [1.0])
    np.testing.assert_allclose(rv, [0.5 * 1 + 0.5 * 2.0])  # unbiased var 2


# -- against PyTorch ---------------------------------------------------------------------------

def _torch_bn(layer, torch):
    cls = torch.nn.BatchNorm2d if isinstance(layer, fastcnn.BatchNorm2d) else torch.nn.BatchNorm1d
    tdt = torch.float64 if layer.dtype == np.float64 else torch.float32
    t = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
            track_running_stats=layer.track_running_stats, dtype=tdt)
    t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()})
    return t


OPTIONS = [dict(), dict(affine=False), dict(track_running_stats=False), dict(momentum=None),
           dict(momentum=0.3, eps=1e-3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
                         or "default")
@pytest.mark.parametrize("shape,cls", [SHAPES[0], SHAPES[3], SHAPES[4], SHAPES[5]],
                         ids=[IDS[0], IDS[3], IDS[4], IDS[5]])
def test_layer_matches_torch_over_steps(shape, cls, opts, dtype):
    torch = pytest.importorskip("torch")
    C = shape[1]
    layer = _layer(cls, C, dtype, **opts)
    tlayer = _torch_bn(layer, torch)
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    for step, training in enumerate([True, True, True, False, True, False]):
        layer.train(training)
        tlayer.train(training)
        x = _input(shape, dtype, seed=10 + step, offset=step)
        g = _input(shape, dtype, seed=20 + step)
        tx = torch.from_numpy(x.copy()).requires_grad_()
        ty = tlayer(tx)
        ty.backward(torch.from_numpy(g))
        y = layer.forward(x)
        dx = layer.backward(g)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol,
                                   atol=rtol * np.abs(tx.grad.numpy()).max())
        if layer.affine:
            for k in ("weight", "bias"):
                tg = getattr(tlayer, k).grad.numpy()
                np.testing.assert_allclose(layer.grads[k], tg, rtol=rtol,
                                           atol=rtol * np.abs(tg).max() * 10)
                getattr(tlayer, k).grad = None
        theirs = tlayer.state_dict()
        for k, v in layer.state_dict().items():
            np.testing.assert_allclose(v, theirs[k].numpy(), rtol=rtol, atol=rtol)
        assert list(layer.state_dict()) == list(theirs)


def test_state_dict_keys_and_no_decay():
    torch = pytest.importorskip("torch")
    layer = fastcnn.BatchNorm2d(3)
    assert list(layer.state_dict()) == list(torch.nn.BatchNorm2d(3).state_dict())
    assert layer.state_dict()["num_batches_tracked"].dtype == np.int64
    assert layer.state_dict()["num_batches_tracked"].shape == ()
    assert all(not p.decay for p in layer.parameters())
    assert fastcnn.BatchNorm1d(3, track_running_stats=False).buffers == {}
    assert list(fastcnn.BatchNorm1d(3, affine=False).params) == []


def test_batch_zero():
    layer = fastcnn.BatchNorm2d(3)
    x = np.zeros((0, 3, 4, 4), np.float32)
    assert layer.forward(x).shape == x.shape
    assert layer.buffers["num_batches_tracked"] == 1
    np.testing.assert_array_equal(layer.buffers["running_mean"], 0)
    assert layer.backward(x).shape == x.shape


def test_non_contiguous_and_read_only():
    x = _input((4, 6, 5, 5), np.float64)[:, ::2]
    x.flags.writeable = False
    y = F.batch_norm(x, None, None, training=True)
    y_ref, _, _ = ref.batch_norm_ref(np.ascontiguousarray(x), training=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)


# -- threads -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7, 13, 9), (9, 61), (4, 40, 3), (300, 5, 7)], ids=str)
def test_thread_count_bitwise(set_threads, dtype, shape, monkeypatch):
    monkeypatch.setattr(fastcnn.functional.pooling, "_GRAIN", 1)  # every thread, small shapes
    """Many small channels as well: a thread-shared temporary shows up as a race there."""
    x = _input(shape, dtype, offset=1.0)
    g = _input(x.shape, dtype, seed=4)
    C = shape[1]
    w = np.linspace(0.5, 2, C).astype(dtype)
    results = []
    for n in (1, 2, 3, 2, 3):
        set_threads(n)
        rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
        y = F.batch_norm(x, rm, rv, w, None, training=True)
        mean, invstd = F.batch_norm_stats(x)
        grads = F.batch_norm_backward(g, x, mean, invstd, w)
        results.append((y, rm, rv, mean, invstd) + grads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


# -- errors ------------------------------------------------------------------------------------

def test_errors():
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        fastcnn.BatchNorm2d(3).forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        fastcnn.BatchNorm1d(3).forward(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="expects 3 channels"):
        fastcnn.BatchNorm2d(3).forward(np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        fastcnn.BatchNorm2d(3).forward(np.zeros((1, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        fastcnn.BatchNorm1d(3).forward(np.zeros((1, 3), np.float32))
    fastcnn.BatchNorm1d(3).eval().forward(np.zeros((1, 3), np.float32))  # fine in eval
    with pytest.raises(ValueError, match="num_features must be >= 1"):
        fastcnn.BatchNorm2d(0)
    with pytest.raises(ValueError, match="eps must be"):
        fastcnn.BatchNorm2d(2, eps=-1)
    with pytest.raises(TypeError, match="dtype"):
        fastcnn.BatchNorm2d(2).forward(np.zeros((2, 2, 2, 2)))
    with pytest.raises(RuntimeError, match="before forward"):
        fastcnn.BatchNorm2d(2).backward(np.zeros((2, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="weight should contain 3 elements"):
        F.batch_norm(np.zeros((2, 3)), None, None, np.ones(4), training=True)
    with pytest.raises(ValueError, match="running_mean should be an array of 3"):
        F.batch_norm(np.zeros((2, 3)), np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match="must be given when training=False"):
        F.batch_norm(np.zeros((2, 3)), None, None)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        F.batch_norm(np.zeros(3), None, None, training=True)
    with pytest.raises(ValueError, match="grad_y has shape"):
        F.batch_norm_backward(np.zeros((2, 4)), np.zeros((2, 3)), np.zeros(3), np.ones(3))


# -- the eval-mode fold in Sequential ----------------------------------------------------------

def _net(dtype, relu=True, bias=True, **conv_kw):
    layers = [fastcnn.Conv2d(3, 5, 3, padding=1, bias=bias, dtype=dtype, seed=0, **conv_kw),
              _layer(fastcnn.BatchNorm2d, 5, dtype)]
    if relu:
        layers.append(fastcnn.ReLU(dtype=dtype))
    layers += [fastcnn.Conv2d(5, 2, 3, stride=2, dtype=dtype, seed=1),
               _layer(fastcnn.BatchNorm2d, 2, dtype, seed=4)]
    return fastcnn.Sequential(*layers)


def _layerwise(model, x):
    for layer in model:
        x = layer.forward(x)
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fold_within_tolerance_in_eval(dtype, relu, bias):
    model = _net(dtype, relu, bias)
    x = _input((4, 3, 9, 8), dtype)
    for _ in range(2):  # give the running statistics values of their own
        model.forward(x)
    model.eval()
    y = model.forward(x)
    assert all(step.folded for step in model._steps if hasattr(step, "folded"))
    want = _layerwise(model, x)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol * np.abs(want).max())
    # Parameters changed after a fold: the next eval forward follows them.
    model[1].buffers["running_var"][...] *= 3
    model[0].params["weight"][...] *= -1
    np.testing.assert_allclose(model.forward(x), _layerwise(model, x), rtol=tol,
                               atol=tol * np.abs(want).max())
    # Gradients in eval mode equal the unfolded layers' gradients.
    g = _input(y.shape, dtype, seed=9)
    dx = model.backward(g)
    grads = {p.name: p.grad.copy() for p in model.parameters()}
    ref_dx = g
    _layerwise(model, x)
    for layer in reversed(model.layers):
        ref_dx = layer.backward(ref_dx)
    np.testing.assert_allclose(dx, ref_dx, rtol=tol, atol=tol * np.abs(ref_dx).max())
    for p in model.parameters():
        np.testing.assert_allclose(grads[p.name], p.grad, rtol=tol,
                                   atol=tol * np.abs(p.grad).max())


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_reused_fold_follows_every_source_bitwise(bias):
    """The folded weight and bias are kept while the arrays they come from hold the same bytes;
    any change (weight, bias, gamma, beta, running statistics, eps) folds again, so every eval
    forward equals the one of a fresh model with the same state, bitwise."""
    model = _net(np.float32, True, bias)
    x = _input((2, 3, 9, 8), np.float32)
    model.forward(x)
    model.eval()

    def fresh():
        other = _net(np.float32, True, bias).eval()
        other.load_state_dict(model.state_dict())
        other[1].eps = model[1].eps
        return other.forward(x)

    assert np.array_equal(model.forward(x), fresh())
    assert np.array_equal(model.forward(x), fresh())  # reused fold
    conv, bn = model[0], model[1]
    changes = {
        "weight": lambda: conv.params["weight"].reshape(-1).__setitem__(4, 0.25),
        "gamma": lambda: bn.params["weight"].__setitem__(2, -1.5),
        "beta": lambda: bn.params["bias"].__setitem__(0, 0.75),
        "running_mean": lambda: bn.buffers["running_mean"].__setitem__(1, 2.0),
        "running_var": lambda: bn.buffers["running_var"].__setitem__(3, 9.0),
        "eps": lambda: setattr(bn, "eps", 0.5),
        "-0.0": lambda: bn.params["bias"].__setitem__(4, -0.0),
    }
    if bias:
        changes["bias"] = lambda: conv.params["bias"].__setitem__(3, -2.0)
    for name, change in changes.items():
        change()
        assert np.array_equal(model.forward(x), fresh()), name


def test_training_mode_never_folds_and_is_bitwise_layerwise():
    model = _net(np.float64)
    x = _input((3, 3, 7, 7), np.float64)
    y = model.forward(x)
    assert not any(getattr(step, "folded", False) for step in model._steps)
    clone = _net(np.float64)
    assert np.array_equal(y, _layerwise(clone, x))
    model.eval()
    model.forward(x)
    assert model._steps[0].folded
    model.train()
    model.forward(x)
    assert not model._steps[0].folded
    names = [name for _, _, name in model.fusion_plan()]
    assert names[:2] == ["ConvBNReLU", "ConvBN"]


def test_no_fold_without_running_stats():
    model = fastcnn.Sequential(fastcnn.Conv2d(2, 3, 3), fastcnn.BatchNorm2d(
        3, track_running_stats=False))
    model.eval()
    x = _input((2, 2, 5, 5), np.float32)
    y = model.forward(x)
    assert not model._steps[0].folded
    np.testing.assert_array_equal(y, _layerwise(model, x))


# -- a whole network against torch.nn.Sequential -----------------------------------------------

def _pair(dtype, torch):
    ours = fastcnn.Sequential(
        fastcnn.Conv2d(2, 4, 3, padding=1, dtype=dtype, seed=3),
        _layer(fastcnn.BatchNorm2d, 4, dtype),
        fastcnn.ReLU(dtype=dtype),
        fastcnn.Dropout(0.3, seed=11, dtype=dtype),
        fastcnn.Conv2d(4, 3, 3, dtype=dtype, seed=4),
        _layer(fastcnn.BatchNorm2d, 3, dtype, seed=5),
    )
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1, dtype=tdt), torch.nn.BatchNorm2d(4, dtype=tdt),
        torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Conv2d(4, 3, 3, dtype=tdt),
        torch.nn.BatchNorm2d(3, dtype=tdt))
    return ours, theirs


def _torch_run(theirs, x, g, mask, p, torch):
    """torch forward/backward, the dropout replaced by fastcnn's mask (multiplied explicitly)."""
    tx = torch.from_numpy(x.copy()).requires_grad_()
    out = tx
    for i, layer in enumerate(theirs):
        if isinstance(layer, torch.nn.Dropout) and mask is not None:
            out = out * torch.from_numpy(mask.astype(x.dtype)) / (1 - p)
        else:
            out = layer(out)
    out.backward(torch.from_numpy(g))
    return out.detach().numpy(), tx.grad.numpy()


@pytest.mark.parametrize("direction", ["to_torch", "from_torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequential_matches_torch(dtype, direction):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ours, theirs = _pair(dtype, torch)
    if direction == "to_torch":
        theirs.load_state_dict({k: torch.from_numpy(np.array(v))
                                for k, v in ours.state_dict().items()}, strict=True)
    else:
        with torch.no_grad():
            theirs[1].running_mean.uniform_(-1, 1)
            theirs[1].running_var.uniform_(0.5, 2)
            theirs[1].num_batches_tracked.fill_(4)
        ours.load_state_dict(theirs.state_dict(), strict=True)
    rtol = 1e-10 if dtype == np.float64 else 3e-4
    for training in (True, False, True):
        ours.train(training)
        theirs.train(training)
        x = _input((3, 2, 6, 7), dtype, seed=int(training))
        y = ours.forward(x)
        g = _input(y.shape, dtype, seed=2)
        dx = ours.backward(g)
        mask = ours[3]._cache[1] if training else None
        ty, tdx = _torch_run(theirs, x, g, mask, 0.3, torch)
        np.testing.assert_allclose(y, ty, rtol=rtol, atol=rtol * np.abs(ty).max())
        np.testing.assert_allclose(dx, tdx, rtol=rtol, atol=rtol * np.abs(tdx).max())
        named = dict(theirs.named_parameters())
        # A bias in front of a training batch norm has a zero gradient made of cancelling
        # terms: compare against the scale of all the gradients.
        scale = max(np.abs(p.grad.numpy()).max() for p in theirs.parameters())
        for p in ours.parameters():
            tg = named[p.name].grad.numpy()
            np.testing.assert_allclose(p.grad, tg, rtol=rtol, atol=rtol * scale)
        theirs.zero_grad()
        state = theirs.state_dict()
        for k, v in ours.state_dict().items():
            np.testing.assert_allclose(v, state[k].numpy(), rtol=rtol, atol=rtol)


def test_eval_statistics_follow_in_place_buffer_changes():
    """The eval forward reuses its float64 (mean, invstd) while the running buffers and eps are
    unchanged; any in-place change to them must show in the next output."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    bn = fastcnn.BatchNorm2d(2).eval()
    y0 = bn(x).copy()
    bn.buffers["running_mean"][1] = 0.5
    y1 = bn(x).copy()
    want = F.batch_norm(x, bn.buffers["running_mean"], bn.buffers["running_var"],
                        bn.params["weight"], bn.params["bias"], training=False)
    np.testing.assert_array_equal(y1, want)
    assert not np.array_equal(y0[:, 1], y1[:, 1])
    np.testing.assert_array_equal(y0[:, 0], y1[:, 0])
    bn.buffers["running_var"][...] = 4.0
    bn.eps = 1e-3
    want = F.batch_norm(x, bn.buffers["running_mean"], bn.buffers["running_var"],
                        bn.params["weight"], bn.params["bias"], training=False, eps=1e-3)
    np.testing.assert_array_equal(bn(x), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_relu_in_the_output_pass_is_bitwise_a_relu_after(dtype, set_threads):
    """Batch norm's output pass with the ReLU applied (Sequential's Conv-BN-ReLU step) against
    the ReLU kernel after the plain pass, bitwise, training and eval kernels, both of their
    loop orders (channels, and rows in memory order past SPLIT_BYTES): a -0 output kept (a
    constant channel times a negative gamma, plus beta = -0), a NaN channel, 1 and 2 threads."""
    from fastcnn.functional.activation import relu
    from fastcnn.functional.normalization import _batch_norm_eval_into, _batch_norm_train_into
    rng = np.random.default_rng(71)
    for k, shape in enumerate([(3, 4, 5, 5), (64, 3, 14, 14), (2, 5, 1, 1), (7, 2, 33, 9)]):
        set_threads(1 + k % 2)
        C = shape[1]
        x = rng.standard_normal(shape).astype(dtype)
        x[:, 0] = 1.5  # constant channel: (x - mean) * a is -0 for a < 0
        if C > 2:
            x[0, 2, 0, 0] = np.nan
        gamma = rng.standard_normal(C).astype(dtype)
        gamma[0] = -1.0
        beta = rng.standard_normal(C).astype(dtype)
        beta[0] = -0.0
        outs = {}
        for fused in (False, True):
            y, mean, invstd = np.empty_like(x), np.empty(C), np.empty(C)
            _batch_norm_train_into(x, gamma, beta, y, mean, invstd, 1e-5, relu=fused)
            ye = np.empty_like(x)
            _batch_norm_eval_into(x, mean, invstd, gamma, beta, ye, relu=fused)
            outs[fused] = (y, ye)
        assert outs[True][0].tobytes() == relu(outs[False][0]).tobytes(), shape
        assert outs[True][1].tobytes() == relu(outs[False][1]).tobytes(), shape
        assert np.signbit(outs[True][0][:, 0]).all()  # the kept -0
