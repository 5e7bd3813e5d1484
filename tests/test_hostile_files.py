"""Hostile model files and checkpoints are refused cheaply (the fuzzing findings of issue 8):
every case is a one-line ValueError naming the file, raised before anything large is read or
allocated; and a seeded mutation fuzz of a small model file and checkpoint either loads or raises
ValueError, nothing else."""

import io as stdio
import json
import math
import os
import re
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastcnn
from fastcnn.checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from fastcnn.io import load_npz, save_npz_atomic

DATA = os.path.join(os.path.dirname(__file__), "data")
LEGACY_MODEL = os.path.join(DATA, "legacy_lenet5_model.npz")
LEGACY_CHECKPOINT = os.path.join(DATA, "legacy_lenet5_checkpoint.npz")


def small_model():
    model = fastcnn.Sequential(fastcnn.Conv2d(1, 2, 3, seed=1), fastcnn.ReLU(),
                               fastcnn.MaxPool2d(2), fastcnn.Flatten(),
                               fastcnn.Linear(2 * 3 * 3, 3, seed=2))
    model.input_shape = (1, 8, 8)
    return model


@pytest.fixture
def small_files(tmp_path):
    model = small_model()
    opt = fastcnn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    loss = fastcnn.CrossEntropyLoss()
    loss.forward(model.forward(x), np.array([0, 1, 2, 0]))
    model.backward(loss.backward())
    opt.step()
    save_model(tmp_path / "m.npz", model, normalization=(0.5, 0.25))
    save_checkpoint(tmp_path / "c.npz", model, opt, trainer={"seed": 0},
                    arrays={"rng": np.arange(4, dtype=np.uint64)})
    return tmp_path / "m.npz", tmp_path / "c.npz", model


def one_line(exc_info, path):
    message = str(exc_info.value)
    assert "\n" not in message
    assert message.startswith(str(path) + ": ")
    return message


def rewrite(src, dst, edit_header=None, edit_arrays=None):
    arrays, header = load_npz(src)
    header.pop("format")
    header.pop("format_version")
    if edit_header:
        edit_header(header)
    if edit_arrays:
        edit_arrays(arrays)
    save_npz_atomic(dst, arrays, header)
    return dst


def raw_header_file(src, dst, text):
    """`src` with its ``__header__`` replaced by the raw JSON `text` (not via json.dumps)."""
    arrays, _ = load_npz(src)
    with zipfile.ZipFile(dst, "w") as zf:
        for key, value in {**arrays, "__header__": np.frombuffer(text.encode(), np.uint8)}.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, value)
    return dst


def cheap(fn, seconds=1.0, megabytes=32):
    """Run fn (which must raise ValueError) and check it took little time and memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError) as info:
            fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - start < seconds
    assert peak < megabytes * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB"
    return info


# --------------------------------------------------------------------------------------------
# Sizes from the header


@pytest.mark.parametrize("num_classes, match", [
    (30_000_000, r"invalid num_classes 30000000 in the header"),
    (10_000_000, r"imply up to .* parameter elements, more than the limit"),
    (1_000_000, r"the architecture needs at least 84,060,630 parameter elements but the file's "
                r"tensors hold 61,706"),
], ids=["30M", "10M", "1M"])
def test_legacy_num_classes_huge(tmp_path, num_classes, match):
    def edit(h):
        h["architecture"]["num_classes"] = num_classes
        h["classes"] = None
    path = rewrite(LEGACY_MODEL, tmp_path / "big.npz", edit)
    info = cheap(lambda: load_model(path))
    assert re.search(match, one_line(info, path))


@pytest.mark.parametrize("out_features, match", [
    (5_000_000, "needs at least 90,000,018 parameter elements but the file's tensors hold 77"),
    (30_000_000, "layer 4 (Linear): argument 'out_features' = 30000000 is larger than 16777216"),
], ids=["5M", "30M"])
def test_spec_out_features_huge(tmp_path, small_files, out_features, match):
    def edit(h):
        h["architecture"]["layers"][-1]["out_features"] = out_features
        h["classes"] = h["architecture"]["classes"] = None
    path = rewrite(small_files[0], tmp_path / "big.npz", edit)
    info = cheap(lambda: load_model(path))
    assert match in one_line(info, path)


def _npy_bytes(arr):
    buf = stdio.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


def _npy_header(shape, descr):
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    text += " " * (-(len(text) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def write_zip(path, members, compression=zipfile.ZIP_STORED, declared=None):
    """A zip of `members` (name -> bytes) whose central directory declares the uncompressed
    sizes in `declared` (name -> int) instead of the true ones, as a hostile file would."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, size in (declared or {}).items():
            zf.getinfo(name).file_size = size
    return path


