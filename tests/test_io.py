"""Tests for fastcnn.io: atomic, pickle-free .npz model files and checkpoints."""

import io as stdio
import json
import os
import re
import zipfile

import numpy as np
import pytest

from fastcnn import io
from fastcnn.io import flatten_state, load_npz, save_npz_atomic, unflatten_state


def sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "model/0.weight": rng.standard_normal((6, 1, 5, 5)).astype(np.float32),
        "model/0.bias": np.zeros(6, np.float32),
        "optim/0.weight.momentum": rng.standard_normal((6, 1, 5, 5)),  # float64
        "step": np.array(1234, np.int64),  # 0-d
        "perm": rng.permutation(10),  # int64
        "empty": np.zeros((0, 3), np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
    }


HEADER = {"arch": {"name": "LeNet5", "layers": [["Conv2d", 1, 6, 5], ["ReLU"]]},
          "epoch": 3, "lr": 0.01, "note": "dïgits ✓", "done": False, "best": None}


def assert_same_arrays(got, expected):
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value)


def matches_path(path):
    return re.escape(str(path))


# --------------------------------------------------------------------------------------------
# Round trip


def test_round_trip(tmp_path):
    path = tmp_path / "model.npz"
    arrays = sample_arrays()
    save_npz_atomic(path, arrays, HEADER)
    got, header = load_npz(path)
    assert_same_arrays(got, arrays)
    assert header == {**HEADER, "format": "fastcnn", "format_version": 1}


def test_round_trip_str_path_and_no_suffix(tmp_path):
    path = str(tmp_path / "checkpoint.bin")
    save_npz_atomic(path, {"w": np.ones(3)}, {})
    assert os.listdir(tmp_path) == ["checkpoint.bin"]  # used as given, no ".npz" added
    got, header = load_npz(path)
    np.testing.assert_array_equal(got["w"], np.ones(3))
    assert header == {"format": "fastcnn", "format_version": 1}


def test_header_optional_and_not_mutated(tmp_path):
    header = {"epoch": 1}
    save_npz_atomic(tmp_path / "a.npz", {"w": np.ones(2)}, header)
    save_npz_atomic(tmp_path / "b.npz", {"w": np.ones(2)})
    assert header == {"epoch": 1}
    assert load_npz(tmp_path / "b.npz")[1] == {"format": "fastcnn", "format_version": 1}


def test_header_numpy_scalars_converted(tmp_path):
    header = {"loss": np.float32(0.25), "step": np.int64(7), "shape": np.array([1, 32, 32])}
    save_npz_atomic(tmp_path / "m.npz", {}, header)
    got = load_npz(tmp_path / "m.npz")[1]
    assert got["loss"] == 0.25 and got["step"] == 7 and got["shape"] == [1, 32, 32]


def test_keys_that_clash_with_np_savez_parameters(tmp_path):
    arrays = {"file": np.arange(3), "allow_pickle": np.ones(2), "args": np.zeros(1)}
    save_npz_atomic(tmp_path / "m.npz", arrays, {})
    assert_same_arrays(load_npz(tmp_path / "m.npz")[0], arrays)


def test_loads_with_plain_numpy_without_pickle(tmp_path):
    path = tmp_path / "model.npz"
    arrays = sample_arrays()
    save_npz_atomic(path, arrays, HEADER)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted([*arrays, "__header__"])
        for key, value in arrays.items():
            np.testing.assert_array_equal(npz[key], value)
        raw = npz["__header__"]
        assert raw.dtype == np.uint8 and raw.ndim == 1
        assert json.loads(raw.tobytes().decode("utf-8"))["format"] == "fastcnn"
    with zipfile.ZipFile(path) as zf:  # uncompressed
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}


