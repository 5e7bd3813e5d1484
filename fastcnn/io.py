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

import ast
import json
import math
import os
import re
import secrets
import struct
import time
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "Member",
    "NpzReader",
    "check_depth",
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
    as it was: a reader sees the old file or the new one, never a part of one. Temporaries of an
    earlier save of the same `path` that was killed outright (no chance to clean up) are removed
    once this save succeeds (those last written before this save began).
    """
    path = os.fspath(path)
    started = time.time()
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
    _remove_stale_temps(directory, os.path.basename(path), started)


def _temp_name(base, token):
    return f".{base}.{token}.tmp"


def _remove_stale_temps(directory, base, before):
    """Remove the temporaries ``.<base>.<12 hex digits>.tmp`` of `directory` last modified before
    the time `before` (left by a save that was killed; a save running concurrently keeps
    writing, so its temporary is newer)."""
    pattern = re.compile(re.escape(_temp_name(base, "@")).replace("@", "[0-9a-f]{12}") + r"\Z")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if pattern.match(name):
            full = os.path.join(directory, name)
            try:
                if os.stat(full).st_mtime < before:
                    os.unlink(full)
            except OSError:
                pass


def _create_temp(directory: str, base: str) -> str:
    """Create an empty, uniquely named file in `directory` and return its path.

    Unlike ``mkstemp`` (mode 0600), the file gets the permissions a plain ``open()`` would give,
    so the renamed result is as readable as any other file the user writes.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, _temp_name(base, secrets.token_hex(6)))
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


#: Most members an archive may have, longest JSON header (bytes), longest .npy header (bytes).
MAX_MEMBERS = 2 ** 16
MAX_HEADER_BYTES = 2 ** 24
MAX_NPY_HEADER = 2 ** 16
#: Deepest nesting of JSON lists and objects accepted in a header.
MAX_DEPTH = 32
#: Default bound of the total uncompressed size :func:`load_npz` reads.
DEFAULT_MAX_BYTES = 2 ** 31
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
                NotImplementedError, RuntimeError, struct.error, OverflowError, IndexError)


class Member:
    """What one ``.npy`` member of an archive declares, read from its headers only.

    Attributes: ``key`` (the name without ``.npy``), ``shape``, ``dtype``, ``fortran_order``,
    ``nbytes`` (the data's size), ``offset`` (of the data within the member), ``info`` (its
    ``zipfile.ZipInfo``).
    """

    __slots__ = ("key", "shape", "dtype", "fortran_order", "nbytes", "offset", "info")

    def __init__(self, key, shape, dtype, fortran_order, nbytes, offset, info):
        self.key, self.shape, self.dtype = key, shape, dtype
        self.fortran_order, self.nbytes, self.offset, self.info = (fortran_order, nbytes, offset,
                                                                   info)

    def __repr__(self):
        return f"Member({self.key!r}, shape={self.shape}, dtype={self.dtype})"


