"""Tests of the optimisers (``fastcnn.optim``): SGD and Adam match ``torch.optim`` step by step
on a float64 LeNet-5, reject bad hyper-parameters, resume identically from ``state_dict`` and do
not allocate per step."""

import json
import tracemalloc

import numpy as np
import pytest

from fastcnn import SGD, Adam, CrossEntropyLoss, LeNet5
from fastcnn.nn import Parameter
from fastcnn.optim import AdamW

F32, F64 = np.float32, np.float64


def _batch(n, dtype=F64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 32, 32)).astype(dtype), rng.integers(0, 10, n)


def _torch_lenet(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(), nn.Linear(120, 84),
        nn.ReLU(), nn.Linear(84, 10)).to(torch.float64)


def _step(model, loss_fn, opt, x, labels, copy=True):
    loss = loss_fn.forward(model.forward(x, copy=copy), labels)
    model.backward(loss_fn.backward())
    opt.step()
    return loss


# name: (fastcnn class, torch.optim class name, keyword arguments shared by both)
CONFIGS = {
    "sgd": (SGD, "SGD", {"lr": 0.1}),
    "sgd-momentum": (SGD, "SGD", {"lr": 0.05, "momentum": 0.9}),
    "sgd-nesterov": (SGD, "SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True}),
    "sgd-weight-decay": (SGD, "SGD", {"lr": 0.1, "weight_decay": 0.05}),
    "sgd-momentum-weight-decay": (SGD, "SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    "sgd-nesterov-weight-decay": (SGD, "SGD", {"lr": 0.05, "momentum": 0.7, "nesterov": True,
                                                   "weight_decay": 0.02}),
    "adam": (Adam, "Adam", {"lr": 1e-3}),
    "adam-betas-eps": (Adam, "Adam", {"lr": 5e-3, "betas": (0.8, 0.99), "eps": 1e-6}),
    "adam-weight-decay": (Adam, "Adam", {"lr": 2e-3, "weight_decay": 0.05}),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_torch_optim_over_several_steps(config):
    """A float64 LeNet-5 trained with model.param_groups(weight_decay) follows torch.optim given
    the same groups (weights decayed, biases not)."""
    torch = pytest.importorskip("torch")
    cls, torch_name, kwargs = CONFIGS[config]
    model = LeNet5(dtype=F64, seed=1)
    rng = np.random.default_rng(2)
    for p in model.parameters():  # non-zero biases: they must not be decayed
        if not p.decay:
            p.data[...] = 0.05 * rng.standard_normal(p.data.shape)
    tmodel = _torch_lenet(torch)
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    kwargs = dict(kwargs)
    decay = kwargs.pop("weight_decay", 0.0)
    tparams = dict(tmodel.named_parameters())
    groups = model.param_groups(decay)
    topt = getattr(torch.optim, torch_name)(
        [{"params": [tparams[p.name] for p in g["params"]], "weight_decay": g["weight_decay"]}
         for g in groups], **kwargs)
    opt = cls(groups, **kwargs)
    loss_fn = CrossEntropyLoss(dtype=F64)
    for step in range(5):
        x, labels = _batch(8, seed=10 + step)
        loss = _step(model, loss_fn, opt, x, labels)
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)),
                                                  torch.from_numpy(labels))
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-10), f"step {step}"
    for p in model.parameters():
        expected = tparams[p.name].detach().numpy()
        np.testing.assert_allclose(p.data, expected, rtol=1e-9, atol=1e-11, err_msg=p.name)


def _fake_params(rng, shapes=((3, 4), (5,), (2, 3, 3), (7,))):
    params = []
    for i, shape in enumerate(shapes):
        params.append(Parameter(f"p{i}", rng.standard_normal(shape), np.zeros(shape),
                                decay=len(shape) > 1))
    return params