def test_overwrite_replaces_file(tmp_path):
    path = tmp_path / "m.npz"
    save_npz_atomic(path, {"w": np.zeros(3)}, {"epoch": 1})
    save_npz_atomic(path, {"w": np.ones(3)}, {"epoch": 2})
    got, header = load_npz(path)
    np.testing.assert_array_equal(got["w"], np.ones(3))
    assert header["epoch"] == 2
    assert os.listdir(tmp_path) == ["m.npz"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_npz_atomic(tmp_path / "m.npz", {"w": np.ones(1)}, {})
    finally:
        os.umask(old)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


# --------------------------------------------------------------------------------------------
# Atomicity


def write_old(path):
    save_npz_atomic(path, {"w": np.full(4, 7.0)}, {"epoch": 1})
    return path.read_bytes()


def test_failed_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    old = write_old(path)

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        save_npz_atomic(path, {"w": np.zeros(4)}, {"epoch": 2})
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["m.npz"]


def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    old = write_old(path)
    real_write_array = np.lib.format.write_array
    calls = []

    def write_then_fail(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first array is already in the temporary file
            raise KeyboardInterrupt
        return real_write_array(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_npz_atomic(path, {"a": np.zeros(1000), "b": np.zeros(1000)}, {})
    assert len(calls) == 2
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["m.npz"]


def test_failure_without_existing_target_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("fsync failed")))
    with pytest.raises(OSError, match="fsync failed"):
        save_npz_atomic(tmp_path / "new.npz", {"w": np.ones(2)}, {})
    assert os.listdir(tmp_path) == []


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        save_npz_atomic(tmp_path / "no" / "such" / "m.npz", {"w": np.ones(2)}, {})


# --------------------------------------------------------------------------------------------
# Bad arguments to save


@pytest.mark.parametrize(
    "arrays, match",
    [({"__header__": np.ones(1)}, "must not start with '__'"),
     ({"__x": np.ones(1)}, "must not start with '__'"),
     ({"": np.ones(1)}, "non-empty strings"),
     ({3: np.ones(1)}, "non-empty strings"),
     ({"obj": np.array([{}, None], dtype=object)}, "'obj' has dtype object")],
    ids=["header-key", "dunder-key", "empty-key", "int-key", "object-array"],
)
def test_save_bad_arrays(tmp_path, arrays, match):
    with pytest.raises(ValueError, match=match):
        save_npz_atomic(tmp_path / "m.npz", arrays, {})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "header, exc, match",
    [({"format": "other"}, ValueError, r"header\['format'\] is 'other'"),
     ({"format_version": 2}, ValueError, r"header\['format_version'\] is 2"),
     ({"f": object()}, TypeError, "header is not JSON-serialisable"),
     ([("a", 1)], TypeError, "header must be a mapping")],
    ids=["format", "version", "unserialisable", "not-mapping"],
)
def test_save_bad_header(tmp_path, header, exc, match):
    with pytest.raises(exc, match=match):
        save_npz_atomic(tmp_path / "m.npz", {"w": np.ones(1)}, header)
    assert os.listdir(tmp_path) == []


def test_save_header_with_matching_format_keys(tmp_path):
    save_npz_atomic(tmp_path / "m.npz", {}, {"format": "fastcnn", "format_version": 1})
    assert load_npz(tmp_path / "m.npz")[1]["format_version"] == 1


# --------------------------------------------------------------------------------------------
# Damaged and foreign files


def npz_bytes(**members):
    """An npz built with plain numpy, for files save_npz_atomic would never write."""
    buf = stdio.BytesIO()
    np.savez(buf, **members)
    return buf.getvalue()


def header_array(obj):
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def valid_bytes(tmp_path):
    save_npz_atomic(tmp_path / "valid.npz", sample_arrays(), HEADER)
    return (tmp_path / "valid.npz").read_bytes()