class NpzReader:
    """Open a file written by :func:`save_npz_atomic` and check its structure without reading
    (or allocating) any array: the zip directory, every member's ``.npy`` header (parsed safely,
    never evaluated), the declared sizes against each other and the ``__header__`` JSON (bounded
    in size and depth). Arrays are read on demand by :meth:`read`, each with a bounded inflater,
    so a caller can check ``members`` (shapes, dtypes, sizes) against what it expects first.

    Use as a context manager::

        with NpzReader(path) as npz:
            npz.header, npz.members["model/0.weight"].shape
            w = npz.read("model/0.weight")

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        Naming the file, for anything :func:`load_npz` refuses.
    """

    def __init__(self, path, max_bytes=None):
        self.path = path = os.fspath(path)
        self._file = open(path, "rb")  # outside the try: a missing file stays FileNotFoundError
        try:
            self._open(max_bytes)
        except BaseException:
            self.close()
            raise

    def _fail(self, message):
        return ValueError(f"{self.path}: {message}")

    def _open(self, max_bytes):
        f, path = self._file, self.path
        # Name the common mistakes first: numpy would report "pickled data" for any non-zip.
        start = f.read(6)
        f.seek(0)
        if not start:
            raise self._fail("empty file, not a fastcnn .npz file")
        if start == b"\x93NUMPY":
            raise self._fail("a single .npy array, not a fastcnn .npz archive")
        if not start.startswith(_ZIP_MAGICS):
            raise self._fail(f"not a fastcnn .npz file (not a zip archive; starts with "
                             f"{start!r})")
        size = os.fstat(f.fileno()).st_size
        try:
            self._zip = zipfile.ZipFile(f)
            infos = self._zip.infolist()
            if len(infos) > MAX_MEMBERS:
                raise ValueError(f"{len(infos)} members (at most {MAX_MEMBERS})")
            members, total = {}, 0
            for info in infos:
                member = self._member(info, size)
                if member.key in members:
                    raise ValueError(f"member {info.filename!r} appears twice")
                members[member.key] = member
                total += member.nbytes
            if max_bytes is not None and total > max_bytes:
                raise ValueError(f"the arrays declare {total:,} bytes, more than the "
                                 f"{max_bytes:,} allowed")
        except _READ_ERRORS as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(path):
                raise
            raise self._fail(f"damaged or truncated .npz file: {exc}") from None
        raw = members.pop(HEADER_KEY, None)
        if raw is None:
            raise self._fail(f"no {HEADER_KEY} member; not a fastcnn file")
        self.members = members
        self.header = self._read_header(raw)

    def _member(self, info, size):
        name = info.filename
        if not name.endswith(".npy"):
            raise ValueError(f"{self.path}: member {name[:200]!r} is not a .npy array; not a "
                             f"fastcnn file")
        if info.flag_bits & 0x1:
            raise ValueError(f"member {name[:200]!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"member {name[:200]!r} uses compression method "
                             f"{info.compress_type} (only stored or deflated members are read)")
        if info.compress_size > size or info.header_offset > size or (
                info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size):
            raise ValueError(f"member {name[:200]!r} declares sizes that do not fit the file")
        with self._zip.open(info) as m:
            preamble = m.read(10)
            if len(preamble) < 10 or preamble[:6] != b"\x93NUMPY":
                raise ValueError(f"member {name[:200]!r} is not a .npy array")
            major = preamble[6]
            if major == 1:
                hlen, offset = struct.unpack("<H", preamble[8:10])[0], 10
            elif major in (2, 3):
                hlen, offset = struct.unpack("<I", preamble[8:10] + m.read(2))[0], 12
            else:
                raise ValueError(f"member {name[:200]!r}: unknown .npy format version {major}")
            if hlen > MAX_NPY_HEADER:
                raise ValueError(f"member {name[:200]!r}: .npy header of {hlen:,} bytes")
            text = m.read(hlen)
        if len(text) != hlen:
            raise ValueError(f"member {name[:200]!r}: truncated .npy header")
        shape, dtype, fortran = _parse_npy_header(text, major, name)
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + hlen + nbytes != info.file_size:
            raise ValueError(f"member {name[:200]!r} declares {info.file_size:,} bytes but its "
                             f".npy header implies {offset + hlen + nbytes:,} (shape {shape}, "
                             f"{dtype})")
        return Member(name[:-4], shape, dtype, fortran, nbytes, offset + hlen, info)

    def _read_header(self, member):
        if member.nbytes > MAX_HEADER_BYTES:
            raise self._fail(f"{HEADER_KEY} of {member.nbytes:,} bytes is too large")
        try:
            raw = self._read(member)
        except _READ_ERRORS as exc:
            raise self._fail(f"damaged or truncated .npz file: {exc}") from None
        header = _decode_header(raw, self.path)
        fmt = header.get("format")
        if fmt != FORMAT:
            raise self._fail(f"format is {repr(fmt)[:80]}, expected {FORMAT!r}; not a fastcnn "
                             f"file")
        version = header.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise self._fail(f"invalid format_version {repr(version)[:80]}")
        if version > FORMAT_VERSION:
            raise self._fail(f"format_version {version} is newer than this fastcnn reads "
                             f"({FORMAT_VERSION}); upgrade fastcnn")
        return header

    def _read(self, member):
        """The member's array: exactly ``nbytes`` read with a bounded inflater, then the end of
        the member (which makes zipfile check its CRC)."""
        buf = bytearray(member.nbytes)
        view = memoryview(buf)
        with self._zip.open(member.info) as m:
            skip = m.read(member.offset)
            if len(skip) != member.offset:
                raise EOFError("truncated member")
            filled = 0
            while filled < member.nbytes:
                n = m.readinto(view[filled:])
                if not n:
                    raise EOFError(f"member {member.key!r} is truncated")
                filled += n
            if m.read(1):
                raise ValueError(f"member {member.key!r} holds more data than it declares")
        arr = np.frombuffer(buf, dtype=member.dtype)
        return arr.reshape(member.shape, order="F" if member.fortran_order else "C")

    def read(self, key):
        """The array stored under `key` (a new writable array). ValueError naming the file if
        its data is damaged."""
        try:
            return self._read(self.members[key])
        except _READ_ERRORS as exc:
            raise self._fail(f"damaged or truncated .npz file: {exc}") from None

    def close(self):
        zf = getattr(self, "_zip", None)
        if zf is not None:
            zf.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_NPY_KINDS = "biufcU"


