"""Tests of the losses (``fastcnn.functional.loss``, ``fastcnn.nn.loss``): CrossEntropyLoss
(class weights, ignore_index, label smoothing, probability targets, K-dimensional inputs, the
fused fast path and the L2 term the trainer uses), NLLLoss and MSELoss, against PyTorch autograd,
the NumPy twins and float64 finite differences, with input validation."""

import numpy as np
import pytest

from fastcnn import _reference as ref
from fastcnn import functional as F
from fastcnn import nn
from fastcnn.nn import CrossEntropyLoss, MSELoss, NLLLoss
from fastcnn.nn.module import Parameter

F32, F64 = np.float32, np.float64
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]
REDUCTIONS = ["mean", "sum", "none"]

# (input shape, number of classes axis) cases: 2-D, 1-D, K-dimensional
SHAPES = [pytest.param((7, 5), id="N7-C5"), pytest.param((1, 3), id="N1-C3"),
          pytest.param((4,), id="C4-1d"), pytest.param((3, 4, 2, 5), id="N3-C4-2x5"),
          pytest.param((0, 3), id="N0")]


def _case(shape, dtype, seed=0, ignore=False):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    C = shape[0] if len(shape) == 1 else shape[1]
    lead = () if len(shape) == 1 else (shape[0],) + shape[2:]
    t = rng.integers(0, C, size=lead)
    if ignore and t.size:
        t.reshape(-1)[::3] = -100
    w = rng.uniform(0.2, 2.0, C)
    return z, t, w


def _tols(dtype):
    return (1e-12, 1e-14) if dtype == F64 else (2e-5, 2e-6)


def _torch_ce(torch, z, t, w, reduction, smoothing, probs=None):
    tz = torch.tensor(z, requires_grad=True)
    target = torch.tensor(probs) if probs is not None else torch.tensor(t)
    loss = torch.nn.CrossEntropyLoss(weight=None if w is None else torch.tensor(w, dtype=tz.dtype),
                                     reduction=reduction, label_smoothing=smoothing)(tz, target)
    return tz, loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted, smoothing, ignore", [
    pytest.param(False, 0.0, False, id="plain"), pytest.param(True, 0.0, True, id="weight-ignore"),
    pytest.param(True, 0.2, True, id="weight-smooth-ignore"),
    pytest.param(False, 0.3, False, id="smooth")])