DAMAGED = {
    "truncated-half": (lambda good: good[: len(good) // 2], "damaged or truncated"),
    "truncated-tail": (lambda good: good[:-30], "damaged or truncated"),
    "flipped-byte": (lambda good: good[:200] + bytes([good[200] ^ 0xFF]) + good[201:],
                     "damaged or truncated"),
    "random-bytes": (lambda good: np.random.default_rng(1).bytes(3000), "not a zip archive"),
    "text-file": (lambda good: b"epoch,loss\n1,0.5\n", "not a zip archive"),
    "empty": (lambda good: b"", "empty file"),
    "npy": (lambda good: b"\x93NUMPY" + good[6:], "a single .npy array"),
    "no-header": (lambda good: npz_bytes(w=np.ones(3)), "no __header__ member"),
    "header-not-json": (lambda good: npz_bytes(__header__=np.frombuffer(b"{oops", np.uint8)),
                        "__header__ is not valid JSON"),
    "header-not-utf8": (lambda good: npz_bytes(__header__=np.frombuffer(b"\xff\xfe", np.uint8)),
                        "__header__ is not valid JSON"),
    "header-not-object": (lambda good: npz_bytes(__header__=header_array([1, 2])),
                          "__header__ is JSON but not an object"),
    "header-wrong-dtype": (lambda good: npz_bytes(__header__=np.zeros(3, np.float64)),
                           "__header__ is not valid JSON"),
    "foreign-format": (lambda good: npz_bytes(__header__=header_array({"format": "keras"})),
                       "format is 'keras', expected 'fastcnn'"),
    "no-format": (lambda good: npz_bytes(__header__=header_array({})),
                  "format is None, expected 'fastcnn'"),
    "newer-version": (lambda good: npz_bytes(__header__=header_array(
        {"format": "fastcnn", "format_version": 2})),
        "format_version 2 is newer than this fastcnn reads"),
    "bad-version": (lambda good: npz_bytes(__header__=header_array(
        {"format": "fastcnn", "format_version": "1"})), "invalid format_version '1'"),
    "object-array": (lambda good: npz_bytes(__header__=header_array(
        {"format": "fastcnn", "format_version": 1}), obj=np.array([None], dtype=object)),
        "damaged or truncated"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_or_foreign_file(tmp_path, case):
    damage, match = DAMAGED[case]
    path = tmp_path / "bad.npz"
    path.write_bytes(damage(valid_bytes(tmp_path)))
    with pytest.raises(ValueError, match=rf"{matches_path(path)}: .*{re.escape(match)}"):
        load_npz(path)


def test_foreign_zip(tmp_path):
    path = tmp_path / "doc.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match=rf"{matches_path(path)}: member 'readme.txt' is not"):
        load_npz(path)


def test_zero_d_unicode_header_accepted(tmp_path):
    """A header stored as a 0-d str array (what np.savez makes of a str) loads without pickle."""
    path = tmp_path / "m.npz"
    text = json.dumps({"format": "fastcnn", "format_version": 1, "epoch": 5})
    path.write_bytes(npz_bytes(__header__=np.array(text), w=np.ones(2)))
    arrays, header = load_npz(path)
    assert header["epoch"] == 5 and list(arrays) == ["w"]


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")


# --------------------------------------------------------------------------------------------
# State helpers


def test_flatten_unflatten_round_trip(tmp_path):
    model = {"0.weight": np.ones((2, 2)), "0.bias": np.zeros(2)}
    optim = {"0.weight.momentum": np.full((2, 2), 0.5)}
    arrays = {**flatten_state("model", model), **flatten_state("optim", optim)}
    assert sorted(arrays) == ["model/0.bias", "model/0.weight", "optim/0.weight.momentum"]
    save_npz_atomic(tmp_path / "ckpt.npz", arrays, {"epoch": 1})
    loaded, _ = load_npz(tmp_path / "ckpt.npz")
    assert_same_arrays(unflatten_state("model", loaded), model)
    assert_same_arrays(unflatten_state("optim", loaded), optim)
    assert unflatten_state("mode", loaded) == {}  # a prefix must match up to the "/"


@pytest.mark.parametrize("prefix", ["", "__x", 3], ids=repr)
def test_bad_prefix(prefix):
    with pytest.raises(ValueError, match="prefix must be a non-empty string"):
        flatten_state(prefix, {})
    with pytest.raises(ValueError, match="prefix must be a non-empty string"):
        unflatten_state(prefix, {})


def test_constants():
    assert io.FORMAT == "fastcnn" and io.FORMAT_VERSION == 1 and io.HEADER_KEY == "__header__"