def _parse_npy_header(text, major, name):
    """``(shape, dtype, fortran_order)`` of a ``.npy`` header, parsed as a literal (never
    evaluated); ValueError for anything else than a plain numeric or unicode array."""
    where = f"member {name[:200]!r}"
    try:
        d = ast.literal_eval(text.decode("utf-8" if major >= 3 else "latin1"))
    except Exception as exc:  # SyntaxError, tokenize.TokenError, MemoryError, ...  # noqa: BLE001
        raise ValueError(f"{where}: unreadable .npy header ({type(exc).__name__})") from None
    if not isinstance(d, dict) or set(d) != {"descr", "shape", "fortran_order"}:
        raise ValueError(f"{where}: .npy header is not a dict of descr, shape, fortran_order")
    shape, descr, fortran = d["shape"], d["descr"], d["fortran_order"]
    if (not isinstance(shape, tuple) or len(shape) > 32 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)):
        raise ValueError(f"{where}: invalid shape {str(shape)[:80]} in the .npy header")
    if not isinstance(fortran, bool):
        raise ValueError(f"{where}: invalid fortran_order in the .npy header")
    if not isinstance(descr, str) or len(descr) > 16:
        raise ValueError(f"{where}: dtype {str(descr)[:80]} cannot be read without pickle")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: invalid dtype {descr!r} in the .npy header") from None
    if dtype.kind not in _NPY_KINDS or dtype.fields is not None or dtype.subdtype is not None \
            or dtype.itemsize == 0:
        raise ValueError(f"{where}: dtype {dtype} cannot be read without pickle")
    return shape, dtype, fortran


def load_npz(path, max_bytes=DEFAULT_MAX_BYTES) -> tuple[dict, dict]:
    """Read a file written by :func:`save_npz_atomic`.

    The structure is checked before any array is read (see :class:`NpzReader`): the
    declared size of every member must match its ``.npy`` header, and their total must not
    exceed `max_bytes`; each array is then read with a bounded inflater.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.
    max_bytes : int or None, default 2**31
        Refuse files whose arrays declare more bytes than this (None: no bound).

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
        is truncated or damaged, holds pickled data, declares more than `max_bytes`, lacks a
        valid JSON ``__header__``, is not a fastcnn file, or has a ``format_version`` newer than
        this version of fastcnn reads.
    """
    with NpzReader(path, max_bytes) as npz:
        arrays = {key: npz.read(key) for key in npz.members}
        return arrays, npz.header


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
        check_depth(header)
    except RecursionError:
        raise ValueError(f"{path}: {HEADER_KEY} is JSON nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path}: {HEADER_KEY} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise ValueError(  # noqa: TRY004 (bad file content, not a bad argument)
            f"{path}: {HEADER_KEY} is JSON but not an object: {type(header).__name__}"
        )
    return header


def check_depth(obj, limit=MAX_DEPTH):
    """Raise ValueError if the JSON value `obj` nests lists/objects deeper than `limit`
    (checked iteratively, so a deep value cannot exhaust the stack)."""
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            if depth >= limit:
                raise ValueError(f"JSON nested more than {limit} levels deep")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items)


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
