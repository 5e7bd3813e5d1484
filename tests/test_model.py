"""Tests of ``fastcnn.LeNet5``: shapes, summary, state_dict compatibility with PyTorch,
prediction helpers, a float64 gradient check, a training smoke test and bitwise-identical
training steps for 1, 2 and 3 threads."""

import numpy as np
import pytest

import fastcnn
from fastcnn import SGD, CrossEntropyLoss, LeNet5

F32, F64 = np.float32, np.float64
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]

PARAM_SHAPES = [
    ("0.weight", (6, 1, 5, 5)), ("0.bias", (6,)),
    ("3.weight", (16, 6, 5, 5)), ("3.bias", (16,)),
    ("6.weight", (120, 16, 5, 5)), ("6.bias", (120,)),
    ("9.weight", (84, 120)), ("9.bias", (84,)),
    ("11.weight", (10, 84)), ("11.bias", (10,)),
]


def _batch(n, dtype=F32, seed=0, size=32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, size, size)).astype(dtype), rng.integers(0, 10, n)


def _torch_lenet(torch, dtype):
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(), nn.Linear(120, 84),
        nn.ReLU(), nn.Linear(84, 10))
    return model.to(torch.float32 if dtype == F32 else torch.float64)


def _train_step(model, loss_fn, opt, x, labels):
    loss = loss_fn.forward(model.forward(x, copy=False), labels, params=model.parameters())
    model.backward(loss_fn.backward())
    loss_fn.backward_l2()
    opt.step()
    return loss


# --- structure -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [pytest.param(1, id="N1"), pytest.param(5, id="N5")])
def test_forward_shape_and_dtype(n, dtype):
    model = LeNet5(dtype=dtype)
    y = model.forward(_batch(n, dtype)[0])
    assert y.shape == (n, 10) and y.dtype == dtype
    assert all(p.data.dtype == p.grad.dtype == dtype for p in model.parameters())


def test_num_classes_sets_the_last_layer():
    model = LeNet5(num_classes=7)
    assert model.forward(_batch(2)[0]).shape == (2, 7)
    assert model.state_dict()["11.weight"].shape == (7, 84)


def _summary_rows():
    text = str(LeNet5().summary(print_fn=None))
    rows = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        key = parts[0] if parts[0] != "total" else "total"
        rows[key] = (int(parts[-2].replace(",", "")), int(parts[-1].replace(",", "")))
    return text, rows


def test_summary_totals():
    text, rows = _summary_rows()
    assert rows["total"] == (61_706, 416_520)
    assert "61,706" in text and "416,520" in text


@pytest.mark.parametrize("index, params, macs", [
    pytest.param("0", 156, 117_600, id="C1"),
    pytest.param("3", 2_416, 240_000, id="C3"),
    pytest.param("6", 48_120, 48_000, id="C5"),
    pytest.param("9", 10_164, 10_080, id="F6"),
    pytest.param("11", 850, 840, id="F7"),
    pytest.param("2", 0, 0, id="S2"),
])
def test_summary_per_layer(index, params, macs):
    _, rows = _summary_rows()
    assert rows[index] == (params, macs)


def test_summary_prints_by_default(capsys):
    text = str(LeNet5().summary())
    assert capsys.readouterr().out.strip() == text.strip()
    assert len(text.splitlines()) == 14  # header, 12 layers, total


def test_summary_rows_kept_in_fastcnn_model():
    from fastcnn.model import summary_rows

    rows = summary_rows(LeNet5(), (1, 32, 32))
    assert len(rows) == 12 and rows[0][2:] == ((6, 28, 28), 156, 117_600)
    assert sum(r[3] for r in rows) == 61_706 and sum(r[4] for r in rows) == 416_520


def test_summary_rows_and_totals_as_data():
    result = LeNet5().summary(print_fn=None)
    assert (result.total_params, result.total_macs) == (61_706, 416_520)
    assert [r["output_shape"] for r in result.rows][:3] == [(6, 28, 28), (6, 28, 28), (6, 14, 14)]
    assert result.rows[8]["output_shape"] == (120,) and result.rows[-1]["output_shape"] == (10,)
    assert sum(r["params"] for r in result.rows) == sum(p.data.size for p in
                                                        LeNet5().parameters())


def test_state_dict_keys_order_and_shapes():
    state = LeNet5().state_dict()
    assert [(k, v.shape) for k, v in state.items()] == PARAM_SHAPES


def test_state_dict_matches_torch_sequential_keys_order_and_shapes():
    torch = pytest.importorskip("torch")
    tstate = _torch_lenet(torch, F32).state_dict()
    ours = LeNet5().state_dict()
    assert list(ours) == list(tstate)
    assert [v.shape for v in ours.values()] == [tuple(v.shape) for v in tstate.values()]


def test_state_dict_returns_copies():
    model = LeNet5()
    state = model.state_dict()
    state["0.weight"][...] = 0
    assert np.any(model.state_dict()["0.weight"] != 0)


