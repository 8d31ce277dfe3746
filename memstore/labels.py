"""Finding audio files under a root folder, and labelling them.

The scan is recursive, sorted by the file system's bytes, and deterministic.
Symbolic links are followed once; a link back into a folder already visited
is a loop and is listed as skipped, like broken links, unreadable folders and
audio-named entries that are not regular files. Files without an audio
extension are not audio and are ignored silently.

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
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import BuildError, ParameterError

__all__ = ["ScanResult", "scan_audio", "assign_labels", "label_index", "LABEL_MODES"]

LABEL_MODES = ("folder", "irmas", "none")
_TAG = re.compile(r"\[([^\[\]]+)\]")


class ScanResult(NamedTuple):
    files: list[str]                  # POSIX paths relative to the root
    skipped: list[tuple[str, str]]    # (relative path, reason)


def scan_audio(root, *, extensions=None) -> ScanResult:
    """List the audio files under ``root``.

    Parameters
    ----------
    root : str or os.PathLike
    extensions : sequence of str, optional
        Lower-case extensions with the dot; default :func:`memstore.audio.audio_extensions`.

    Returns
    -------
    ScanResult
        ``files`` sorted, and ``skipped`` entries with their reasons.

    Raises
    ------
    BuildError
        If the root is missing, not a folder, or holds no audio file.
    """
    if extensions is None:
        from .audio import audio_extensions

        extensions = audio_extensions()
    exts = tuple(e.lower() for e in extensions)
    root_s = os.fsencode(root)
    if not os.path.isdir(root_s):
        raise BuildError(f"audio root {os.fsdecode(root_s)!r} does not exist or is not a folder")
    files: list[bytes] = []
    skipped: list[tuple[bytes, str]] = []
    real = os.stat(root_s)
    seen = {(real.st_dev, real.st_ino)}
    _walk(root_s, b"", exts, files, skipped, seen)
    files.sort()
    skipped.sort()
    if not files:
        raise BuildError(
            f"no audio files under {os.fsdecode(root_s)!r} (searched for {', '.join(exts)})"
        )
    return ScanResult([os.fsdecode(f) for f in files], [(os.fsdecode(p), r) for p, r in skipped])


def _walk(root: bytes, rel: bytes, exts, files, skipped, seen) -> None:
    folder = os.path.join(root, rel) if rel else root
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        skipped.append((rel or b".", f"cannot list folder: {err.strerror or err}"))
        return
    for name in names:
        relpath = rel + b"/" + name if rel else name
        full = os.path.join(folder, name)
        is_audio = os.fsdecode(name).lower().endswith(exts)
        try:
            lst = os.lstat(full)
        except OSError as err:
            if is_audio:
                skipped.append((relpath, f"cannot stat: {err.strerror or err}"))
            continue
        if stat.S_ISLNK(lst.st_mode):
            try:
                st = os.stat(full)
            except OSError as err:
                if err.errno == 40:  # ELOOP: a link chain that never ends
                    skipped.append((relpath, "symlink loop"))
                else:
                    skipped.append((relpath, "broken symlink"))
                continue
        else:
            st = lst
        if stat.S_ISDIR(st.st_mode):
            if is_audio and not stat.S_ISLNK(lst.st_mode):
                skipped.append((relpath, "not a regular file (a folder with an audio extension)"))
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                skipped.append((relpath, "symlink loop (folder already visited)"))
                continue
            seen.add(key)
            _walk(root, relpath, exts, files, skipped, seen)
        elif is_audio:
            if not stat.S_ISREG(st.st_mode):
                skipped.append((relpath, "not a regular file"))
            elif not os.access(full, os.R_OK):
                skipped.append((relpath, "permission denied"))
            else:
                files.append(relpath)


def _irmas_tags(relpath: str, root: Path) -> list[str]:
    name = Path(relpath).name
    tags = _TAG.findall(name)
    if tags:
        return [tags[0].strip()]
    txt = (root / relpath).with_suffix(".txt")
    try:
        text = txt.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def assign_labels(root, relpaths: list[str], mode: str | Callable = "folder"):
    """Label each file.

    Returns
    -------
    classes : list of str, sorted
    multihot : ndarray [shape=(n_files, n_classes)], uint8
    """
    root = Path(os.fsdecode(root))
    if callable(mode):
        raw = []
        for p in relpaths:
            value = mode(p)
            if value is None:
                raw.append([])
            elif isinstance(value, str):
                raw.append([value])
            elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                raw.append(list(value))
            else:
                raise ParameterError(f"labels callable returned {value!r} for {p!r}; "
                                     "it must return a str, a list of str or None")
    elif mode == "folder":
        raw = [[p.split("/", 1)[0]] if "/" in p else [] for p in relpaths]
    elif mode == "irmas":
        raw = [_irmas_tags(p, root) for p in relpaths]
    elif mode == "none":
        raw = [[] for _ in relpaths]
    else:
        raise ParameterError(f"labels={mode!r} must be one of {LABEL_MODES} or a callable")
    classes = sorted({c for tags in raw for c in tags})
    col = {c: i for i, c in enumerate(classes)}
    multihot = np.zeros((len(relpaths), len(classes)), dtype=np.uint8)
    for i, tags in enumerate(raw):
        for c in tags:
            multihot[i, col[c]] = 1
    return classes, multihot


def label_index(multihot: np.ndarray) -> np.ndarray:
    """Class index of each row with exactly one label, else -1 (int32)."""
    multihot = np.asarray(multihot)
    out = np.full(multihot.shape[0], -1, dtype=np.int32)
    if multihot.shape[1]:
        single = multihot.sum(axis=1) == 1
        out[single] = multihot[single].argmax(axis=1)
    return out
