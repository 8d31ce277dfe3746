"""Labels from a metadata table: Hugging Face AudioFolder's ``metadata.csv`` and its kin.

The convention (``datasets``' AudioFolder): a table in the data folder names each
file in a ``file_name`` column, relative to the table's folder, and gives its
class in a ``label`` column. The table is CSV (``.csv``), tab-separated
(``.tsv``) or JSON Lines (``.jsonl``, one object per line). Several labels for
one file are separated by ``;`` in a CSV/TSV cell and given as a list in JSONL;
an empty cell, ``null`` or ``[]`` means no label (the file is stored
unlabelled). Other tables name their columns with :class:`LabelTable`, for
example ESC-50's ``meta/esc50.csv`` (``filename``, ``category``), whose names
are relative to the ``audio/`` folder (``relative_to=``).

A build given a table's path (``labels="metadata.csv"``) looks for it in the
audio root first, then relative to the working directory. It lists a file
that has no row as skipped (``no row in esc50.csv``), and a row whose file is
not among the audio files found as skipped too (``listed in esc50.csv but not
found``), so ``strict=True`` stops on either; a table none of whose rows names
a scanned file is an error (almost always a wrong ``relative_to``). A file
named in two rows, a missing or repeated column, a row with more or fewer
cells than the header (empty trailing cells aside), a quote left open, a line
that is not a valid JSON object, or a label that holds a line break or is not
Unicode text raises :class:`~memstore.errors.BuildError` naming the table and
the line.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .errors import BuildError, ParameterError

__all__ = ["LabelTable", "TABLE_SUFFIXES", "as_label_table", "find_table"]

#: table suffixes a plain path passed as ``labels=`` is read as
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")


class LabelTable:
    """A metadata table that labels audio files.

    Parameters
    ----------
    path : str or os.PathLike
        ``.csv``, ``.tsv`` or ``.jsonl`` file.
    file_column : str
        Column of file names, relative to ``relative_to`` (default ``"file_name"``).
    label_column : str
        Column of labels (default ``"label"``).
    sep : str
        Separator of several labels in one CSV/TSV cell (default ``";"``); ``""``
        takes the whole cell as one label. JSONL gives several labels as a list.
    relative_to : str or os.PathLike, optional
        Folder the file names are relative to; default: the table's folder.

    Raises
    ------
    ParameterError
        For a suffix that is not .csv/.tsv/.jsonl, or empty column names.
    BuildError
        For a table that cannot be read, lacks a column or repeats one, names
        a file twice, has a row of the wrong length, a quote left open, a bad
        JSON line or a bad label value.

    Example
    -------
    >>> table = LabelTable("ESC-50/meta/esc50.csv", file_column="filename",   # doctest: +SKIP
    ...                    label_column="category", relative_to="ESC-50/audio")
    >>> build_store("ESC-50/audio", "esc50.h5", labels=table)                 # doctest: +SKIP
    """

    def __init__(self, path, *, file_column: str = "file_name", label_column: str = "label", sep: str = ";",
                 relative_to=None):
        self.path = Path(os.fsdecode(path))
        suffix = self.path.suffix.lower()
        if suffix not in TABLE_SUFFIXES:
            raise ParameterError(f"label table {str(self.path)!r} must end in one of {TABLE_SUFFIXES}")
        for name, value in (("file_column", file_column), ("label_column", label_column)):
            if not isinstance(value, str) or not value:
                raise ParameterError(f"{name}={value!r} must be a non-empty column name")
        if not isinstance(sep, str):
            raise ParameterError(f"sep={sep!r} must be a string")
        self.file_column, self.label_column, self.sep = file_column, label_column, sep
        self.relative_to = Path(os.fsdecode(relative_to)) if relative_to is not None else self.path.parent
        rows = self._read_jsonl() if suffix == ".jsonl" else self._read_delimited("\t" if suffix == ".tsv" else ",")
        self.labels: dict[str, list[str]] = {}  # absolute normalised path -> labels
        self.names: dict[str, str] = {}         # absolute normalised path -> the name as the table gives it
        seen: dict[str, int] = {}
        for line, name, labels in rows:
            key = self._key(name)
            if key in seen:
                raise BuildError(f"{self.path}: line {line} names {name!r} again (first on line {seen[key]})")
            seen[key] = line
            self.labels[key] = labels
            self.names[key] = name

    @property
    def name(self) -> str:
        return self.path.name

    def __repr__(self) -> str:
        return (f"LabelTable({str(self.path)!r}, file_column={self.file_column!r}, "
                f"label_column={self.label_column!r}, sep={self.sep!r}, relative_to={str(self.relative_to)!r})")

    def _key(self, name: str) -> str:
        return os.path.normpath(os.path.abspath(self.relative_to / name))

    def _split(self, cell: str) -> list[str]:
        parts = cell.split(self.sep) if self.sep else [cell]
        return [p.strip() for p in parts if p.strip()]

    def _open(self):
        try:
            return open(self.path, encoding="utf-8-sig", newline="")  # noqa: SIM115 (closed by the with)
        except OSError as err:
            raise BuildError(f"label table {self.path}: cannot open ({err.strerror or err})") from err

    def _columns_missing(self, present) -> BuildError:
        want = [c for c in (self.file_column, self.label_column) if c not in present]
        return BuildError(f"{self.path}: no column {', '.join(map(repr, want))}; it has {sorted(present)} "
                          "(name them with LabelTable(path, file_column=..., label_column=...))")

    def _read_delimited(self, delimiter: str):
        with self._open() as f:
            try:
                # strict: an unclosed quote is an error, not a cell that swallows the rest of the table
                reader = csv.reader(f, delimiter=delimiter, strict=True)
                header = next(reader, [])
                self._check_header(header)
                at_file, at_label = header.index(self.file_column), header.index(self.label_column)
                rows = []
                for cells in reader:
                    if not cells:  # a blank line
                        continue
                    if len(cells) > len(header) and not "".join(cells[len(header):]).strip():
                        cells = cells[: len(header)]  # trailing empty cells (a spreadsheet's export): nothing lost
                    if len(cells) != len(header):
                        raise BuildError(
                            f"{self.path}: line {reader.line_num} has {len(cells)} cell(s), the header "
                            f"{len(header)}; quote a cell that holds {delimiter!r}"
                            + (f", and separate several labels with {self.sep!r}" if self.sep else ""))
                    name = cells[at_file].strip()
                    if not name:
                        raise BuildError(f"{self.path}: line {reader.line_num} has an empty {self.file_column!r}")
                    labels = self._split(cells[at_label])
                    self._check_text(reader.line_num, name, labels)
                    rows.append((reader.line_num, name, labels))
            except (csv.Error, UnicodeDecodeError) as err:
                where = f" at line {reader.line_num}" if isinstance(err, csv.Error) else ""
                hint = " (a quote left open?)" if isinstance(err, csv.Error) and "end of data" in str(err) else ""
                raise BuildError(f"{self.path}: not a readable table{where} ({err}){hint}") from err
        return rows

    def _check_header(self, header: list[str]) -> None:
        """Both columns present, each once: a repeated name would leave all but one of its columns unread."""
        if self.file_column not in header or self.label_column not in header:
            raise self._columns_missing(header)
        for column in dict.fromkeys((self.file_column, self.label_column)):
            at = [i + 1 for i, c in enumerate(header) if c == column]
            if len(at) > 1:
                raise BuildError(f"{self.path}: the column {column!r} appears {len(at)} times "
                                 f"(columns {', '.join(map(str, at))}); which one is meant?")

    def _check_text(self, line: int, name: str, labels: list[str], hint: str = " (a quote left open?)") -> None:
        """Names and labels that are Unicode text, and labels of one line each (a class name is shown on one)."""
        for what, text in [(self.file_column, name)] + [("label", label) for label in labels]:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:  # a lone surrogate, which a JSON escape can give
                raise BuildError(f"{self.path}: line {line}: {what} {text!r} is not valid Unicode text") from err
            if what == "label" and ("\n" in text or "\r" in text):
                raise BuildError(f"{self.path}: line {line}: label {text!r} holds a line break{hint}")

    def _read_jsonl(self):
        rows = []
        with self._open() as f:
            try:
                lines = list(f)
            except UnicodeDecodeError as err:
                raise BuildError(f"{self.path}: not UTF-8 text ({err})") from err
        for i, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as err:  # JSONDecodeError, or an integer past Python's digit limit
                raise BuildError(f"{self.path}: line {i} is not valid JSON "
                                 f"({getattr(err, 'msg', None) or err})") from err
            if not isinstance(obj, dict):
                kind = ("array" if isinstance(obj, list) else "string" if isinstance(obj, str) else
                        "number" if isinstance(obj, int | float) and not isinstance(obj, bool) else json.dumps(obj))
                raise BuildError(f"{self.path}: line {i} is a JSON {kind}, not an object with "
                                 f"{self.file_column!r} and {self.label_column!r}")
            want = [c for c in (self.file_column, self.label_column) if c not in obj]
            if want:
                raise BuildError(f"{self.path}: line {i} has no {' or '.join(map(repr, want))} "
                                 f"(it has {sorted(obj)}; name them with LabelTable(path, file_column=..., "
                                 "label_column=...))")
            name, value = obj[self.file_column], obj[self.label_column]
            if not isinstance(name, str) or not name.strip():
                raise BuildError(f"{self.path}: line {i}: {self.file_column!r} must be a non-empty string")
            labels = self._json_labels(value, i)
            self._check_text(i, name.strip(), labels, hint="")
            rows.append((i, name.strip(), labels))
        return rows

    def _json_labels(self, value, line: int) -> list[str]:
        values = [] if value is None else value if isinstance(value, list) else [value]
        out = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, str | int):
                raise BuildError(f"{self.path}: line {line}: label {v!r} must be a string or an integer")
            if str(v).strip():
                out.append(str(v).strip())
        return out

    def match(self, root, relpaths) -> tuple[dict[str, list[str]], list[str]]:
        """Labels of the files found under ``root``, and the rows whose file was not found.

        Parameters
        ----------
        root : str or os.PathLike
            The audio root the paths are relative to.
        relpaths : iterable of str
            Every file the scan found (stored or skipped), POSIX paths relative to ``root``.

        Returns
        -------
        labels : dict
            ``relpath -> list of labels`` for each file that has a row.
        missing : list of str
            For each row whose file was not found, its path relative to
            ``root`` when it lies inside it, else the name as the table gives it.

        Raises
        ------
        BuildError
            When no row names any of the files: almost always a wrong ``relative_to``.
        """
        root_abs = os.path.normpath(os.path.abspath(os.fsdecode(root)))
        found = {os.path.normpath(os.path.join(root_abs, p)): p for p in relpaths}
        labels = {found[k]: v for k, v in self.labels.items() if k in found}
        if self.labels and found and not labels:
            example = next(iter(self.names.values()))
            raise BuildError(f"{self.path}: none of its {len(self.labels)} rows names a file found under {root_abs} "
                             f"(names such as {example!r} are read relative to {self.relative_to}; "
                             "set relative_to= / --relative-to to the folder they are relative to)")
        missing = []
        for key in self.labels:
            if key in found:
                continue
            rel = os.path.relpath(key, root_abs)
            missing.append(rel.replace(os.sep, "/") if not rel.startswith("..") else self.names[key])
        return labels, sorted(missing)


def find_table(path, root=None) -> Path:
    """Where a table named ``path`` is: a relative path is looked up in the audio ``root`` first.

    AudioFolder keeps ``metadata.csv`` in the data folder, so
    ``build_store("my_dataset", "my.h5", labels="metadata.csv")`` means
    ``my_dataset/metadata.csv``; when no such file is there, the path is taken
    as it is (relative to the working directory).
    """
    path = Path(os.fsdecode(path))
    if root is not None and not path.is_absolute():
        inside = Path(os.fsdecode(root)) / path
        if inside.is_file():
            return inside
    return path


def as_label_table(labels, root=None) -> LabelTable | None:
    """``labels`` as a :class:`LabelTable` when it is one or a path to a table; ``None`` for modes and callables.

    A relative path is found with :func:`find_table` (the audio ``root`` first).
    """
    if isinstance(labels, LabelTable):
        return labels
    is_mode = isinstance(labels, str) and labels in ("folder", "irmas", "none")
    if isinstance(labels, str | os.PathLike) and not is_mode and os.fsdecode(labels).lower().endswith(TABLE_SUFFIXES):
        return LabelTable(find_table(labels, root))
    return None