def members_of(src, **replace):
    arrays, header = load_npz(src)
    out = {f"{k}.npy": _npy_bytes(v) for k, v in arrays.items()}
    out["__header__.npy"] = _npy_bytes(np.frombuffer(json.dumps(header).encode(), np.uint8))
    out.update({f"{k}.npy": v for k, v in replace.items()})
    return out


def test_npy_header_claims_2_to_the_36(tmp_path, small_files):
    """The .npy header of a weight edited to claim (2**36,) elements: its zip entry's size
    disagrees, refused before anything is read."""
    members = members_of(small_files[0])
    data = members["model/4.weight.npy"]
    members["model/4.weight.npy"] = _npy_header((2 ** 36,), "<f4") + data[128:]
    path = write_zip(tmp_path / "bad.npz", members)
    for load in (load_model, load_npz):
        info = cheap(lambda: load(path))  # noqa: B023
        assert "declares 344 bytes but its .npy header implies 274,877,907,072" in \
            one_line(info, path)


def test_npy_member_claims_2_to_the_36_consistently(tmp_path, small_files):
    """A member whose .npy header and zip entry both claim 2**36 float64 (512 GiB), deflated:
    refused from the headers alone."""
    head = _npy_header((2 ** 36,), "<f8")
    members = members_of(small_files[0], **{"model/4.weight": head + bytes(4096)})
    path = write_zip(tmp_path / "huge.npz", members, zipfile.ZIP_DEFLATED,
                     {"model/4.weight.npy": len(head) + 8 * 2 ** 36})
    info = cheap(lambda: load_model(path))
    assert "weight '4.weight' has shape (68719476736,) in the file, the architecture implies" in \
        one_line(info, path)
    info = cheap(lambda: load_npz(path))
    assert "more than the 2,147,483,648 allowed" in one_line(info, path)


