"""fastcnn.timing.time_model and the ``fastcnn bench`` command (tiny iteration counts)."""

import numpy as np
import pytest

import fastcnn
from fastcnn import cli
from fastcnn.timing import format_timing, time_model


def _small_net():
    return fastcnn.Sequential(
        fastcnn.Conv2d(1, 4, 3, padding=1, seed=1), fastcnn.ReLU(), fastcnn.MaxPool2d(2),
        fastcnn.Flatten(), fastcnn.Linear(4 * 4 * 4, 3, seed=2))


def test_time_model_reports_and_restores_the_model():
    model = _small_net()
    model.eval()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    result = time_model(model, (1, 8, 8), batch_size=3, iterations=2, warmup=1, layers=True)
    for key in ("train", "inference"):
        s = result[key]
        assert s["calls"] == 2
        assert 0 < s["min_ms"] <= s["median_ms"] <= s["max_ms"]
        assert s["images_per_s"] == pytest.approx(3 / (s["median_ms"] / 1e3))
    assert [r[0] for r in result["layers"]] == list(range(5))
    assert all(f["calls"] == 2 for _, _, f, _ in result["layers"])
    assert result["layers"][0][3]["calls"] == 2  # the first conv's backward (weight gradient)
    # SGD steps were taken, but the weights and the mode are back as they were.
    assert not model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    text = format_timing(result, "small net")
    assert text.splitlines()[0] == "small net"
    assert "training step" in text and "inference" in text and "Conv2d(1, 4" in text


def test_time_model_of_a_frozen_model_leaves_it_frozen():
    model = _small_net().freeze()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    result = time_model(model, (1, 8, 8), batch_size=2, iterations=1, warmup=0)
    assert result["train"]["calls"] == result["inference"]["calls"] == 1
    assert model.frozen and not model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_time_model_lenet5_batch_1_float64():
    model = fastcnn.LeNet5(dtype=np.float64)
    result = time_model(model, (1, 32, 32), batch_size=1, iterations=1, warmup=0)
    assert "layers" not in result and result["train"]["median_ms"] > 0


@pytest.mark.parametrize("kwargs, error, match", [
    ({"input_shape": (8, 8)}, ValueError, r"input_shape must be \(C, H, W\)"),
    ({"input_shape": (1, 0, 8)}, ValueError, "input_shape entry must be >= 1, got 0"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
    ({"iterations": 1.5}, TypeError, "iterations must be an int"),
    ({"warmup": -1}, ValueError, "warmup must be >= 0"),
    ({"model": "lenet5"}, TypeError, "model must be a fastcnn Module"),
    ({"model": fastcnn.Conv2d(1, 2, 3)}, ValueError, r"must be \(N, num_classes\) logits"),
])
def test_time_model_validates(kwargs, error, match):
    args = {"model": _small_net(), "input_shape": (1, 8, 8), "batch_size": 2, "iterations": 1}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        time_model(**args)


def test_cli_bench_lenet5_and_model_file(tmp_path, capsys):
    assert cli.main(["bench", "--batch-size", "2", "--iterations", "2", "--warmup", "0",
                     "--threads", "1", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "LeNet-5, input 1x32x32, batch 2, 1 thread" in out
    assert "training step" in out and "per layer" in out
    path = tmp_path / "m.npz"
    fastcnn.save_model(path, fastcnn.LeNet5(seed=3))
    assert cli.main(["bench", str(path), "--batch-size", "1", "--iterations", "1",
                     "--input-shape", "1", "32", "32"]) == 0
    assert "input 1x32x32, batch 1" in capsys.readouterr().out
    fastcnn.set_num_threads(None)


def test_cli_bench_errors(capsys):
    assert cli.main(["bench", "no-such-model"]) == 2
    err = capsys.readouterr().err  # without a zoo (fastcnn.models) / with one
    assert "MODEL must be 'lenet5' or an existing model file" in err or \
        "unknown model 'no-such-model'" in err, err
    assert cli.main(["bench", "--batch-size", "0"]) == 2
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err
