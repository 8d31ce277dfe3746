"""Finding audio files under a root folder, and labelling them.

The scan is recursive, sorted by the file system's bytes, and deterministic.
Symbolic links are followed once; a link to a folder above it (which would
make the walk endless) is a loop and is listed as skipped, like broken links, unreadable folders and
audio-named entries that are not regular files. Files without an audio
extension are not audio: they are not read, but counted by extension
(``ScanResult.ignored``, ``{".txt": 2874, "": 1}``; ``""`` is no extension)
so a build report says what it left out.

Label modes
-----------
``"folder"``
    The class is the first folder under the root (IRMAS ``Training/<cls>/``).
``"irmas"``
    IRMAS training names ``[cls][dru|nod][genre]...``: the first bracketed tag
    is the instrument. Only the first tag is read as an instrument, so
    ``[cla]`` as a later (genre) tag means classical, never clarinet, and a
    missing ``dru|nod`` tag does not matter. Testing excerpts, which have no
    tags, take their labels from the ``.txt`` file beside them: one
    instrument code per line, blank lines and tabs ignored (multi-label).
``"none"``
    No classes.
callable
    ``f(relative_path) -> str | list[str] | None``.
a table
    A :class:`~memstore.labeltable.LabelTable`, or the path of a ``.csv``,
    ``.tsv`` or ``.jsonl`` metadata table (Hugging Face AudioFolder's
    ``file_name``/``label`` convention): see :mod:`memstore.labeltable`.
    :func:`memstore.build_store` matches the table to the scanned files.

A fixed class list
------------------
By default the classes are the sorted set of labels found. ``build_store(...,
classes=[...])`` fixes the list and its order instead (a test store that must
line up with its training store's label columns): :func:`fix_classes` puts
the columns in that order, keeps a column for a class no file has, and names
each file's labels outside the list, so the build can skip that file with
its reason.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import BuildError, ParameterError

__all__ = ["ScanResult", "scan_audio", "assign_labels", "label_index", "check_classes", "fix_classes", "LABEL_MODES"]

LABEL_MODES = ("folder", "irmas", "none")
_TAG = re.compile(r"\[([^\[\]]+)\]")


class ScanResult(NamedTuple):
    files: list[str]                  # POSIX paths relative to the root
    skipped: list[tuple[str, str]]    # (relative path, reason)
    ignored: dict[str, int]           # files not searched for, counted by lower-case extension


def scan_audio(root, *, extensions=None) -> ScanResult:
    """List the audio files under ``root``, recursively, in a deterministic order.

    Parameters
    ----------
    root : str, bytes or os.PathLike
        The audio folder.
    extensions : sequence of str, optional
        Extensions to accept, matched case-insensitively (``".wav"`` or
        ``"wav"``); default :func:`memstore.audio.audio_extensions`.

    Returns
    -------
    ScanResult
        ``files``: POSIX paths relative to ``root`` (``str``; names that are
        not UTF-8 survive through ``os.fsdecode``), sorted by their bytes.
        ``skipped``: ``(relative path, reason)`` for audio-named entries that
        cannot be read, broken symlinks, symlink loops and unreadable folders.
        ``ignored``: other files (not folders) counted by lower-case
        extension, ``""`` for none, sorted by extension.

    Raises
    ------
    BuildError
        If the root is missing, not a folder, or holds no readable audio file.
    ParameterError
        If ``extensions`` is not a sequence of non-empty strings.

    Notes
    -----
    A symbolic link is followed (once: it is resolved by the system, not
    re-entered by the walk); a link to a folder that is one of its own
    ancestors is a loop and is skipped. A link to another folder inside the
    root lists that folder's files a second time under the link's name, as the
    file system presents them.

    Example
    -------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "b.WAV").write_bytes(b""); _ = (d / "a.wav").write_bytes(b"")
    >>> scan_audio(d, extensions=[".wav"]).files
    ['a.wav', 'b.WAV']
    """
    exts = _normalise_extensions(extensions)
    root_b = os.fsencode(root)
    shown = os.fsdecode(root_b)
    try:
        real = os.stat(root_b)
    except OSError as err:
        raise BuildError(f"audio root {shown!r} does not exist ({err.strerror or err})") from err
    if not stat.S_ISDIR(real.st_mode):
        raise BuildError(f"audio root {shown!r} is not a folder")
    files: list[bytes] = []
    skipped: list[tuple[bytes, str]] = []
    ignored: dict[str, int] = {}
    _walk(root_b, b"", exts, files, skipped, ignored, [(real.st_dev, real.st_ino)])
    files.sort()
    skipped.sort()
    if not files:
        why = f"; {len(skipped)} entr{'y was' if len(skipped) == 1 else 'ies were'} skipped" if skipped else ""
        seen = ", ".join(f"{e or '(none)'} {n}" for e, n in sorted(ignored.items()))
        also = f"; found only {seen}" if seen else ""
        raise BuildError(f"no audio files under {shown!r} (searched for {', '.join(exts)}){why}{also}")
    return ScanResult([os.fsdecode(f) for f in files], [(os.fsdecode(p), r) for p, r in skipped],
                      dict(sorted(ignored.items())))


def _normalise_extensions(extensions) -> tuple[str, ...]:
    if extensions is None:
        from .audio import audio_extensions

        extensions = audio_extensions()
    if isinstance(extensions, str | bytes) or not all(isinstance(e, str) and e.strip(".") for e in extensions):
        raise ParameterError(f"extensions={extensions!r} must be a sequence of extensions such as ('.wav',)")
    exts = tuple(sorted({"." + e.lower().lstrip(".") for e in extensions}))
    if not exts:
        raise ParameterError("extensions=() must name at least one extension")
    return exts


def _reason(err: OSError) -> str:
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return err.strerror or str(err)


def _walk(root: bytes, rel: bytes, exts, files, skipped, ignored, ancestors) -> None:
    """Depth-first walk; ``ancestors`` holds the (st_dev, st_ino) of the folders above ``rel``."""
    folder = os.path.join(root, rel) if rel else root
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        skipped.append((rel or b".", _reason(err)))
        return
    for name in names:
        relpath = rel + b"/" + name if rel else name
        full = os.path.join(folder, name)
        is_audio = os.fsdecode(name).lower().endswith(exts)
        try:
            lst = os.lstat(full)
        except OSError as err:  # vanished or unreachable between listdir and lstat
            if is_audio:
                skipped.append((relpath, _reason(err)))
            continue
        link = stat.S_ISLNK(lst.st_mode)
        if link:
            try:
                st = os.stat(full)
            except OSError as err:
                if err.errno == errno.ELOOP:  # a chain of links that never reaches a file
                    skipped.append((relpath, "symlink loop"))
                elif err.errno in (errno.ENOENT, errno.ENOTDIR):
                    skipped.append((relpath, "broken symlink"))
                else:
                    skipped.append((relpath, _reason(err)))
                continue
        else:
            st = lst
        if stat.S_ISDIR(st.st_mode):
            if is_audio:  # a folder named x.wav is not audio, and its contents are not looked at
                skipped.append((relpath, "not a regular file (a folder with an audio extension)"))
                continue
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                skipped.append((relpath, "symlink loop (links to a folder above it)"))
                continue
            ancestors.append(key)
            _walk(root, relpath, exts, files, skipped, ignored, ancestors)
            ancestors.pop()
        elif not is_audio:
            ext = os.path.splitext(os.fsdecode(name))[1].lower()
            ignored[ext] = ignored.get(ext, 0) + 1
        else:
            if not stat.S_ISREG(st.st_mode):  # FIFO, socket, device: opening could block
                skipped.append((relpath, "not a regular file"))
            elif not os.access(full, os.R_OK):
                skipped.append((relpath, "permission denied"))
            else:
                files.append(relpath)


def _irmas_tags(relpath: str, root: Path, problems: list | None = None) -> list[str]:
    tags = _TAG.findall(relpath.rsplit("/", 1)[-1])
    if tags:
        return [tags[0].strip()]  # by position: later tags are drums and genre ([cla] = classical)
    txt = (root / relpath).with_suffix(".txt")
    try:
        text = _read_label_file(txt)
    except FileNotFoundError:  # no .txt (or a dangling link): the file has no label
        return []
    except OSError as err:  # there, but unreadable: the caller reports it
        if problems is not None:
            problems.append((relpath, f"{txt.name}: {_reason(err)}"))
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_label_file(path: Path) -> str:
    """A label file's text; a FIFO, device or folder is refused at once instead of blocking on it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    return data.decode("utf-8-sig", errors="replace")