# name: (fastcnn class, torch class name, defaults, per-group overrides for the two groups)
GROUP_CONFIGS = {
    "sgd": (SGD, "SGD", {"lr": 0.1}, [{"weight_decay": 0.05}, {"lr": 0.3}]),
    "sgd-momentum-dampening": (SGD, "SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
                               [{"weight_decay": 0.01}, {"momentum": 0.5, "lr": 0.2}]),
    "sgd-nesterov": (SGD, "SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True,
                                  "weight_decay": 0.02}, [{}, {"weight_decay": 0.0}]),
    "adam": (Adam, "Adam", {"lr": 1e-2}, [{"weight_decay": 0.1}, {"betas": (0.8, 0.99)}]),
    "adam-amsgrad": (Adam, "Adam", {"lr": 5e-3, "eps": 1e-6, "amsgrad": True},
                     [{"lr": 1e-2}, {"weight_decay": 0.05, "amsgrad": False}]),
    "adamw": (AdamW, "AdamW", {"lr": 1e-2}, [{"weight_decay": 0.1}, {"weight_decay": 0.0}]),
    "adamw-amsgrad": (AdamW, "AdamW", {"lr": 2e-2, "amsgrad": True}, [{}, {"lr": 1e-3}]),
}


@pytest.mark.parametrize("config", list(GROUP_CONFIGS))
def test_parameter_groups_match_torch_optim_to_rounding(config):
    """Given the same gradients, every group follows torch.optim to ~1e-15 over several steps."""
    torch = pytest.importorskip("torch")
    cls, torch_name, defaults, overrides = GROUP_CONFIGS[config]
    rng = np.random.default_rng(3)
    params = _fake_params(rng)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    split = [params[:2], params[2:]]
    tsplit = [tparams[:2], tparams[2:]]
    opt = cls([dict(o, params=g) for o, g in zip(overrides, split)], **defaults)
    topt = getattr(torch.optim, torch_name)(
        [dict(o, params=g) for o, g in zip(overrides, tsplit)], **defaults)
    for _ in range(6):
        for p, t in zip(params, tparams):
            p.grad[...] = rng.standard_normal(p.grad.shape)
            t.grad = torch.from_numpy(p.grad.copy())
        opt.step()
        topt.step()
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=2e-15, atol=1e-16,
                                   err_msg=p.name)
    for g, tg in zip(opt.param_groups, topt.param_groups):
        for key in opt.defaults:
            assert g[key] == tg[key], key


def test_param_groups_weight_decay_applies_to_the_whole_group():
    rng = np.random.default_rng(4)
    params = _fake_params(rng)
    before = [p.data.copy() for p in params]
    SGD([{"params": params[:1], "weight_decay": 0.5}, {"params": params[1:]}], lr=0.1).step()
    np.testing.assert_array_equal(params[0].data, before[0] - 0.1 * (0.5 * before[0]))
    for p, b in zip(params[1:], before[1:]):
        np.testing.assert_array_equal(p.data, b)  # zero gradient, no decay
    # A plain list decays every parameter, biases included (as PyTorch).
    params = _fake_params(rng)
    bias = params[1].data.copy()
    SGD(params, lr=0.1, weight_decay=0.5).step()
    np.testing.assert_array_equal(params[1].data, bias - 0.1 * (0.5 * bias))


def test_model_param_groups_feed_the_optimizer():
    model = LeNet5(seed=0)
    opt = SGD(model.param_groups(5e-4), lr=0.1, momentum=0.9)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    assert {p.name for p in opt.param_groups[1]["params"]} == {
        p.name for p in model.parameters() if not p.decay}
    assert opt.params == [p for g in opt.param_groups for p in g["params"]]
    opt.lr = 0.02
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.02] and opt.lr == 0.02