def test_deflate_bomb(tmp_path, small_files):
    """A 64 MiB member of zeros deflated to about 64 KiB, declared honestly: refused from the
    declared sizes, without inflating it."""
    bomb = _npy_bytes(np.zeros(2 ** 24, np.float32))
    path = write_zip(tmp_path / "bomb.npz", members_of(small_files[0], **{"model/4.weight": bomb}),
                     zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2 ** 20
    info = cheap(lambda: load_model(path), megabytes=8)
    assert "layer 4 (Linear): weight '4.weight' has shape (16777216,)" in one_line(info, path)
    info = cheap(lambda: load_npz(path, max_bytes=2 ** 20), megabytes=8)
    assert "more than the 1,048,576 allowed" in one_line(info, path)


def test_deflate_bomb_with_lying_sizes(tmp_path, small_files):
    """A member that declares its right small size but inflates to 64 MiB: the bounded
    inflater stops after the declared size."""
    members = members_of(small_files[0])
    true = members["model/4.bias.npy"]
    members["model/4.bias.npy"] = true + bytes(2 ** 26)
    path = write_zip(tmp_path / "bomb.npz", members, zipfile.ZIP_DEFLATED,
                     {"model/4.bias.npy": len(true)})
    info = cheap(lambda: load_model(path), megabytes=8)
    assert "damaged or truncated" in one_line(info, path)


# --------------------------------------------------------------------------------------------
# Damaged .npy headers


def test_every_bit_flip_in_an_npy_header(tmp_path, small_files):
    """Each single-bit flip in the .npy header of a weight: loads (a flip in padding) or
    raises ValueError (a tokenize.TokenError before)."""
    src = small_files[0]
    data = src.read_bytes()
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("model/0.weight.npy")
    start = info.header_offset + 30 + len(info.filename) + 20 + 8  # after the zip64 extra
    path = tmp_path / "flip.npz"
    rng = np.random.default_rng(0)
    for offset in range(start, start + 118):
        bit = 1 << int(rng.integers(8))
        path.write_bytes(data[:offset] + bytes([data[offset] ^ bit]) + data[offset + 1:])
        with pytest.raises(ValueError) as exc:
            load_model(path)
        one_line(exc, path)


@pytest.mark.parametrize("text", ["{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1,",
                                  "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }",
                                  "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': ()}",
                                  "__import__('os').system('echo hi')",
                                  "{'descr': '<f4', 'fortran_order': 1, 'shape': (-2,), }"],
                         ids=["token-error", "object", "structured", "code", "negative"])
def test_npy_header_never_evaluated(tmp_path, text):
    head = text.encode()
    head += b" " * (-(len(head) + 11) % 64) + b"\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + bytes(8)
    path = tmp_path / "npy.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__header__.npy", _npy_bytes(np.frombuffer(b'{"format": "fastcnn", '
                                                               b'"format_version": 1}', np.uint8)))
        zf.writestr("model/0.weight.npy", member)
    with pytest.raises(ValueError, match="damaged or truncated") as exc:
        load_npz(path)
    one_line(exc, path)


# --------------------------------------------------------------------------------------------
# Edited header fields


def _nested(depth):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["architecture"].update(input_shape=5), "input_shape 5 is not LeNet5's"),
    (lambda h: h["architecture"].update(input_shape=None), "input_shape None is not LeNet5's"),
    (lambda h: h["architecture"].update(num_classes=True), "invalid num_classes True"),
    (lambda h: h["architecture"].update(num_classes=10.0), "invalid num_classes 10.0"),
    (lambda h: h.update(metadata="x"), "metadata must be an object, got str"),
    (lambda h: h.update(history={"a": 1}), "history must be a list, got dict"),
    (lambda h: h.update(optimizer=[1]), "optimizer must be an object, got list"),
    (lambda h: h.update(classes="0123456789"), "classes do not match num_classes"),
    (lambda h: h.update(normalization={"mean": float("nan"), "std": 0.3}),
     "invalid normalization"),
    (lambda h: h.update(normalization={"mean": 0.1, "std": float("inf")}),
     "invalid normalization"),
    (lambda h: h.update(normalization={"mean": 0.1, "std": 0}), "invalid normalization"),
    (lambda h: h.update(normalization={"mean": 0.1, "std": True}), "invalid normalization"),
    (lambda h: h.update(normalization=[0.1, 0.3]), "invalid normalization"),
    (lambda h: h.update(architecture=[]), "no architecture"),
    (lambda h: h.update(dtype=None), "dtype None"),
], ids=["shape-5", "shape-null", "classes-bool", "classes-float", "metadata", "history",
        "optimizer", "classes-str", "nan-mean", "inf-std", "zero-std", "bool-std", "norm-list",
        "arch-list", "dtype-null"])
