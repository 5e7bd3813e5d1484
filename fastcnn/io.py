"""Model files and checkpoints: ``.npz`` archives with a JSON header, written atomically.

A fastcnn file is a plain uncompressed ``.npz`` (a zip of ``.npy`` members) that
``np.load(path, allow_pickle=False)`` opens directly: one member per array, plus ``__header__``, the
UTF-8 bytes of a JSON object as a 1-D uint8 array. The header always holds
``"format": "fastcnn"`` and ``"format_version": 1``. Nothing is pickled, so loading a file cannot
run code.

What goes into the arrays and the header (e.g. ``"model/0.weight"``,
``"optim/0.weight.momentum"``, the architecture, the epoch) is up to the model and optimiser code;
:func:`flatten_state` and :func:`unflatten_state` help prefix and strip such keys.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "flatten_state",
    "load_npz",
    "save_npz_atomic",
    "write_atomic",
    "unflatten_state",
]

FORMAT = "fastcnn"
FORMAT_VERSION = 1
HEADER_KEY = "__header__"
# A zip archive starts with a local file header, or the end record when it is empty.
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def _json_default(obj):
    """Let headers hold NumPy scalars and small arrays (e.g. a float32 loss)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def save_npz_atomic(path, arrays: Mapping[str, np.ndarray], header: Mapping | None = None) -> None:
    """Write `arrays` and a JSON `header` to the ``.npz`` file `path`, atomically.

    The archive is written to a temporary file in the target's directory, flushed and fsync'd,
    then renamed onto `path` with ``os.replace``. A reader therefore sees either the old file or the
    complete new one, and a crash or an exception part-way (the temporary file is then removed)
    leaves any existing file untouched.

    Parameters
    ----------
    path : str or os.PathLike
        The target file, used exactly as given (no ``.npz`` suffix is added).
    arrays : mapping of str to array_like
        The arrays to store. Keys must be non-empty strings not starting with ``"__"`` and may
        contain ``/`` (``"model/0.weight"``). Object arrays are refused (they would need pickle).
    header : mapping, optional
        JSON-serialisable metadata (NumPy scalars and arrays are converted to Python numbers and
        lists). ``"format": "fastcnn"`` and ``"format_version": 1`` are added.

    Raises
    ------
    ValueError
        For a bad key, an object array, or a header whose ``format``/``format_version`` contradict
        the ones this function writes.
    TypeError
        If `arrays` or `header` is not a mapping, or the header is not JSON-serialisable.
    OSError
        If the file cannot be written (the target is then unchanged).
    """
    path = os.fspath(path)
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping of str to arrays, got {type(arrays).__name__}")
    header = {} if header is None else header
    if not isinstance(header, Mapping):
        raise TypeError(f"header must be a mapping, got {type(header).__name__}")
    for key, expected in (("format", FORMAT), ("format_version", FORMAT_VERSION)):
        if key in header and header[key] != expected:
            raise ValueError(f"header[{key!r}] is {header[key]!r}; this writer writes {expected!r}")

    members = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"array keys must be non-empty strings, got {key!r}")
        if key.startswith("__"):
            raise ValueError(f"array key {key!r} must not start with '__' (reserved)")
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise ValueError(f"array {key!r} has dtype {arr.dtype}, which cannot be stored "
                             f"without pickle")
        members[key] = arr
    full_header = {**header, "format": FORMAT, "format_version": FORMAT_VERSION}
    try:
        text = json.dumps(full_header, default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"header is not JSON-serialisable: {exc}") from exc
    members[HEADER_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    write_atomic(path, lambda f: _write_npz(f, members))


def write_atomic(path, write):
    """Create or replace the file `path` atomically: ``write(f)`` fills a temporary file in the
    same directory (opened ``"wb"``), which is flushed, fsync'd and renamed over `path`.

    An interruption (an exception, Ctrl-C) removes the temporary and leaves any existing `path`
    as it was: a reader sees the old file or the new one, never a part of one.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = _create_temp(directory, os.path.basename(path))
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a half-written temporary behind.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _create_temp(directory: str, base: str) -> str:
    """Create an empty, uniquely named file in `directory` and return its path.

    Unlike ``mkstemp`` (mode 0600), the file gets the permissions a plain ``open()`` would give,
    so the renamed result is as readable as any other file the user writes.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp


def _write_npz(f, members: dict) -> None:
    """Write `members` (str -> ndarray, already validated) to the binary file `f` as an
    uncompressed npz.

    This is what ``np.savez`` does, but calling it with ``**members`` would break on keys that
    clash with its own parameters (``file``, ``allow_pickle``), and this way pickle stays off.
    """
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in members.items():
            with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _fsync_dir(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_npz(path) -> tuple[dict, dict]:
    """Read a file written by :func:`save_npz_atomic`.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.

    Returns
    -------
    arrays : dict of str to ndarray
        Every stored array, fully read into memory, without ``__header__``.
    header : dict
        The decoded JSON header, including ``format`` and ``format_version``.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        Naming the file, if it is not an npz archive (a foreign or text file, a single ``.npy``),
        is truncated or damaged, holds pickled data, lacks a valid JSON ``__header__``, is not a
        fastcnn file, or has a ``format_version`` newer than this version of fastcnn reads.
    """
    path = os.fspath(path)
    # Opened outside the try below, so that a missing file stays a FileNotFoundError.
    with open(path, "rb") as f:
        # Name the common mistakes before numpy does: for any non-zip, non-npy content it reports
        # "pickled data", which misleads when the file is, say, text.
        start = f.read(6)
        f.seek(0)
        if not start:
            raise ValueError(f"{path}: empty file, not a fastcnn .npz file")
        if start == b"\x93NUMPY":
            raise ValueError(f"{path}: a single .npy array, not a fastcnn .npz archive")
        if not start.startswith(_ZIP_MAGICS):
            raise ValueError(f"{path}: not a fastcnn .npz file (not a zip archive; starts with "
                             f"{start!r})")
        try:
            loaded = np.load(f, allow_pickle=False)
            with loaded:
                # Read every member now: damage inside the zip only shows when a member is read.
                members = {key: loaded[key] for key in loaded.files}
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
                NotImplementedError, RuntimeError) as exc:
            raise ValueError(f"{path}: damaged or truncated .npz file: {exc}") from exc

    for key, value in members.items():
        if not isinstance(value, np.ndarray):
            raise ValueError(  # noqa: TRY004 (bad file content, not a bad argument)
                f"{path}: member {key!r} is not a .npy array; not a fastcnn file"
            )
    raw = members.pop(HEADER_KEY, None)
    if raw is None:
        raise ValueError(f"{path}: no {HEADER_KEY} member; not a fastcnn file")
    header = _decode_header(raw, path)
    fmt = header.get("format")
    if fmt != FORMAT:
        raise ValueError(f"{path}: format is {fmt!r}, expected {FORMAT!r}; not a fastcnn file")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version} is newer than this fastcnn reads "
            f"({FORMAT_VERSION}); upgrade fastcnn"
        )
    return members, header