def test_cross_entropy_matches_torch(shape, reduction, weighted, smoothing, ignore, dtype):
    torch = pytest.importorskip("torch")
    z, t, w = _case(shape, dtype, seed=len(shape), ignore=ignore and len(shape) > 1)
    w = w if weighted else None
    tz, tloss = _torch_ce(torch, z, t, w, reduction, smoothing)
    g = np.random.default_rng(5).standard_normal(tloss.shape)
    tloss.backward(torch.tensor(g, dtype=tz.dtype) if reduction == "none" else None)
    fn = CrossEntropyLoss(w, -100, reduction, smoothing, dtype=dtype)
    loss = fn.forward(z, t)
    grad = fn.backward(g if reduction == "none" else None)
    rtol, atol = _tols(dtype)
    if reduction == "none":
        assert loss.shape == tuple(tloss.shape) and loss.dtype == dtype
    else:
        assert isinstance(loss, float)
    np.testing.assert_allclose(loss, tloss.detach().numpy(), rtol=rtol, atol=atol)
    assert grad.shape == z.shape and grad.dtype == dtype
    np.testing.assert_allclose(grad, tz.grad.numpy(), rtol=rtol * 10, atol=atol)
    # the functional form and the twin agree
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    np.testing.assert_allclose(F.cross_entropy(z, t, **kw), loss, rtol=rtol, atol=atol)
    rloss, rgrad = ref.cross_entropy_ref(z.astype(F64), t, **kw)
    np.testing.assert_allclose(loss, rloss, rtol=rtol, atol=atol)
    if reduction == "none":
        rgrad = rgrad * np.reshape(g, (g.shape[0], 1) + g.shape[1:]) if z.ndim > 1 else rgrad * g
    np.testing.assert_allclose(grad, rgrad, rtol=rtol * 10, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_probability_targets_match_torch(smoothing, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 4, 3)).astype(dtype)
    probs = rng.dirichlet(np.ones(4), size=(6, 3)).transpose(0, 2, 1).astype(dtype)
    w = rng.uniform(0.5, 1.5, 4)
    for reduction in REDUCTIONS:
        tz, tloss = _torch_ce(torch, z, None, w, reduction, smoothing, probs)
        tloss.sum().backward()
        fn = CrossEntropyLoss(w, reduction=reduction, label_smoothing=smoothing, dtype=dtype)
        loss = fn.forward(z, probs)
        rtol, atol = _tols(dtype)
        np.testing.assert_allclose(loss, tloss.detach().numpy(), rtol=rtol, atol=atol)
        np.testing.assert_allclose(fn.backward(), tz.grad.numpy(), rtol=rtol * 10, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_path_equals_the_general_path(dtype):
    z, t, _ = _case((9, 10), dtype, seed=4)
    fused = CrossEntropyLoss(dtype=dtype)
    loss = fused.forward(z, t)
    assert fused._cache[0] == "fused"
    general = F.cross_entropy(z, t)
    np.testing.assert_allclose(loss, general, rtol=_tols(dtype)[0])
    np.testing.assert_allclose(fused.backward(), F.cross_entropy_backward(1.0, z, t),
                               rtol=_tols(dtype)[0] * 10, atol=_tols(dtype)[1])
    np.testing.assert_allclose(fused.backward(2.0), 2 * fused.backward(), rtol=1e-6)


def test_all_targets_ignored_gives_nan_as_torch():
    torch = pytest.importorskip("torch")
    z = np.ones((2, 3))
    t = np.array([-100, -100])
    want = torch.nn.CrossEntropyLoss()(torch.tensor(z), torch.tensor(t)).item()
    assert np.isnan(want) and np.isnan(F.cross_entropy(z, t))
    assert F.cross_entropy(z, t, reduction="sum") == 0.0


def test_ignore_index_may_be_a_valid_class():
    torch = pytest.importorskip("torch")
    z, t, _ = _case((8, 3), F64, seed=2)
    want = torch.nn.CrossEntropyLoss(ignore_index=1)(torch.tensor(z), torch.tensor(t)).item()
    np.testing.assert_allclose(F.cross_entropy(z, t, ignore_index=1), want, rtol=1e-13)


@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_cross_entropy_gradient_matches_finite_differences(smoothing, numerical_gradient,
                                                           relative_error):
    z, t, w = _case((4, 5, 3), F64, seed=6, ignore=True)
    fn = lambda a: F.cross_entropy(a, t, w, label_smoothing=smoothing)  # noqa: E731
    numeric = numerical_gradient(fn, z)
    analytic = F.cross_entropy_backward(1.0, z, t, w, label_smoothing=smoothing)
    assert relative_error(analytic, numeric) < 1e-7


def test_cross_entropy_l2_covers_weights_not_biases_and_backward_l2():
    z, t, _ = _case((5, 4), F64, seed=1)
    wdata, bdata = np.full((2, 2), 0.5), np.full(2, 3.0)
    params = [Parameter("w", wdata, np.zeros_like(wdata), decay=True),
              Parameter("b", bdata, np.zeros_like(bdata), decay=False)]
    fn = CrossEntropyLoss(l2=0.3, dtype=F64)
    loss = fn.forward(z, t, params)
    np.testing.assert_allclose(loss, F.cross_entropy(z, t) + 0.5 * 0.3 * 4 * 0.25, rtol=1e-13)
    fn.backward_l2()
    np.testing.assert_allclose(params[0].grad, 0.3 * wdata)
    np.testing.assert_array_equal(params[1].grad, 0)
    with pytest.raises(TypeError):
        CrossEntropyLoss(None, -100, "mean", 0.0, 0.1)  # l2 is keyword-only


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_matches_torch_and_log_softmax_composes_to_cross_entropy(shape, reduction,
                                                                          dtype):
    torch = pytest.importorskip("torch")
    z, t, w = _case(shape, dtype, seed=2, ignore=len(shape) > 1)
    logp = F.log_softmax(z, 0 if len(shape) == 1 else 1)
    tx = torch.tensor(logp, requires_grad=True)
    tloss = torch.nn.NLLLoss(weight=torch.tensor(w, dtype=tx.dtype), reduction=reduction)(
        tx, torch.tensor(t))
    tloss.sum().backward()
    fn = NLLLoss(w, reduction=reduction, dtype=dtype)
    loss = fn.forward(logp, t)
    rtol, atol = _tols(dtype)
    np.testing.assert_allclose(loss, tloss.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(fn.backward(), tx.grad.numpy(), rtol=rtol, atol=atol)
    rloss, rgrad = ref.nll_loss_ref(logp, t, w, reduction=reduction)
    np.testing.assert_allclose(loss, rloss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(fn.backward(), rgrad, rtol=rtol, atol=atol)
    np.testing.assert_allclose(loss, F.cross_entropy(z, t, w, reduction=reduction),
                               rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_matches_torch_and_twin(reduction, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    y = rng.standard_normal((3, 4, 5)).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    tloss = torch.nn.MSELoss(reduction=reduction)(tx, torch.tensor(y))
    g = rng.standard_normal(tloss.shape)
    tloss.backward(torch.tensor(g, dtype=tx.dtype) if reduction == "none" else None)
    fn = MSELoss(reduction, dtype=dtype)
    loss = fn.forward(x, y)
    grad = fn.backward(g if reduction == "none" else None)
    rtol, atol = _tols(dtype)
    np.testing.assert_allclose(loss, tloss.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=rtol, atol=atol)
    rloss, rgrad = ref.mse_loss_ref(x, y, reduction)
    np.testing.assert_allclose(loss, rloss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, rgrad * (g if reduction == "none" else 1), rtol=rtol,
                               atol=atol)


def test_mse_gradient_matches_finite_differences(numerical_gradient, relative_error):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    numeric = numerical_gradient(lambda a: F.mse_loss(a, y), x)
    assert relative_error(F.mse_loss_backward(1.0, x, y), numeric) < 1e-7


def test_read_only_and_non_contiguous_inputs():
    z, t, w = _case((6, 8), F64, seed=3)
    t = t % 4
    zt = np.asfortranarray(z)
    zt.setflags(write=False)
    np.testing.assert_array_equal(F.cross_entropy(zt, t, w), F.cross_entropy(z, t, w))
    np.testing.assert_array_equal(F.cross_entropy_backward(1.0, zt[:, ::2], t, w[::2]),
                                  F.cross_entropy_backward(1.0, z[:, ::2].copy(), t, w[::2]))


def test_trainer_style_use_is_unchanged():
    fn = CrossEntropyLoss(l2=0.0)
    z = np.zeros((4, 10), F32)
    loss = fn.forward(z, np.arange(4), ())
    np.testing.assert_allclose(loss, np.log(10), rtol=1e-6)
    assert fn.backward().shape == (4, 10)
    fn.backward_l2()
    assert "l2=0.0" in repr(fn)
    assert repr(nn.MSELoss("sum")) == "MSELoss(reduction='sum')"


BAD_LABELS = [
    pytest.param([0, 4, 1], ValueError, r"target 4 is out of bounds for 4 classes",
                 id="too-large"),
    pytest.param([0, -1, 1], ValueError, r"target -1 is out of bounds", id="negative"),
    pytest.param([0.0, np.nan, 1.0], ValueError, r"NaN", id="nan"),
    pytest.param([0.0, np.inf, 1.0], ValueError, r"inf", id="inf"),
    pytest.param([0.0, 1.5, 2.0], ValueError, r"whole numbers", id="float-non-integer"),
    pytest.param([[0], [1], [2]], ValueError, r"shape \(3,\).*got \(3, 1\)",
                 id="column-shape"),
    pytest.param([0, 1], ValueError, r"shape \(3,\).*got \(2,\)", id="too-few"),
    pytest.param(["a", "b", "c"], TypeError, r"integer class indices", id="strings"),
    pytest.param([True, False, True], TypeError, r"integer class indices.*bool", id="bool"),
]


@pytest.mark.parametrize("labels, exc, match", BAD_LABELS)
def test_cross_entropy_rejects_bad_labels(labels, exc, match):
    """(Moved from test_layers.py, messages now PyTorch's "target ... out of bounds".)"""
    with pytest.raises(exc, match=match):
        CrossEntropyLoss().forward(np.zeros((3, 4), dtype=F32), np.array(labels))


def test_one_d_logits_are_one_sample_as_torch():
    torch = pytest.importorskip("torch")
    z = np.array([0.5, -1.0, 2.0])
    want = torch.nn.CrossEntropyLoss()(torch.tensor(z), torch.tensor(2)).item()
    np.testing.assert_allclose(CrossEntropyLoss(dtype=F64).forward(z, 2), want, rtol=1e-14)
    with pytest.raises(ValueError, match=r"target must have shape \(\) to match input"):
        CrossEntropyLoss().forward(np.zeros(3, dtype=F32), [0])


@pytest.mark.parametrize("call, exc, match", [
    pytest.param(lambda: CrossEntropyLoss(reduction="avg"), ValueError,
                 r"reduction must be 'mean', 'sum' or 'none', got 'avg'", id="ce-reduction"),
    pytest.param(lambda: MSELoss("max"), ValueError, r"got 'max'", id="mse-reduction"),
    pytest.param(lambda: F.nll_loss(np.ones((2, 3)), [0, 1], reduction=None), ValueError,
                 r"reduction must be", id="nll-reduction"),
    pytest.param(lambda: CrossEntropyLoss(label_smoothing=1.5), ValueError,
                 r"label_smoothing must be in \[0, 1\], got 1.5", id="smoothing"),
    pytest.param(lambda: F.cross_entropy(np.ones((2, 3)), [0, 3]), ValueError,
                 r"target 3 is out of bounds for 3 classes", id="label-high"),
    pytest.param(lambda: F.cross_entropy(np.ones((2, 3)), [-1, 0]), ValueError,
                 r"target -1 is out of bounds", id="label-negative"),
    pytest.param(lambda: CrossEntropyLoss().forward(np.ones((2, 3), F32), [0, 5]), ValueError,
                 r"target 5 is out of bounds", id="layer-label"),
    pytest.param(lambda: F.nll_loss(np.ones((2, 3)), [0, 7], ignore_index=0), ValueError,
                 r"target 7 is out of bounds", id="nll-label"),
    pytest.param(lambda: F.cross_entropy(np.ones((2, 3)), [0, 1], weight=[1.0, 2.0]),
                 ValueError, r"weight must have shape \(3,\).*got \(2,\)", id="weight-shape"),
    pytest.param(lambda: CrossEntropyLoss(weight=[[1.0]]), ValueError, r"weight must be 1-D",
                 id="weight-2d"),
    pytest.param(lambda: F.cross_entropy(np.ones((2, 3)), [0, 1, 2]), ValueError,
                 r"target must have shape \(2,\)", id="target-shape"),
    pytest.param(lambda: F.cross_entropy(np.ones((2, 3)), [0.5, 1.0]), ValueError,
                 r"whole numbers", id="target-fraction"),
    pytest.param(lambda: F.cross_entropy(np.ones((2, 3)), np.array(["a", "b"])), TypeError,
                 r"class indices", id="target-dtype"),
    pytest.param(lambda: F.cross_entropy(np.array(1.0), 0), ValueError, r"at least 1 dim",
                 id="input-0d"),
    pytest.param(lambda: F.mse_loss(np.ones(3), np.ones(4)), ValueError,
                 r"target shape \(4,\) does not match input shape \(3,\)", id="mse-shape"),
    pytest.param(lambda: F.mse_loss_backward(np.ones(2), np.ones(3), np.ones(3)), ValueError,
                 r"grad_output must be a number", id="grad-output-mean"),
    pytest.param(lambda: F.cross_entropy_backward(np.ones(3), np.ones((2, 3)), [0, 1],
                                                  reduction="none"), ValueError,
                 r"grad_output must have shape \(2,\)", id="grad-output-none"),
    pytest.param(lambda: CrossEntropyLoss().backward(), RuntimeError, r"before forward",
                 id="backward-first"),
    pytest.param(lambda: CrossEntropyLoss(l2=-1), ValueError, r"l2 must be", id="l2"),
])
def test_validation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