def test_legacy_header_edits(tmp_path, edit, match):
    path = rewrite(LEGACY_MODEL, tmp_path / "edited.npz", edit)
    with pytest.raises(ValueError, match=re.escape(match)) as exc:
        load_model(path)
    one_line(exc, path)


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["architecture"]["input_transform"]["normalization"].update(mean=[math.nan]),
     "normalization mean must be finite"),
    (lambda h: h["architecture"]["input_transform"]["normalization"].update(std=[math.inf]),
     "normalization std must be finite"),
    (lambda h: h["architecture"]["input_transform"]["normalization"].update(std=[0.0]),
     "normalization std must be > 0"),
    (lambda h: h["architecture"]["input_transform"]["normalization"].update(std=[0.1, 0.2],
                                                                            mean=[0.1, 0.2]),
     "2 normalization means for 1 input channels"),
    (lambda h: h["architecture"]["input_transform"].update(padding=[4, 4]),
     "padding (4, 4) leaves no image"),
    (lambda h: h["architecture"]["layers"][0].update(type="Evil"), "layer 0: unknown layer type"),
    (lambda h: h["architecture"]["layers"][0].update(kernel_size=True),
     "layer 0 (Conv2d): argument 'kernel_size' must not be a bool"),
    (lambda h: h["architecture"]["layers"][0].update(kernel_size=[[3]]),
     "layer 0 (Conv2d): argument 'kernel_size' must be a list of numbers"),
    (lambda h: h["architecture"]["layers"][0].update(bias=1),
     "layer 0 (Conv2d): argument 'bias' must be true or false"),
    (lambda h: h["architecture"]["layers"][0].update(evil=1),
     "layer 0 (Conv2d): unknown argument 'evil'"),
    (lambda h: h["architecture"]["layers"][0].pop("in_channels"),
     "layer 0 (Conv2d): missing argument 'in_channels'"),
    (lambda h: h["architecture"]["layers"][4].update(in_features=19),
     r"layer 4 (Linear) does not fit its input: Linear expects 19 input features"),
    (lambda h: h["architecture"]["layers"].append({"type": "Sequential"}),
     "layer 5: unknown layer type 'Sequential'"),
    (lambda h: h["architecture"].update(layers=[]), "non-empty list"),
    (lambda h: h["architecture"].update(extra=1), "unknown key 'extra' in the model spec"),
], ids=["nan-mean", "inf-std", "zero-std", "channels", "padding", "type", "bool", "nested",
        "bias-int", "unknown-arg", "missing-arg", "chain", "container", "no-layers", "key"])
def test_spec_header_edits(tmp_path, small_files, edit, match):
    def full_edit(h):
        h.pop("normalization")
        h.pop("classes")
        edit(h)
    path = rewrite(small_files[0], tmp_path / "edited.npz", full_edit)
    with pytest.raises(ValueError, match=re.escape(match)) as exc:
        load_model(path)
    one_line(exc, path)


@pytest.mark.parametrize("depth", [40, 100_000], ids=["40", "100000"])
def test_deeply_nested_json(tmp_path, small_files, depth):
    _, header = load_npz(small_files[0])
    text = json.dumps(header)[:-1] + ', "metadata": ' + _nested(depth) + "}"
    path = raw_header_file(small_files[0], tmp_path / "deep.npz", text)
    with pytest.raises(ValueError, match="nested") as exc:
        load_model(path)
    one_line(exc, path)


def test_huge_int_in_header(tmp_path, small_files):
    _, header = load_npz(small_files[0])
    text = json.dumps(header)[:-1] + ', "epoch": ' + "9" * 5000 + "}"
    path = raw_header_file(small_files[0], tmp_path / "int.npz", text)
    with pytest.raises(ValueError) as exc:
        load_model(path)
    one_line(exc, path)