def test_sgd_plain_step_is_w_minus_lr_grad():
    model = LeNet5(dtype=F64, seed=3)
    x, labels = _batch(4, seed=4)
    loss_fn = CrossEntropyLoss(dtype=F64)
    loss_fn.forward(model.forward(x), labels)
    model.backward(loss_fn.backward())
    expected = {p.name: p.data - 0.1 * p.grad for p in model.parameters()}
    SGD(model.parameters(), lr=0.1).step()
    for p in model.parameters():
        np.testing.assert_array_equal(p.data, expected[p.name], err_msg=p.name)


def test_weight_decay_equals_cross_entropy_l2():
    # SGD(weight_decay=l2) and CrossEntropyLoss(l2=l2) + backward_l2() give the same update.
    a, b = LeNet5(dtype=F64, seed=5), LeNet5(dtype=F64, seed=5)
    x, labels = _batch(4, seed=6)
    opt_a = SGD(a.param_groups(0.03), lr=0.1, momentum=0.9)
    opt_b = SGD(b.parameters(), lr=0.1, momentum=0.9)
    loss_a, loss_b = CrossEntropyLoss(dtype=F64), CrossEntropyLoss(l2=0.03, dtype=F64)
    for _ in range(2):
        _step(a, loss_a, opt_a, x, labels)
        loss_b.forward(b.forward(x), labels, params=b.parameters())
        b.backward(loss_b.backward())
        loss_b.backward_l2()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-13, atol=1e-15, err_msg=p.name)


# --- validation ----------------------------------------------------------------------------------


def _params():
    return LeNet5(seed=0).parameters()


