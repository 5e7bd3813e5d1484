"""The benchmark report (``bench/report.py``) and its harness still run end to end.

The first test runs ``python bench/report.py --quick --epoch --memory`` with the fastcnn workers
(and ONNX Runtime's when installed) into a temporary directory and checks the Markdown rows; the
PyTorch workers are left out of it because each one spends seconds importing torch. The second
test (skipped without PyTorch) runs the fastcnn, PyTorch and ONNX Runtime workers' code in this
process on both networks and checks that they start from the same weights: same first loss, same
logits. These tests keep ``bench/`` from rotting; they say nothing about speed.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastcnn

BENCH = Path(__file__).resolve().parents[1] / "bench"
pytestmark = pytest.mark.skipif(not (BENCH / "report.py").is_file(),
                                reason="bench/ is not part of this source tree (an sdist)")
HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "torch"))


def _load(name):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def _number(cell):
    """The leading number of a table cell such as ``'1.23 (1.20-1.31)'`` or ``'**2.1x**'``."""
    match = re.match(r"\s*\**(-?[0-9][0-9,]*\.?[0-9]*)", cell)
    assert match, f"no number in table cell {cell!r}"
    return float(match.group(1).replace(",", ""))


def _rows(text, label):
    """The cells of every table row whose first cell is `label`."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            rows.append(cells)
    assert rows, f"no table row {label!r} in the report:\n{text}"
    return rows


def test_quick_report_writes_markdown(tmp_path):
    out = tmp_path / "results.md"
    env = dict(os.environ)
    root = str(Path(fastcnn.__file__).resolve().parents[1])  # the fastcnn under test
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH")] if p)
    impls = ["fastcnn"] + (["onnxruntime"] if HAVE_ORT else [])
    cmd = [sys.executable, str(BENCH / "report.py"), "--quick", "--epoch", "--memory",
           "--impls", ",".join(impls), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=400, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"

    text = out.read_text()
    for header in ("- command: `python bench/report.py --quick --epoch --memory", "- date: ",
                   "- machine: ", "- libraries: ", "MALLOC_MMAP_THRESHOLD_=33554432",
                   "- background load: "):
        assert header in text
    for net in ("LeNet-5", "VGG-style (issue 9)"):
        for batch in (1, 4):
            (train,) = _rows(text, f"{net} train step, batch {batch}")
            assert train[1] == "1" and _number(train[2]) > 0, train  # fastcnn only
            (infer,) = _rows(text, f"{net} inference, batch {batch}")
            assert all(_number(c) > 0 for c in infer[2:]), infer
            assert len(infer) == 2 + len(impls) + len(impls) - 1, infer
        calls = {r[2]: r for r in _rows(text, net)}  # the Python overhead table
        assert set(calls) == {"train step", "inference"}
        for call, cells in calls.items():
            step, kernels = _number(cells[3]), _number(cells[4])
            # the frozen model's inference is one compiled chain: a single kernel call
            assert step > 0 and kernels > 0 and _number(cells[7]) >= (
                4 if call == "train step" else 1), cells
    (epoch,) = _rows(text, "fastcnn")[:1]  # the epoch table comes before the memory table
    assert _number(epoch[1]) > 0, epoch
    assert "SYNTHETIC" in text and "## Memory" in text
    assert "CHECK FAILED" not in text and "worker failed" not in text
    if HAVE_ORT:
        assert "ONNX Runtime 1." in text and "![benchmark chart](results.png)" in text
        assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_workers_start_from_the_same_weights(tmp_path):
    torch = pytest.importorskip("torch")
    report = _load("report")
    harness = report.harness
    nets, onnx_ok, notes = report._prepare_networks(["lenet5", "vgg"], tmp_path, HAVE_ORT,
                                                    300, str(Path(fastcnn.__file__).parents[1]))
    assert onnx_ok == HAVE_ORT, notes
    cfg = dict(report.QUICK, reps=1, rep_time=0.0, warmup_time=0.0, overhead_steps=1)
    tasks = report._tasks(cfg, ["lenet5", "vgg"])
    spec = dict(cfg, tasks=tasks, nets=nets, threads=1)
    classes = {"fastcnn": report._FastcnnImpl, "torch": report._TorchImpl}
    if HAVE_ORT:
        classes["onnxruntime"] = report._OrtImpl
    torch_previous = torch.get_num_threads()
    try:
        harness.limit_threads(1)
        runs = {(name, 1): [report._work_timing(cls(spec), spec)]
                for name, cls in classes.items()}
    finally:
        harness.restore_threads()
        torch.set_num_threads(torch_previous)
    assert report._check_warnings(runs, tasks, nets) == []
    for task in tasks:
        results = {k[0]: r[0].get(task["id"]) for k, r in runs.items()}
        assert results["fastcnn"] is not None, task
        if task["kind"] == "overhead":
            assert results["torch"] is None
            assert results["fastcnn"]["train"]["calls"] >= 4
            continue
        assert results["torch"]["value"] > 0
        if task["kind"] == "infer" and HAVE_ORT:
            assert results["onnxruntime"]["checksum"][1] > 0
    # The check can fail: a different first loss is reported.
    key = next(t["id"] for t in tasks if t["kind"] == "train")
    runs[("torch", 1)][0][key]["first_loss"] += 1.0
    assert len(report._check_warnings(runs, tasks, nets)) == 1
    # ... except for a network with dropout, whose masks each framework draws its own way
    # (its inference outputs are still compared).
    net = next(t["net"] for t in tasks if t["id"] == key)
    assert not nets[net]["stochastic"]
    nets[net]["stochastic"] = True
    assert report._check_warnings(runs, tasks, nets) == []