# --------------------------------------------------------------------------------------------
# Tensors


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.pop("model/4.bias"), r"layer 4 \(Linear\): tensor '4.bias' is missing"),
    (lambda a: a.update({"model/4.extra": np.zeros(2, np.float32)}),
     r"layer 4 \(Linear\): unexpected tensor '4.extra'"),
    (lambda a: a.update({"model/0.weight": np.zeros((2, 1, 3, 2), np.float32)}),
     r"layer 0 \(Conv2d\): weight '0.weight' has shape \(2, 1, 3, 2\) in the file, the "
     r"architecture implies \(2, 1, 3, 3\)"),
    (lambda a: a.update({"model/0.bias": np.zeros(2, np.float64)}),
     r"layer 0 \(Conv2d\): weight '0.bias' has dtype float64, the header says float32"),
    (lambda a: a.update({"model/0.bias": np.zeros(2, ">f4")}),
     r"weight '0.bias' has dtype >f4, the header says float32"),
    (lambda a: a.update({"other": np.zeros(2)}), "unexpected member 'other' in a model file"),
    (lambda a: a.update({"optim/0.weight.momentum": np.zeros(2)}),
     "unexpected member 'optim/0.weight.momentum' in a model file"),
], ids=["missing", "extra", "shape", "dtype", "byte-order", "foreign", "optim-in-model"])
def test_tensors_against_the_spec(tmp_path, small_files, edit, match):
    path = rewrite(small_files[0], tmp_path / "edited.npz", edit_arrays=edit)
    with pytest.raises(ValueError, match=match) as exc:
        load_model(path)
    one_line(exc, path)


# --------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("edit_header, edit_arrays, match", [
    (lambda h: h.pop("trainer"), None, "the checkpoint has no trainer state"),
    (lambda h: h.update(trainer=[1]), None, "the checkpoint has no trainer state"),
    (lambda h: h.pop("optimizer"), None, "the checkpoint has no optimizer settings"),
    (lambda h: h["optimizer"].pop("lr"), None, "invalid optimizer settings"),
    (lambda h: h["optimizer"].update(steps=-1), None, "invalid optimizer settings"),
    (lambda h: h["optimizer"].update(lr=math.nan), None, "invalid optimizer settings"),
    (None, lambda a: a.update({"optim/9.weight.momentum": np.zeros(2, np.float32)}),
     "optimizer state 'optim/9.weight.momentum' names no parameter"),
    (None, lambda a: a.update({"optim/0.weight.momentum": np.zeros(2, np.float32)}),
     r"layer 0 \(Conv2d\): optimizer state 'optim/0.weight.momentum' has shape \(2,\)"),
    (None, lambda a: a.update({"extra/big": np.zeros(2 ** 24 + 1, np.float32)}),
     "extra arrays declare more than"),
], ids=["no-trainer", "trainer-list", "no-optimizer", "no-lr", "negative-steps", "nan-lr",
        "optim-unknown", "optim-shape", "extra-too-big"])
def test_checkpoint_fields(tmp_path, small_files, edit_header, edit_arrays, match):
    path = rewrite(small_files[1], tmp_path / "edited.npz", edit_header, edit_arrays)
    with pytest.raises(ValueError, match=match) as exc:
        load_checkpoint(path)
    one_line(exc, path)


def test_legacy_checkpoint_without_trainer(tmp_path):
    path = rewrite(LEGACY_CHECKPOINT, tmp_path / "c.npz", lambda h: h.pop("trainer"))
    with pytest.raises(ValueError, match="no trainer state"):
        load_checkpoint(path)


# --------------------------------------------------------------------------------------------
# Stale temporaries


def test_stale_temp_files_removed_on_next_save(tmp_path, small_files):
    model = small_files[2]
    target = tmp_path / "m.npz"
    stale = [tmp_path / ".m.npz.0123456789ab.tmp", tmp_path / ".m.npz.ffffffffffff.tmp"]
    keep = [tmp_path / ".other.npz.0123456789ab.tmp", tmp_path / ".m.npz.notatoken.tmp",
            tmp_path / "m.npz.0123456789ab.tmp"]
    for p in stale + keep:
        p.write_bytes(b"half a file")
        os.utime(p, (time.time() - 60, time.time() - 60))
    save_model(target, model)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["c.npz", "m.npz"] + [p.name for p in keep])
    load_model(target)


# --------------------------------------------------------------------------------------------
# Mutation fuzz