def assign_labels(root, relpaths: list[str], mode: str | Callable = "folder", *,
                  problems: list | None = None) -> tuple[list[str], np.ndarray]:
    """Label each file.

    Parameters
    ----------
    root : str or os.PathLike
        The audio root (``"irmas"`` mode reads ``.txt`` files beside the audio).
    relpaths : list of str
        POSIX paths relative to ``root``, as :func:`scan_audio` returns them.
    mode : {"folder", "irmas", "none"} or callable
        See the module docstring; a callable maps a relative path to a class
        name, a list of class names, or ``None`` (no label).
    problems : list, optional
        Receives ``(relpath, reason)`` for each file whose label could not be
        read (in ``"irmas"`` mode: a ``.txt`` that exists but cannot be read, or
        is not a regular file). Such a file gets no label; a missing ``.txt``
        is no problem, just no label.

    Returns
    -------
    classes : list of str, sorted
    multihot : ndarray [shape=(n_files, n_classes)], uint8
        Row ``i`` has a 1 for every class of file ``i``; all zeros = no label.

    Raises
    ------
    ParameterError
        For an unknown mode, or a callable that returns something else than a
        non-empty string, a list of them, or ``None``.

    Example
    -------
    >>> assign_labels("/data", ["vio/a.wav", "cel/b.wav", "c.wav"], "folder")[1].tolist()
    [[0, 1], [1, 0], [0, 0]]
    """
    root = Path(os.fsdecode(root))
    if callable(mode):
        raw = [_from_callable(mode, p) for p in relpaths]
    elif mode == "folder":
        raw = [[p.split("/", 1)[0]] if "/" in p else [] for p in relpaths]
    elif mode == "irmas":
        raw = [_irmas_tags(p, root, problems) for p in relpaths]
    elif mode == "none":
        raw = [[] for _ in relpaths]
    else:
        raise ParameterError(f"labels={mode!r} must be one of {LABEL_MODES} or a callable")
    classes = sorted({c for tags in raw for c in tags})
    col = {c: i for i, c in enumerate(classes)}
    multihot = np.zeros((len(relpaths), len(classes)), dtype=np.uint8)
    for i, tags in enumerate(raw):
        multihot[i, [col[c] for c in tags]] = 1
    return classes, multihot