def test_seed_reproducible_and_distinct():
    a, b, c = LeNet5(seed=0), LeNet5(seed=0), LeNet5(seed=1)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(),
                               c.state_dict().values()):
        np.testing.assert_array_equal(va, vb, err_msg=k)
        if k.endswith("weight"):
            assert not np.array_equal(va, vc), k
    # Each layer has its own stream: same-seeded draws would be proportional (correlation 1).
    w0, w3 = (a.state_dict()[f"{i}.weight"].ravel()[:150] for i in (0, 3))
    assert abs(np.corrcoef(w0, w3)[0, 1]) < 0.5


def test_first_conv_skips_input_gradient():
    model = LeNet5()
    x, labels = _batch(3)
    loss_fn = CrossEntropyLoss()
    loss_fn.forward(model.forward(x), labels)
    assert model.layers[0].compute_input_grad is False
    assert model.backward(loss_fn.backward()) is None
    assert np.any(model.layers[0].grads["weight"] != 0)


# --- PyTorch compatibility -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_our_weights_in_torch_give_same_logits_and_gradients(dtype):
    torch = pytest.importorskip("torch")
    model = LeNet5(dtype=dtype, seed=3)
    rng = np.random.default_rng(1)
    for p in model.parameters():  # non-zero biases, so that bias handling is checked too
        if not p.is_weight:
            p.data[...] = 0.05 * rng.standard_normal(p.data.shape)
    tmodel = _torch_lenet(torch, dtype)
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x, labels = _batch(8, dtype, seed=2)
    logits = model.forward(x)
    loss_fn = CrossEntropyLoss(dtype=dtype)
    loss = loss_fn.forward(logits, labels)
    model.backward(loss_fn.backward())
    tlogits = tmodel(torch.from_numpy(x))
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(labels))
    tloss.backward()
    rtol = 1e-4 if dtype == F32 else 1e-10
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=rtol,
                               atol=rtol * np.abs(logits).max())
    assert loss == pytest.approx(tloss.item(), rel=rtol)
    tgrads = dict(tmodel.named_parameters())
    for p in model.parameters():
        expected = tgrads[p.name].grad.numpy()
        np.testing.assert_allclose(p.grad, expected, rtol=rtol,
                                   atol=rtol * np.abs(expected).max(), err_msg=p.name)