def _mutate(data, rng):
    data = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # flip 1-4 bits anywhere
        for _ in range(rng.integers(1, 5)):
            i = int(rng.integers(len(data)))
            data[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncate
        del data[int(rng.integers(len(data))):]
    elif kind == 2:  # overwrite a run with random bytes
        i = int(rng.integers(len(data)))
        n = int(rng.integers(1, 64))
        data[i:i + n] = rng.bytes(n)
    else:  # flip a byte in the zip structures or headers (the first/last 512 bytes of a member)
        i = int(rng.choice([rng.integers(min(len(data), 2048)),
                            len(data) - 1 - rng.integers(min(len(data), 1024))]))
        data[i] ^= int(rng.integers(1, 256))
    return bytes(data)


@pytest.mark.parametrize("which", ["model", "checkpoint"])
def test_mutation_fuzz(tmp_path, small_files, which):
    src = small_files[0] if which == "model" else small_files[1]
    loader = load_model if which == "model" else load_checkpoint
    good = src.read_bytes()
    rng = np.random.default_rng(8 if which == "model" else 9)
    path = tmp_path / "fuzz.npz"
    outcomes = {"loaded": 0, "refused": 0}
    start = time.perf_counter()
    for _ in range(300):
        path.write_bytes(_mutate(good, rng))
        try:
            loader(path)
        except ValueError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path))
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 100, outcomes
    assert time.perf_counter() - start < 30


JSON_VALUES = [None, True, False, 0, -1, 2, 1.5, 10 ** 30, 10 ** 400, -(10 ** 400), "x", "",
               [], {}, [1, 2], [[1]], {"a": 1}, math.nan, math.inf, -math.inf, [1, 32, 32],
               {"mean": 0.1, "std": 0.2}, {"type": "ReLU"}, ["a"] * 3]


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:20]):
            yield from _paths(v, prefix + (i,))


def _edit_json(header, rng):
    """Replace, delete or add one value somewhere in the header."""
    paths = [p for p in _paths(header) if p and p[0] not in ("format", "format_version")]
    path = paths[int(rng.integers(len(paths)))]
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    action = int(rng.integers(3))
    if action == 0 or not isinstance(parent, dict):
        parent[path[-1]] = JSON_VALUES[int(rng.integers(len(JSON_VALUES)))]
    elif action == 1:
        del parent[path[-1]]
    else:
        parent["zz" + str(path[-1])] = JSON_VALUES[int(rng.integers(len(JSON_VALUES)))]


@pytest.mark.parametrize("which", ["model", "checkpoint", "legacy-model", "legacy-checkpoint"])
def test_header_value_fuzz(tmp_path, small_files, which):
    """Random edits of the JSON header's values (any type, at any depth): the file loads or
    the loader raises a one-line ValueError naming it; never TypeError, KeyError, ..."""
    src = {"model": small_files[0], "checkpoint": small_files[1], "legacy-model": LEGACY_MODEL,
           "legacy-checkpoint": LEGACY_CHECKPOINT}[which]
    loader = load_checkpoint if "checkpoint" in which else load_model
    arrays, good = load_npz(src)
    rng = np.random.default_rng(len(which))
    path = tmp_path / "edited.npz"
    refused = 0
    for _ in range(100 if "legacy" not in which else 25):
        header = json.loads(json.dumps(good))
        for _ in range(int(rng.integers(1, 3))):
            _edit_json(header, rng)
        raw_header_file_from(arrays, path, json.dumps(header))
        try:
            loader(path)
        except ValueError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path) + ": ")
            refused += 1
    assert refused > (20 if "legacy" not in which else 5)


def raw_header_file_from(arrays, dst, text):
    with zipfile.ZipFile(dst, "w") as zf:
        for key, value in {**arrays, "__header__": np.frombuffer(text.encode(), np.uint8)}.items():
            with zf.open(key + ".npy", "w") as f:
                np.lib.format.write_array(f, value)
