"""The benchmark report (``fastcnn bench``, ``bench/report.py``) still runs end to end.

The first test runs ``python -m fastcnn.bench --quick --epoch --memory --impls fastcnn,numpy``
(batch 4, one round, one thread, a few repetitions, synthetic epoch data) into a temporary
directory and checks the Markdown rows and the chart; it takes a few seconds. PyTorch workers are
left out of it because each one spends ~3 s importing torch; the second test (skipped without
PyTorch) runs the PyTorch worker's code in-process instead and checks it against the NumPy one.
These tests keep ``bench/`` from rotting; they say nothing about speed.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastcnn

KERNEL_ROWS = [
    "C1 conv forward", "C1 conv input grad", "C1 conv weight grad",
    "C3 conv forward", "C3 conv input grad", "C3 conv weight grad", "S2 max-pool forward",
]


def _number(cell):
    """The leading number of a table cell such as ``'5,122 ±3%'`` or ``'0.056'``."""
    match = re.match(r"\s*([0-9][0-9,]*\.?[0-9]*)", cell)
    assert match, f"no number in table cell {cell!r}"
    return float(match.group(1).replace(",", ""))


def _row(text, label):
    """The cells of the table row whose first cell is `label`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            return cells
    raise AssertionError(f"no table row {label!r} in the report:\n{text}")


def test_quick_report_writes_markdown_and_chart(tmp_path):
    out, png = tmp_path / "results.md", tmp_path / "results.png"
    env = dict(os.environ)
    root = str(Path(fastcnn.__file__).resolve().parents[1])  # the fastcnn under test
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH")] if p)
    cmd = [sys.executable, "-m", "fastcnn.bench", "--quick", "--epoch", "--memory",
           "--impls", "fastcnn,numpy", "--out", str(out), "--png", str(png)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"

    text = out.read_text()
    for header in ("- command: `fastcnn bench --quick --epoch --memory", "- date: ",
                   "- machine: ", "- libraries: ", "MALLOC_MMAP_THRESHOLD_=33554432"):
        assert header in text
    impls = ["fastcnn", "NumPy im2col"]
    head = _row(text, "measurement")
    assert head[2:2 + len(impls)] == impls
    for label in ["train step, batch 4", "inference, batch 4"] + \
            [f"{k}, batch 4" for k in KERNEL_ROWS]:
        cells = _row(text, label)
        assert cells[1] == "1"  # threads
        assert all(_number(c) > 0 for c in cells[2:2 + len(impls)]), cells
        assert all(c.startswith("**") for c in cells[2 + len(impls):]), cells  # the ratios
    for impl in impls:
        epoch = _row(text, impl)  # the epoch table comes before the memory table
        assert _number(epoch[1]) > 0, epoch
    assert "SYNTHETIC" in text
    assert "## Memory" in text and "CHECK FAILED" not in text and "worker failed" not in text

    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000
        assert "![benchmark chart](results.png)" in text
    else:
        assert "matplotlib is not installed" in text


def test_torch_worker_matches_numpy_worker():
    torch = pytest.importorskip("torch")
    from fastcnn import bench

    previous, torch_previous = fastcnn.get_num_threads(), torch.get_num_threads()
    try:
        workers = {"numpy": bench._NumpyImpl(1), "torch": bench._TorchImpl(1)}
        task = next(t for t in bench._tasks(bench.QUICK) if t[1] == "train")
        spec = {"tasks": bench._tasks(bench.QUICK), "reps": 1, "rep_time": 0.0,
                "warmup_time": 0.0}
        results = {name: bench._work_timing(w, spec) for name, w in workers.items()}
    finally:
        torch.set_num_threads(torch_previous)
        fastcnn.set_num_threads(previous)
    for task_id, kind, label, _, _ in bench._tasks(bench.QUICK):
        assert results["torch"][task_id]["value"] > 0, label
        if kind == "kernel":
            (s_np, abs_np), (s_t, _) = (results[k][task_id]["checksum"] for k in workers)
            assert abs(s_t - s_np) <= 1e-4 * abs_np, label
    assert results["torch"][task[0]]["finite"]