@pytest.mark.parametrize("source", ["state_dict", "named_parameters-requires-grad"])
def test_load_state_dict_from_torch_tensors(source):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = _torch_lenet(torch, F32)
    model = LeNet5(seed=5)
    model.load_state_dict(tmodel.state_dict() if source == "state_dict" else
                          dict(tmodel.named_parameters()))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, tmodel.state_dict()[k].numpy(), err_msg=k)
    x, _ = _batch(4, seed=3)
    np.testing.assert_allclose(model.forward(x), tmodel(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-6)


def test_load_state_dict_casts_float64_into_float32_model():
    model = LeNet5()
    state = {k: v.astype(F64) * 2 for k, v in LeNet5(seed=4).state_dict().items()}
    model.load_state_dict(state)
    for k, v in model.state_dict().items():
        assert v.dtype == F32
        np.testing.assert_array_equal(v, state[k].astype(F32), err_msg=k)


def _bad_state(kind):
    """A state dict from another seed (so a partial load would show) with one defect."""
    state = LeNet5(seed=9).state_dict()
    if kind == "missing-key":
        del state["11.bias"]
    elif kind == "unexpected-key":
        state["12.weight"] = np.zeros((1, 1), dtype=F32)
    elif kind == "wrong-shape-last":
        state["11.weight"] = np.zeros((10, 85), dtype=F32)
    elif kind == "wrong-shape-first":
        state["0.weight"] = np.zeros((6, 1, 3, 3), dtype=F32)
    return state


@pytest.mark.parametrize("kind, exc, match", [
    pytest.param("missing-key", KeyError, r"missing keys \['11\.bias'\]", id="missing-key"),
    pytest.param("unexpected-key", KeyError, r"unexpected keys \['12\.weight'\]",
                 id="unexpected-key"),
    pytest.param("wrong-shape-last", ValueError, r"11\.weight.*\(10, 85\)", id="wrong-shape-last"),
    pytest.param("wrong-shape-first", ValueError, r"0\.weight.*\(6, 1, 3, 3\)",
                 id="wrong-shape-first"),
])
def test_load_state_dict_rejects_bad_state_and_leaves_weights_unchanged(kind, exc, match):
    model = LeNet5(seed=0)
    before = model.state_dict()
    with pytest.raises(exc, match=match):
        model.load_state_dict(_bad_state(kind))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_load_state_dict_non_strict_loads_the_keys_present():
    model = LeNet5(seed=0)
    before = model.state_dict()
    state = _bad_state("missing-key")
    model.load_state_dict(state, strict=False)
    after = model.state_dict()
    np.testing.assert_array_equal(after["11.bias"], before["11.bias"])
    np.testing.assert_array_equal(after["0.weight"], state["0.weight"])


# --- prediction ----------------------------------------------------------------------------------


def test_predict_proba_rows_are_softmax_of_logits():
    model = LeNet5(seed=1)
    x, _ = _batch(6, seed=4)
    proba = model.predict_proba(x)
    assert proba.shape == (6, 10) and proba.dtype == F32
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    z = model.forward(x).astype(F64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(proba, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_predict_is_argmax_of_proba():
    model = LeNet5(seed=1)
    x, _ = _batch(20, seed=5)
    pred = model.predict(x)
    assert pred.shape == (20,) and pred.dtype.kind == "i"
    np.testing.assert_array_equal(pred, model.predict_proba(x).argmax(axis=1))
    assert len(set(pred.tolist())) > 1, "degenerate test: every prediction is the same class"


@pytest.mark.parametrize("layout", [pytest.param("N1HW", id="Nx1x28x28"),
                                    pytest.param("NHW", id="Nx28x28")])
def test_28x28_inputs_are_zero_padded_to_32x32(layout):
    model = LeNet5(seed=2)
    x28, _ = _batch(7, seed=6, size=28)
    x32 = np.pad(x28, ((0, 0), (0, 0), (2, 2), (2, 2)))
    x_in = x28[:, 0] if layout == "NHW" else x28
    np.testing.assert_array_equal(model.predict_proba(x_in), model.predict_proba(x32))
    np.testing.assert_array_equal(model.predict(x_in), model.predict(x32))


def test_predict_in_batches_equals_one_batch():
    model = LeNet5(seed=2)
    x, _ = _batch(10, seed=7)
    np.testing.assert_array_equal(model.predict_proba(x, batch_size=3),
                                  model.predict_proba(x, batch_size=1024))
    np.testing.assert_array_equal(model.predict(x, batch_size=4), model.predict(x))


@pytest.mark.parametrize("shape, match", [
    pytest.param((2, 1, 30, 30), r"LeNet5 expects images of 32x32 \(or 28x28, padded to it\)",
                 id="30x30"),
    pytest.param((2, 3, 32, 32), r"LeNet5 expects images with 1 channel", id="3-channels"),
    pytest.param((32, 32), r"LeNet5 expects images of shape \(N, H, W\) or \(N, C, H, W\)",
                 id="2-D")])
def test_predict_rejects_other_image_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        LeNet5().predict(np.zeros(shape, dtype=F32))


# --- float64 gradients and training --------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name, _ in PARAM_SHAPES])
def test_float64_directional_derivative_matches_central_difference(name):
    # d/dt L(theta + t v) at t = 0 equals <grad, v>, for a random direction v of one parameter.
    model = LeNet5(dtype=F64, seed=7)
    x, labels = _batch(4, F64, seed=8)
    loss_fn = CrossEntropyLoss(l2=0.01, dtype=F64)
    params = {p.name: p for p in model.parameters()}
    loss_fn.forward(model.forward(x), labels, params=model.parameters())
    model.backward(loss_fn.backward())
    loss_fn.backward_l2()
    p = params[name]
    v = np.random.default_rng(9).standard_normal(p.data.shape)
    v /= np.linalg.norm(v)
    analytic = float(np.vdot(p.grad, v))
    theta, h = p.data.copy(), 1e-5
    losses = []
    for sign in (1, -1):
        p.data[...] = theta + sign * h * v
        losses.append(loss_fn.forward(model.forward(x), labels, params=model.parameters()))
    p.data[...] = theta
    numeric = (losses[0] - losses[1]) / (2 * h)
    assert abs(analytic - numeric) <= 1e-6 * max(abs(analytic), abs(numeric))


def test_float64_model_close_to_float32_model():
    m32, m64 = LeNet5(dtype=F32, seed=3), LeNet5(dtype=F64, seed=3)
    m64.load_state_dict(m32.state_dict())
    x, _ = _batch(5, F64, seed=10)
    y64 = m64.forward(x)
    y32 = m32.forward(x.astype(F32))
    assert y64.dtype == F64
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5 * np.abs(y64).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_few_sgd_steps_lower_the_loss(dtype):
    model = LeNet5(dtype=dtype, seed=0)
    x, labels = _batch(32, dtype, seed=11)
    loss_fn = CrossEntropyLoss(dtype=dtype)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = [_train_step(model, loss_fn, opt, x, labels) for _ in range(8)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


# --- determinism across thread counts ------------------------------------------------------------


@pytest.fixture
def threads():
    """``fastcnn.set_num_threads``; goes back to the default thread count after the test."""
    yield fastcnn.set_num_threads
    fastcnn.set_num_threads(None)


def _three_steps(set_threads, n_threads):
    set_threads(n_threads)
    model = LeNet5(seed=12)
    x, labels = _batch(32, seed=13)
    loss_fn = CrossEntropyLoss(l2=1e-3)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    losses = [_train_step(model, loss_fn, opt, x, labels) for _ in range(3)]
    return losses, model.state_dict()


@pytest.mark.parametrize("n_threads", [2, 3])
def test_training_steps_bitwise_identical_for_any_thread_count(threads, n_threads):
    losses1, state1 = _three_steps(threads, 1)
    losses_n, state_n = _three_steps(threads, n_threads)
    assert fastcnn.get_num_threads() == n_threads
    assert losses_n == losses1
    for k, v in state1.items():
        np.testing.assert_array_equal(state_n[k], v, err_msg=k)