def _from_callable(fn: Callable, relpath: str) -> list[str]:
    value = fn(relpath)
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) and v for v in values):
        raise ParameterError(f"labels callable returned {value!r} for {relpath!r}; "
                             "it must return a non-empty str, a list of them, or None")
    return list(values)


def label_index(multihot: np.ndarray) -> np.ndarray:
    """Class index of each row with exactly one label, else -1.

    Parameters
    ----------
    multihot : ndarray [shape=(n_files, n_classes)]

    Returns
    -------
    ndarray [shape=(n_files,)], int32

    Example
    -------
    >>> label_index(np.array([[0, 1], [1, 1], [0, 0]], np.uint8)).tolist()
    [1, -1, -1]
    """
    multihot = np.asarray(multihot)
    if multihot.ndim != 2:
        raise ParameterError(f"multihot of shape {multihot.shape} must be 2-D (n_files, n_classes)")
    out = np.full(multihot.shape[0], -1, dtype=np.int32)
    if multihot.shape[1]:
        single = multihot.sum(axis=1) == 1
        out[single] = multihot[single].argmax(axis=1)
    return out


def check_classes(classes) -> list[str]:
    """Validate a fixed class list: a non-empty sequence of distinct non-empty strings.

    Parameters
    ----------
    classes : list, tuple or 1-D ndarray of str

    Returns
    -------
    list of str
        The same names in the same order, as plain ``str``.

    Raises
    ------
    ParameterError
        For a string (not a list), an empty list, a name that is not a
        non-empty string, or a name given twice.

    Example
    -------
    >>> check_classes(("vio", "cel"))
    ['vio', 'cel']
    """
    if isinstance(classes, np.ndarray) and classes.ndim == 1:
        classes = classes.tolist()
    if not isinstance(classes, list | tuple):
        raise ParameterError(f"classes={classes!r} must be a list of class names")
    if not classes:
        raise ParameterError("classes=[] must name at least one class")
    for c in classes:
        if not isinstance(c, str) or not c:
            raise ParameterError(f"classes: {c!r} must be a non-empty string")
    seen: set[str] = set()
    for c in classes:
        if c in seen:
            raise ParameterError(f"classes: {c!r} is listed twice; each class must appear once")
        seen.add(c)
    return [str(c) for c in classes]


def fix_classes(found: list[str], multihot: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[list[str]]]:
    """Put the label columns in the order of a fixed class list.

    Parameters
    ----------
    found : list of str
        The classes of ``multihot``'s columns, as :func:`assign_labels` returns them.
    multihot : ndarray [shape=(n_files, len(found))], uint8
    classes : list of str
        The fixed list (validated by :func:`check_classes`).

    Returns
    -------
    multihot : ndarray [shape=(n_files, len(classes))], uint8
        Column ``j`` is class ``classes[j]``; a class no file has is a column of zeros.
    outside : list of list of str
        For each file, its labels that are not in ``classes`` (sorted); a file
        with any of them cannot be stored under this list.

    Example
    -------
    >>> m, out = fix_classes(["cel", "sax"], np.array([[1, 0], [0, 1]], np.uint8), ["vio", "cel"])
    >>> m.tolist(), out
    ([[0, 1], [0, 0]], [[], ['sax']])
    """
    col = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(multihot), len(classes)), dtype=np.uint8)
    outside: list[list[str]] = [[] for _ in range(len(multihot))]
    for k, c in enumerate(found):
        rows = np.flatnonzero(multihot[:, k])
        if c in col:
            out[rows, col[c]] = 1
        else:
            for i in rows:
                outside[i].append(c)
    return out, outside