def _decode_header(raw: np.ndarray, path: str) -> dict:
    """Decode the ``__header__`` array (uint8 UTF-8 bytes, or a 0-d unicode string) of `path`."""
    try:
        if raw.dtype == np.uint8 and raw.ndim == 1:
            text = raw.tobytes().decode("utf-8")
        elif raw.dtype.kind == "U" and raw.ndim == 0:
            text = str(raw[()])
        else:
            raise ValueError(f"unexpected dtype {raw.dtype} and shape {raw.shape}")
        header = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path}: {HEADER_KEY} is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(  # noqa: TRY004 (bad file content, not a bad argument)
            f"{path}: {HEADER_KEY} is JSON but not an object: {type(header).__name__}"
        )
    return header


def flatten_state(prefix: str, state: Mapping[str, np.ndarray]) -> dict:
    """Prefix every key of `state` with ``prefix + "/"``, e.g. for ``save_npz_atomic``.

    Parameters
    ----------
    prefix : str
        Non-empty, without a leading ``"__"``, e.g. ``"model"`` or ``"optim"``.
    state : mapping of str to ndarray
        E.g. ``{"0.weight": w, "0.bias": b}``.

    Returns
    -------
    dict
        ``{"model/0.weight": w, "model/0.bias": b}``; the arrays are not copied.
    """
    _check_prefix(prefix)
    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"state keys must be non-empty strings, got {key!r}")
        out[f"{prefix}/{key}"] = value
    return out


def unflatten_state(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict:
    """Select the keys of `arrays` under ``prefix + "/"`` and strip that prefix.

    The inverse of :func:`flatten_state`: ``unflatten_state("model", arrays)`` turns
    ``"model/0.weight"`` back into ``"0.weight"`` and ignores keys with other prefixes.
    """
    _check_prefix(prefix)
    head = prefix + "/"
    return {key[len(head):]: value for key, value in arrays.items() if key.startswith(head)}


def _check_prefix(prefix) -> None:
    if not isinstance(prefix, str) or not prefix or prefix.startswith("__"):
        raise ValueError(f"prefix must be a non-empty string not starting with '__', "
                         f"got {prefix!r}")