BAD_OPTIMIZERS = [
    pytest.param(lambda: SGD(_params(), lr=0), ValueError, r"lr must be .*got 0\.0", id="sgd-lr-0"),
    pytest.param(lambda: SGD(_params(), lr=-0.1), ValueError, r"lr .*got -0\.1",
                 id="sgd-lr-negative"),
    pytest.param(lambda: SGD(_params(), lr=float("nan")), ValueError, r"lr .*got nan",
                 id="sgd-lr-nan"),
    pytest.param(lambda: SGD(_params(), lr="fast"), TypeError, r"lr must be a number.*'fast'",
                 id="sgd-lr-string"),
    pytest.param(lambda: SGD(_params(), lr=0.1, momentum=1.0), ValueError,
                 r"momentum must be in \[0\.0, 1\.0\), got 1\.0", id="sgd-momentum-1"),
    pytest.param(lambda: SGD(_params(), lr=0.1, momentum=-0.5), ValueError, r"momentum .*-0\.5",
                 id="sgd-momentum-negative"),
    pytest.param(lambda: SGD(_params(), lr=0.1, weight_decay=-1e-4), ValueError,
                 r"weight_decay .*got -0\.0001", id="sgd-weight-decay-negative"),
    pytest.param(lambda: SGD(_params(), lr=0.1, nesterov=True), ValueError,
                 r"nesterov=True needs momentum > 0", id="sgd-nesterov-without-momentum"),
    pytest.param(lambda: Adam(_params(), lr=0), ValueError, r"lr .*got 0\.0", id="adam-lr-0"),
    pytest.param(lambda: Adam(_params(), betas=(1.0, 0.999)), ValueError,
                 r"betas\[0\] must be in \[0\.0, 1\.0\), got 1\.0", id="adam-beta1-1"),
    pytest.param(lambda: Adam(_params(), betas=(0.9, 1.0)), ValueError, r"betas\[1\] .*got 1\.0",
                 id="adam-beta2-1"),
    pytest.param(lambda: Adam(_params(), betas=(-0.1, 0.999)), ValueError,
                 r"betas\[0\] .*got -0\.1", id="adam-beta1-negative"),
    pytest.param(lambda: Adam(_params(), betas=(0.9,)), ValueError, r"betas must be a pair",
                 id="adam-betas-not-a-pair"),
    pytest.param(lambda: Adam(_params(), eps=0.0), ValueError, r"eps .*got 0\.0", id="adam-eps-0"),
    pytest.param(lambda: Adam(_params(), weight_decay=-1.0), ValueError, r"weight_decay .*-1\.0",
                 id="adam-weight-decay-negative"),
    pytest.param(lambda: SGD([np.zeros(3)], lr=0.1), TypeError, r"list of Parameter",
                 id="params-arrays"),
    pytest.param(lambda: SGD([], lr=0.1), TypeError, r"non-empty list of Parameter",
                 id="params-empty"),
    pytest.param(lambda: Adam(LeNet5(), lr=0.1), TypeError, r"list of Parameter",
                 id="params-model-instead-of-parameters"),
    pytest.param(lambda: SGD(_params() + [None], lr=0.1), TypeError, r"list of Parameter",
                 id="params-with-none"),
    pytest.param(lambda: SGD([{"params": _params(), "momentum": 0.9, "lr_decay": 1}], lr=0.1),
                 ValueError, r"unknown setting\(s\) \['lr_decay'\]", id="group-unknown-key"),
    pytest.param(lambda: SGD([{"lr": 0.1}], lr=0.1), TypeError, r"'params' list",
                 id="group-without-params"),
    pytest.param(lambda: SGD([{"params": []}], lr=0.1), TypeError, r"non-empty list",
                 id="group-empty"),
    pytest.param(lambda: SGD([{"params": _params()[:2]}, {"params": _params()[1:3]}], lr=0.1),
                 ValueError, r"parameter '0\.bias' appears in more than one", id="group-duplicate"),
    pytest.param(lambda: SGD([{"params": _params(), "lr": -1}], lr=0.1), ValueError,
                 r"lr must be .*got -1\.0", id="group-bad-lr"),
    pytest.param(lambda: SGD(_params(), lr=0.1, dampening=1.5), ValueError,
                 r"dampening must be in \[0\.0, 1\.0\], got 1\.5", id="sgd-dampening"),
    pytest.param(lambda: SGD(_params(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
                 ValueError, r"nesterov=True needs momentum > 0 and dampening = 0",
                 id="sgd-nesterov-dampening"),
    pytest.param(lambda: Adam(_params(), amsgrad="yes"), TypeError, r"amsgrad must be a bool",
                 id="adam-amsgrad-string"),
    pytest.param(lambda: SGD([_params()[0], {"params": _params()[1:]}], lr=0.1), TypeError,
                 r"not a mix", id="params-mixed"),
]


@pytest.mark.parametrize("make, exc, match", BAD_OPTIMIZERS)
def test_invalid_hyper_parameters_raise(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_params_may_be_any_iterable_of_parameters():
    model = LeNet5(seed=0)
    opt = SGD((p for p in model.parameters()), lr=0.1)
    assert len(opt.params) == 10


# --- state_dict / load_state_dict --------------------------------------------------------------


RESUME_CONFIGS = {
    "sgd": (SGD, {"lr": 0.1}),
    "sgd-momentum": (SGD, {"lr": 0.05, "momentum": 0.9}),
    "sgd-nesterov-weight-decay": (SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True,
                                            "weight_decay": 0.01}),
    "adam": (Adam, {"lr": 1e-3}),
    "adam-weight-decay": (Adam, {"lr": 2e-3, "betas": (0.8, 0.99), "weight_decay": 0.01}),
    "adamw-amsgrad": (AdamW, {"lr": 2e-3, "amsgrad": True}),
}


def _train(model, opt, steps, first):
    loss_fn = CrossEntropyLoss(dtype=F64)
    for step in range(first, first + steps):
        x, labels = _batch(4, seed=100 + step)
        _step(model, loss_fn, opt, x, labels)


@pytest.mark.parametrize("config", list(RESUME_CONFIGS))
def test_state_dict_round_trip_continues_identically(config):
    cls, kwargs = RESUME_CONFIGS[config]
    straight = LeNet5(dtype=F64, seed=7)
    _train(straight, cls(straight.parameters(), **kwargs), 5, first=0)

    model = LeNet5(dtype=F64, seed=7)
    opt = cls(model.parameters(), **kwargs)
    _train(model, opt, 3, first=0)
    arrays, info = opt.state_dict()
    info = json.loads(json.dumps(info))  # checkpoints store the settings as JSON
    # Resume in a fresh model and optimiser, as from a checkpoint file.
    resumed = LeNet5(dtype=F64, seed=99)
    resumed.load_state_dict(model.state_dict())
    opt2 = cls(resumed.parameters(), **kwargs)
    opt2.load_state_dict(arrays, info)
    assert opt2.steps == 3
    _train(resumed, opt2, 2, first=3)
    for (k, v), expected in zip(resumed.state_dict().items(), straight.state_dict().values()):
        np.testing.assert_array_equal(v, expected, err_msg=k)


def test_state_dict_round_trip_restores_group_settings():
    model = LeNet5(dtype=F64, seed=7)
    opt = SGD([{"params": model.param_groups(1e-3)[0]["params"], "lr": 0.3},
               {"params": model.param_groups(1e-3)[1]["params"], "momentum": 0.5}],
              lr=0.1, momentum=0.9)
    _train(model, opt, 2, first=0)
    arrays, info = opt.state_dict()
    info = json.loads(json.dumps(info))
    assert [g["lr"] for g in info["param_groups"]] == [0.3, 0.1]
    fresh = SGD(model.param_groups(), lr=0.01, momentum=0.9)
    fresh.load_state_dict(arrays, info)
    assert [(g["lr"], g["momentum"]) for g in fresh.param_groups] == [(0.3, 0.9), (0.1, 0.5)]
    one_group = SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="2 parameter groups, this optimizer 1"):
        one_group.load_state_dict(arrays, info)


def test_state_saved_before_parameter_groups_still_loads():
    """Checkpoints written before parameter groups hold one set of settings (weight decay on
    weights only) and no "param_groups"; they resume an optimiser built on param_groups()."""
    straight = LeNet5(dtype=F64, seed=7)
    _train(straight, SGD(straight.param_groups(0.01), lr=0.05, momentum=0.9), 4, first=0)
    model = LeNet5(dtype=F64, seed=7)
    opt = SGD(model.param_groups(0.01), lr=0.05, momentum=0.9)
    _train(model, opt, 2, first=0)
    arrays, _ = opt.state_dict()
    old_info = {"type": "SGD", "lr": 0.05, "steps": 2, "weight_decay": 0.01, "momentum": 0.9,
                "nesterov": False}
    resumed = LeNet5(dtype=F64, seed=1)
    resumed.load_state_dict(model.state_dict())
    opt2 = SGD(resumed.param_groups(0.01), lr=0.5, momentum=0.9)
    assert opt2.settings_by_param(old_info) == opt2.settings_by_param()
    opt2.load_state_dict(arrays, old_info)
    assert opt2.steps == 2 and opt2.lr == 0.05
    _train(resumed, opt2, 2, first=2)
    for (k, v), expected in zip(resumed.state_dict().items(), straight.state_dict().values()):
        np.testing.assert_array_equal(v, expected, err_msg=k)


def test_state_dict_holds_copies_of_the_slots():
    model = LeNet5(dtype=F64, seed=8)
    opt = Adam(model.parameters())
    _train(model, opt, 1, first=0)
    arrays, info = opt.state_dict()
    assert set(arrays) == {f"{p.name}.{slot}" for p in model.parameters()
                           for slot in ("exp_avg", "exp_avg_sq")}
    assert info["type"] == "Adam" and info["steps"] == 1
    saved = {k: v.copy() for k, v in arrays.items()}
    for v in arrays.values():
        v[...] = 0
    again, _ = opt.state_dict()
    for k, v in again.items():
        np.testing.assert_array_equal(v, saved[k], err_msg=k)


def test_load_state_dict_of_another_optimizer_type_raises():
    model = LeNet5(seed=0)
    arrays, info = SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()
    with pytest.raises(ValueError, match=r"optimizer state is for SGD, not Adam"):
        Adam(model.parameters()).load_state_dict(arrays, info)


def test_load_state_dict_with_wrong_shape_raises():
    model = LeNet5(seed=0)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    _, info = opt.state_dict()
    with pytest.raises(ValueError, match=r"'0\.weight\.momentum' does not match"):
        opt.load_state_dict({"0.weight.momentum": np.zeros((6, 1, 3, 3), dtype=F32)}, info)


# --- allocation --------------------------------------------------------------------------------


ALLOC_CONFIGS = {
    "sgd-nesterov-weight-decay": lambda p: SGD(p, lr=0.01, momentum=0.9, nesterov=True,
                                               weight_decay=1e-4),
    "adam-weight-decay": lambda p: Adam(p, lr=1e-3, weight_decay=1e-4),
}


def _alloc_setup(config):
    model = LeNet5(seed=0)
    x, labels = _batch(32, F32, seed=9)
    loss_fn = CrossEntropyLoss()
    opt = ALLOC_CONFIGS[config](model.parameters())
    return lambda: _step(model, loss_fn, opt, x, labels, copy=False)


@pytest.mark.parametrize("config", list(ALLOC_CONFIGS))
def test_no_allocation_growth_over_training_steps(config):
    step = _alloc_setup(config)
    tracemalloc.start()
    try:
        for _ in range(3):
            step()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            step()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024, f"traced memory grew by {after - before} bytes"


@pytest.mark.parametrize("config", list(ALLOC_CONFIGS))
def test_steady_state_step_has_no_large_transient_allocation(config):
    # DESIGN.md section 7: no allocation in the hot path once the batch shape is known. Nothing
    # allocated during one step may be live at the same time beyond 64 KiB (the loss's (32, 10)
    # temporaries and a step's Python objects are far below; C1's output alone is 588 KiB).
    step = _alloc_setup(config)
    tracemalloc.start()
    try:
        for _ in range(3):
            step()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - before < 64 * 1024, f"a step allocated up to {peak - before} bytes at once"


# -- the whole-group update over Sequential's packed parameter buffer ------------------------

def _unpacked(model):
    """The model with every parameter and gradient moved to an array of its own (what the
    optimiser sees for a layer outside a Sequential): it must update them one by one."""
    for layer in model:
        for key in list(layer.params):
            layer.params[key] = layer.params[key].copy()
            layer.grads[key] = layer.grads[key].copy()
    return model


def _lenet5(pack, dtype, seed):
    """LeNet-5 with its parameters packed as a Sequential packs them, or ``_unpacked``."""
    model = LeNet5(dtype=dtype, seed=seed)
    return model if pack else _unpacked(model)


FLAT_CONFIGS = {
    "sgd": lambda ps: SGD(ps, lr=0.1),
    "sgd-momentum": lambda ps: SGD(ps, lr=0.05, momentum=0.9),
    "sgd-dampening-decay": lambda ps: SGD(ps, lr=0.05, momentum=0.5, dampening=0.3,
                                          weight_decay=0.01),
    "sgd-nesterov": lambda ps: SGD(ps, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02),
    "adam-amsgrad": lambda ps: Adam(ps, lr=2e-3, weight_decay=0.05, amsgrad=True),
    "adamw": lambda ps: AdamW(ps, lr=2e-3, betas=(0.8, 0.99)),
}


@pytest.mark.parametrize("groups", ["parameters", "param_groups"])
@pytest.mark.parametrize("config", list(FLAT_CONFIGS))
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_whole_group_update_is_bitwise_the_per_parameter_update(config, groups, dtype):
    x, labels = _batch(5, dtype, seed=3)
    results = []
    for pack in (True, False):
        model = _lenet5(pack, dtype, seed=4)
        params = model.parameters() if groups == "parameters" else model.param_groups(0.01)
        opt = FLAT_CONFIGS[config](params)
        loss_fn = CrossEntropyLoss()
        for _ in range(4):
            _step(model, loss_fn, opt, x, labels, copy=False)
        kinds = {type(t).__name__ for g in opt.param_groups for t in opt._targets(g)}
        assert kinds == ({"_Flat"} if pack else {"_Single"})
        results.append((model.state_dict(), opt.state_dict()[0]))
    (ms1, os1), (ms2, os2) = results
    assert list(ms1) == list(ms2) and sorted(os1) == sorted(os2)
    assert os1 or config == "sgd"  # plain SGD keeps no state
    for key in ms1:
        assert np.array_equal(ms1[key], ms2[key]), key
    for key in os1:
        assert np.array_equal(os1[key], os2[key]), key


def test_group_that_does_not_tile_the_buffer_is_updated_per_parameter():
    """Freezing a layer (its parameters left out of the optimiser) must leave it untouched:
    the group's parameters are not one range of the buffer, so no whole-buffer update."""
    model = LeNet5(seed=0)
    frozen = {k: v.copy() for k, v in model[0].params.items()}
    params = [p for p in model.parameters() if not p.name.startswith("0.")]
    opt = SGD(params, lr=0.1, momentum=0.9)
    x, labels = _batch(3, F32)
    loss_fn = CrossEntropyLoss()
    before = model.state_dict()
    for _ in range(2):
        _step(model, loss_fn, opt, x, labels)
    assert {type(t).__name__ for t in opt._targets(opt.param_groups[0])} == {"_Single"}
    for key, value in frozen.items():
        assert np.array_equal(model[0].params[key], value)
    assert not np.array_equal(model.state_dict()["3.weight"], before["3.weight"])


def test_rebound_parameter_array_leaves_the_whole_group_update():
    model = LeNet5(seed=0)
    params = model.parameters()
    opt = SGD(params, lr=0.1)
    x, labels = _batch(2, F32)
    loss_fn = CrossEntropyLoss()
    _step(model, loss_fn, opt, x, labels)
    assert type(opt._targets(opt.param_groups[0])[0]).__name__ == "_Flat"
    params[0].data = params[0].data.copy()
    assert type(opt._targets(opt.param_groups[0])[0]).__name__ == "_Single"
    before = params[0].data.copy()
    _step(model, loss_fn, opt, x, labels)
    assert not np.array_equal(params[0].data, before)  # the rebound array is the one updated


def test_state_loaded_for_part_of_a_group_keeps_per_parameter_semantics():
    """SGD's momentum buffer starts as the first gradient of each parameter that has none:
    with state for some parameters only, the update runs per parameter and matches a model
    whose parameters are not packed."""
    x, labels = _batch(3, F64, seed=5)
    results = []
    for pack in (True, False):
        model = _lenet5(pack, F64, seed=2)
        params = model.parameters()
        opt = SGD(params, lr=0.05, momentum=0.9)
        part = {f"{p.name}.momentum": np.full(p.data.shape, 0.01) for p in params[:4]}
        opt.load_state_dict(part, {"type": "SGD", "steps": 0, "lr": 0.05})
        loss_fn = CrossEntropyLoss()
        for _ in range(3):
            _step(model, loss_fn, opt, x, labels)
        results.append(model.state_dict())
    for key in results[0]:
        assert np.array_equal(results[0][key], results[1][key]), key


def test_state_dict_round_trip_with_whole_group_update():
    """The flat state's per-parameter views are what state_dict saves and load_state_dict
    writes into: a resumed optimiser continues bitwise."""
    x, labels = _batch(4, F32, seed=6)
    loss_fn = CrossEntropyLoss()
    model = LeNet5(seed=3)
    opt = Adam(model.param_groups(0.01), lr=1e-3)
    for _ in range(2):
        _step(model, loss_fn, opt, x, labels)
    weights, state = model.state_dict(), opt.state_dict()
    for _ in range(2):
        _step(model, loss_fn, opt, x, labels)
    model2 = LeNet5(seed=9)
    model2.load_state_dict(weights)
    opt2 = Adam(model2.param_groups(0.01), lr=1e-3)
    opt2.load_state_dict(*state)
    for _ in range(2):
        _step(model2, loss_fn, opt2, x, labels)
    assert {type(t).__name__ for g in opt2.param_groups for t in opt2._targets(g)} == {"_Flat"}
    for key, value in model.state_dict().items():
        assert np.array_equal(model2.state_dict()[key], value), key


# --- the fused kernel pass (_kernels/optim.pyx) is bitwise the NumPy sequence ------------------

FUSED_CONFIGS = dict(FLAT_CONFIGS, **{
    "sgd-decay": lambda ps: SGD(ps, lr=0.3, weight_decay=0.1),
    "sgd-dampening-nesterov-off": lambda ps: SGD(ps, lr=0.07, momentum=0.6, dampening=1.0),
    "adam": lambda ps: Adam(ps, lr=1e-2, betas=(0.7, 0.95), eps=1e-4),
    "adamw-decay-amsgrad": lambda ps: AdamW(ps, lr=3e-2, weight_decay=0.3, amsgrad=True),
})


@pytest.mark.parametrize("config", list(FUSED_CONFIGS))
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_fused_update_is_bitwise_the_numpy_sequence(config, dtype, monkeypatch):
    """Parameters of several sizes (one past the kernel's parallel block of 8192, so several
    blocks on any thread count), gradients with signed zeros, ties and a NaN, over steps that
    start the moments: the one-pass kernel and the NumPy operations (each rounded, no fused
    multiply-add) leave the same bits in the parameters and every state slot, on 1, 2 and 3
    threads; a strided parameter takes the NumPy sequence."""
    import fastcnn
    from fastcnn import optim

    rng = np.random.default_rng(71)
    shapes = [(3, 5), (8193,), (40, 50, 11), (1,), (7, 1)]
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = []
    for _ in range(4):
        step = []
        for s in shapes:
            g = (rng.integers(-3, 4, s) * 0.25 + rng.standard_normal(s) * (rng.random(s) < 0.5))
            g = g.astype(dtype)
            g[rng.random(s) < 0.1] = -0.0
            step.append(g)
        grads.append(step)
    grads[2][1][5] = np.nan  # one NaN: it must travel the same way
    results = []
    previous = fastcnn.get_num_threads()
    try:
        for fused, threads in ((False, 1), (True, 1), (True, 2), (True, 3)):
            monkeypatch.setattr(optim, "_FUSED", fused)
            fastcnn.set_num_threads(threads)
            params = [Parameter(f"p{i}", a.copy(), np.zeros_like(a)) for i, a in enumerate(start)]
            params[0].data = np.asfortranarray(params[0].data)  # strided: NumPy either way
            opt = FUSED_CONFIGS[config](params)
            for step in grads:
                for p, g in zip(params, step):
                    p.grad[...] = g
                opt.step()
            state = opt.state_dict()[0]
            results.append([p.data.tobytes() for p in params]
                           + [np.asarray(state[k]).tobytes() for k in sorted(state)])
    finally:
        fastcnn.set_num_threads(previous)
    for got in results[1:]:
        assert got == results[0]


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: Adam(ps, lr=1e-3)], ids=["sgd", "adam"])
def test_step_on_a_frozen_model_raises_numpys_read_only_error(make):
    """A frozen model's parameters are read-only: the step leaves the kernel to NumPy, whose
    in-place operation refuses with its usual message, and changes nothing."""
    from fastcnn.models import get_model

    model = get_model("lenet5")
    opt = make(model.parameters())
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model.freeze()
    with pytest.raises(ValueError, match="read-only"):
        opt.step()
    for key, value in model.state_dict().items():
        assert np.array_equal(value, before[key]), key
