"""Writing a store safely: a full disk, a second build of the same store, validation before the rename,
and appends that add nothing.

A full disk is met for real on a small tmpfs (when this machine lets us mount one) and, always, by
making ``os.posix_fallocate`` fail with ENOSPC the way a full file system does.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import wavs
from test_build import same_store

import memstore
import memstore.writer as writer_mod
from memstore.build import build_store, write_store_from_arrays
from memstore.demo import make_demo_folder
from memstore.errors import BuildError, StoreFormatError
from memstore.features import MelSpectrogram
from memstore.store import open_store
from memstore.verify import verify_store

#: environment for subprocesses: import this copy of memstore, whatever is installed
ENV = dict(os.environ, PYTHONPATH=str(Path(memstore.__file__).parents[1]))

NO_SPACE = re.compile(r"needs (\d+) more bytes \((\d+) in all\) but .* has (\d+) bytes free")


def _no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _no_fallocate(*args):
    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".lock")))


# --- a full disk -----------------------------------------------------------------------------

def test_full_disk_fails_before_extraction_then_the_same_build_completes(demo_root, demo_store, tmp_path,
                                                                         monkeypatch):
    store = tmp_path / "s.h5"
    monkeypatch.setattr(os, "posix_fallocate", _no_space)
    with pytest.raises(BuildError, match=NO_SPACE) as info:
        build_store(demo_root, store, workers=1, progress=False)
    needed, size, free = (int(g) for g in NO_SPACE.search(str(info.value)).groups())
    assert not store.exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()  # space was freed
    report = build_store(demo_root, store, workers=1, progress=False)
    # the features are the file but for HDF5's metadata, whose few blocks (shared with the edges of the
    # features) are already on disk
    assert size >= report.bytes and report.bytes - 16384 <= needed <= size and free > 0
    assert verify_store(store).ok
    same_store(store, demo_store)


def test_full_disk_during_an_append_leaves_the_old_store(demo_store, tmp_path, monkeypatch):
    extra = make_demo_folder(tmp_path / "extra", n_per_class=1, seed=5)
    store = tmp_path / "s.h5"
    shutil.copy(demo_store, store)
    before = store.read_bytes()
    monkeypatch.setattr(os, "posix_fallocate", _no_space)
    with pytest.raises(BuildError, match=NO_SPACE):
        build_store(extra, store, mode="append", workers=1, progress=False)
    assert store.read_bytes() == before and _leftovers(tmp_path) == []
    monkeypatch.undo()
    report = build_store(extra, store, mode="append", workers=1, progress=False)
    assert report.stored == 6
    with open_store(store) as s:
        assert len(s) == 24 and s.generation == 1
    assert verify_store(store).ok


def test_full_disk_on_resume_keeps_the_extracted_files(demo_root, demo_store, tmp_path, monkeypatch):
    """A partial file with extracted rows is kept when space runs out, and resumed once it is back."""
    store = tmp_path / "s.h5"
    # an honest interrupted build: a file that fails extraction makes the build stop at compaction,
    # after every other file was extracted and flagged done
    root = tmp_path / "audio"
    shutil.copytree(demo_root, root)
    wavs.write(root / "cel" / "zz_nan.wav", wavs.float_with(np.nan))
    calls = []

    def fallocate_once(fd, offset, length):  # the first partial gets its space; the compact copy does not
        calls.append(length)
        if len(calls) > 1:
            _no_space()
        return real(fd, offset, length)

    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", fallocate_once)
    with pytest.raises(BuildError, match=NO_SPACE):
        build_store(root, store, workers=1, progress=False)
    assert _leftovers(tmp_path) == ["s.h5.partial"] and not store.exists()
    monkeypatch.setattr(os, "posix_fallocate", _no_space)  # still full when the rerun starts
    with pytest.raises(BuildError, match=NO_SPACE):
        build_store(root, store, workers=1, progress=False)
    assert _leftovers(tmp_path) == ["s.h5.partial"]
    monkeypatch.undo()
    report = build_store(root, store, workers=1, progress=False)
    assert report.resumed == 19 and report.stored == 18
    assert [p for p, _ in report.skipped] == ["cel/zz_nan.wav"]
    assert verify_store(store).ok
    same_store(store, demo_store)


def test_full_disk_in_write_store_from_arrays(tmp_path, monkeypatch):
    mel = MelSpectrogram(n_mels=8, sample_rate=8000)
    feats = [np.ones((5, 8), np.float32), np.zeros((3, 8), np.float32)]
    args = (feats, ["a.wav", "b.wav"], ["x"], np.ones((2, 1), np.uint8), mel)
    store = tmp_path / "s.h5"
    monkeypatch.setattr(os, "posix_fallocate", _no_space)
    with pytest.raises(BuildError, match=NO_SPACE):
        write_store_from_arrays(store, *args)
    assert not store.exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()
    write_store_from_arrays(store, *args)
    assert verify_store(store).ok


def test_without_fallocate_the_space_is_reserved_by_writing_zeros(demo_root, demo_store, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", _no_fallocate)
    seen = []
    real_reserve = writer_mod._reserve

    def reserve(path, *, fresh):
        real_reserve(path, fresh=fresh)
        fd = os.open(path, os.O_RDONLY)
        try:  # no hole is left in any dataset that is written through a memory map
            seen.extend(os.lseek(fd, o, os.SEEK_HOLE) >= o + n for o, n in writer_mod._mapped_ranges(path))
        finally:
            os.close(fd)
    monkeypatch.setattr(writer_mod, "_reserve", reserve)
    store = tmp_path / "s.h5"
    build_store(demo_root, store, workers=1, progress=False)
    assert seen == [True, True, True]
    same_store(store, demo_store)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs mounted in tmp_path (skipped where mounting is not allowed)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot run mount: {err}")
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


#: ``memstore build ROOT STORE --quiet --workers N`` in a process of its own, so a SIGBUS kills only it;
#: with ``nofallocate`` the file system is made to look as if it had no fallocate
CLI_BUILD = """
import errno, os, sys
from memstore import cli
if sys.argv[4] == "nofallocate":
    def refuse(*args):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    os.posix_fallocate = refuse
sys.exit(cli.main(["build", sys.argv[1], sys.argv[2], "--quiet", "--workers", sys.argv[3]]))
"""


def _cli_build(root, store, workers, fallocate="fallocate"):
    return subprocess.run([sys.executable, "-c", CLI_BUILD, str(root), str(store), workers, fallocate],
                          capture_output=True, text=True, env=ENV, timeout=600)


@pytest.mark.parametrize("workers, fallocate", [("1", "fallocate"), ("2", "fallocate"), ("1", "nofallocate")])
def test_a_real_full_tmpfs_gives_a_message_not_a_bus_error(demo_root, demo_store, small_tmpfs, workers,
                                                           fallocate):
    filler = small_tmpfs / "filler"
    filler.write_bytes(bytes(3 << 20))  # leaves ~1 MiB; the store needs ~1.8 MB
    store = small_tmpfs / "s.h5"
    done = _cli_build(demo_root, store, workers, fallocate)
    assert done.returncode == 1, done.stderr  # not -7 (SIGBUS), not a worker that died
    needed, size, free = (int(g) for g in NO_SPACE.search(done.stderr).groups())
    assert needed > free
    assert _leftovers(small_tmpfs) == [] and not store.exists()
    filler.unlink()  # free the space: the same command now completes
    done = _cli_build(demo_root, store, workers, fallocate)
    assert done.returncode == 0, done.stderr
    assert verify_store(store).ok
    same_store(store, demo_store)


# --- a second build of the same store --------------------------------------------------------

HOLD_LOCK = """
import sys
from pathlib import Path
from memstore._locks import StoreLock
with StoreLock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""

HOLD_H5 = """
import sys
import h5py
with h5py.File(sys.argv[1], "w"):
    print("held", flush=True)
    sys.stdin.read()
"""


def _holder(script, path):
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline() == "held\n"
    return proc


def _release(proc):
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    proc.stdout.close()


@pytest.mark.parametrize("mode", ["create", "append"])
def test_a_second_build_of_the_same_store_is_refused(demo_root, demo_store, tmp_path, mode):
    store = tmp_path / "s.h5"
    if mode == "append":
        shutil.copy(demo_store, store)
    before = store.read_bytes() if store.exists() else None
    proc = _holder(HOLD_LOCK, store)
    try:
        with pytest.raises(BuildError, match=f"another build is writing {re.escape(str(store))}"):
            build_store(demo_root, store, workers=1, mode=mode, progress=False)
        assert (store.read_bytes() if store.exists() else None) == before
    finally:
        _release(proc)
    build_store(demo_root, store, workers=1, progress=False)
    assert verify_store(store).ok and _leftovers(tmp_path) == []


def test_a_partial_file_held_open_by_another_process_is_not_discarded(demo_root, tmp_path):
    store = tmp_path / "s.h5"
    partial = tmp_path / "s.h5.partial"
    proc = _holder(HOLD_H5, partial)
    try:
        with pytest.raises(BuildError, match=f"another build is writing {re.escape(str(partial))}"):
            build_store(demo_root, store, workers=1, progress=False)
        assert partial.exists()
    finally:
        _release(proc)
    build_store(demo_root, store, workers=1, progress=False)  # a foreign partial: discarded, built anew
    assert verify_store(store).ok and _leftovers(tmp_path) == []


def test_write_store_from_arrays_takes_the_lock(tmp_path):
    mel = MelSpectrogram(n_mels=8, sample_rate=8000)
    store = tmp_path / "s.h5"
    proc = _holder(HOLD_LOCK, store)
    try:
        with pytest.raises(BuildError, match="another build is writing"):
            write_store_from_arrays(store, [np.ones((5, 8), np.float32)], ["a.wav"], ["x"],
                                    np.ones((1, 1), np.uint8), mel)
    finally:
        _release(proc)
    assert not store.exists()


# --- validate, fsync, rename, fsync the folder -----------------------------------------------

def _bad_label_finalize(monkeypatch):
    real = writer_mod._finalize

    def finalize(partial, store_path, index, stats, reports):
        index = index.copy()
        index["label"][-1] = 99  # a class that does not exist: the finished file must not validate
        real(partial, store_path, index, stats, reports)
    monkeypatch.setattr(writer_mod, "_finalize", finalize)


def test_an_append_that_fails_validation_leaves_the_old_store(demo_store, tmp_path, monkeypatch):
    extra = make_demo_folder(tmp_path / "extra", n_per_class=1, seed=5)
    store = tmp_path / "s.h5"
    shutil.copy(demo_store, store)
    before = store.read_bytes()
    _bad_label_finalize(monkeypatch)
    with pytest.raises(BuildError, match=f"does not validate, so {re.escape(str(store))} was left as it was"
                                         ".*index labels out of range"):
        build_store(extra, store, mode="append", workers=1, progress=False)
    assert store.read_bytes() == before
    with open_store(store) as s:
        assert len(s) == 18 and s.generation == 0
    assert verify_store(store).ok
    monkeypatch.undo()  # the rejected partial has no plan fingerprint: the rerun discards it
    assert build_store(extra, store, mode="append", workers=1, progress=False).stored == 6
    assert verify_store(store).ok


@pytest.mark.parametrize("key, damage, why", [
    ("m2", lambda m2: np.ascontiguousarray(m2[:, :1]), r"stats/m2 has shape \(96, 1\), not \(96, 96\)"),
    ("m2", None, "stats/m2 is missing"),
    ("count", lambda _: b"many", "stats/count holds .S4 values, not numbers"),
    ("mean", lambda mean: mean.astype(bytes), "stats/mean holds .S32 values, not numbers"),
])
def test_an_append_to_a_store_with_damaged_statistics_is_refused_before_anything_is_written(demo_store, tmp_path,
                                                                                          key, damage, why):
    # the build's statistics fold merges the old store's count, mean and co-moment first: one of another shape
    # or kind must be named, not broadcast by numpy (the old merge), handed to a kernel or fail inside int()
    extra = make_demo_folder(tmp_path / "extra", n_per_class=1, seed=6)
    store = tmp_path / "s.h5"
    shutil.copy(demo_store, store)
    with h5py.File(store, "r+") as f:
        g = f["stats"]
        value = g[key][()]
        del g[key]
        if damage is not None:
            g.create_dataset(key, data=damage(value))
    before = store.read_bytes()
    with pytest.raises(BuildError, match=rf"statistics of .* are damaged \({why}\); nothing was written"):
        build_store(extra, store, mode="append", workers=1, progress=False)
    assert store.read_bytes() == before
    assert not list(tmp_path.glob("s.h5.*")), "no partial file was started"


def test_a_create_that_fails_validation_writes_no_store(demo_root, tmp_path, monkeypatch):
    store = tmp_path / "s.h5"
    _bad_label_finalize(monkeypatch)
    with pytest.raises(BuildError, match="does not validate"):
        build_store(demo_root, store, workers=1, progress=False)
    assert not store.exists()


def test_the_partial_is_synced_before_the_rename_and_the_folder_after(demo_root, tmp_path, monkeypatch):
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append(f"replace {Path(src).name} {Path(dst).name}")
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    build_store(demo_root, tmp_path / "s.h5", workers=1, progress=False)
    assert events[-3:] == ["fsync file", "replace s.h5.partial s.h5", "fsync dir"]


# --- appends that add nothing ----------------------------------------------------------------

def test_an_append_whose_files_all_fail_leaves_the_store_unchanged(demo_store, tmp_path):
    extra = tmp_path / "extra"
    for cls in ("cel", "flu"):
        (extra / cls).mkdir(parents=True)
    wavs.write(extra / "cel" / "nan.wav", wavs.float_with(np.nan))
    wavs.write(extra / "flu" / "inf.wav", wavs.float_with(np.inf))
    store = tmp_path / "s.h5"
    shutil.copy(demo_store, store)
    before = store.read_bytes()
    report = build_store(extra, store, mode="append", workers=1, progress=False)
    assert report.stored == 0 and sorted(p for p, _ in report.skipped) == ["cel/nan.wav", "flu/inf.wav"]
    assert any("none of the 2 new file(s) could be extracted; the store is unchanged" in n for n in report.notes)
    assert store.read_bytes() == before and _leftovers(tmp_path) == []


@pytest.fixture
def empty_segment_store(demo_store, tmp_path):
    """A copy of the demo store with the segment an old writer added for an append that stored nothing."""
    store = tmp_path / "s.h5"
    shutil.copy(demo_store, store)
    with h5py.File(store, "r+") as f:
        seg = f["segments"][()]
        del f["segments"]
        f.create_dataset("segments", data=np.concatenate([seg, np.array([(18, 0, 0, 0)], seg.dtype)]))
    return store


def test_open_store_rejects_an_empty_segment(empty_segment_store):
    with pytest.raises(StoreFormatError, match=r"segment 1 is empty \(0 files, 0 frames\)"):
        open_store(empty_segment_store)


def test_verify_names_the_empty_segment(empty_segment_store):
    report = verify_store(empty_segment_store)
    assert len(report.problems) == 1
    where, what = report.problems[0]
    assert where == "<store>" and "segment 1 is empty" in what


# --- the writer as tools use it ------------------------------------------------------------

def test_make_big_store_tool_writes_through_the_same_writer(tmp_path):
    """tools/make_big_store.py writes through the public StoreWriter, given a str path."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "make_big_store.py"
    store = tmp_path / "big.h5"
    done = subprocess.run([sys.executable, str(tool), str(store), "--size", "2MB"], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert verify_store(store).ok and _leftovers(tmp_path) == []


def test_a_forked_child_still_holding_our_hdf5_handle_is_waited_for(tmp_path):
    """HDF5 opens files without O_CLOEXEC: a process forked by another thread (a second build's workers,
    any subprocess) holds our handle, and its lock, until it closes its descriptors before exec. Seen as
    'another build is writing' in two builds run in two threads; a short conflict is now waited out."""
    import warnings

    from memstore._locks import open_h5

    path = tmp_path / "f.h5"
    f = h5py.File(path, "w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child only sleeps
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            time.sleep(0.5)
        finally:
            os._exit(0)
    try:
        f.close()
        with pytest.raises(BlockingIOError):
            h5py.File(path, "r+")  # the conflict itself, while the child lives
        with open_h5(path, "r+") as g:
            assert g.mode == "r+"
    finally:
        os.waitpid(pid, 0)


def test_a_store_path_the_build_cannot_use_is_refused_before_any_work(tmp_path, demo_root):
    # an audio file (even an input) was overwritten; a folder failed at the rename after every file was
    # extracted, leaving a .partial; an empty path and a folder at <store>.partial gave raw tracebacks
    from memstore.build import build_store
    from memstore.errors import ParameterError

    audio = sorted(demo_root.rglob("*.wav"))[0]
    before = audio.read_bytes()
    (tmp_path / "taken.h5.partial").mkdir()
    (tmp_path / "notes.h5").write_text("my notes")
    refused = [(audio, "exists and is not an HDF5 file"), (demo_root, "is a folder; the store is one file"),
               ("", "must name the store file to write"),
               (tmp_path / "taken.h5", "where the build writes, is a folder"),
               (tmp_path / "notes.h5", "exists and is not an HDF5 file")]
    for store, why in refused:
        with pytest.raises(ParameterError, match=why):
            build_store(demo_root, store, workers=2, progress=False)
    assert audio.read_bytes() == before and (tmp_path / "notes.h5").read_text() == "my notes"
    assert not list(demo_root.rglob("*.partial"))
    (tmp_path / "empty.h5").touch()  # an empty file, or a store, is replaced as before
    assert build_store(demo_root, tmp_path / "empty.h5", workers=1, progress=False).stored == 18
    assert build_store(demo_root, tmp_path / "empty.h5", workers=1, progress=False).stored == 18
    with pytest.raises(ParameterError, match="up to 2,000,000 Hz"):  # 10**9 allocated a 9 GB store
        build_store(demo_root, tmp_path / "r.h5", sample_rate=10**9, progress=False)


def test_settings_past_a_stores_limits_are_refused_before_any_work(tmp_path, demo_root):
    # found by a bad-input hunt: a rate of 3 MHz in the headers (or a transform's) got past the build's
    # 2 MHz limit (10**9 in a transform reserved 16 GB), and mel filters that a tiny p-norm scales to zero
    # gave all-zero features, computed in every task
    from memstore.errors import ParameterError

    store = tmp_path / "s.h5"
    with pytest.raises(ParameterError, match=r"norm=0.01 scales mel band \d+ to zero in float32"):
        build_store(demo_root, store, transform=MelSpectrogram(norm=0.01), workers=2, progress=False)
    fast = tmp_path / "fast"
    (fast / "a").mkdir(parents=True)
    memstore.audio.write_wav(fast / "a" / "x.wav", np.zeros(3000, np.float32), 3_000_000)
    for rate in (None, 48000):  # a header past the limit is a skip, whatever the target (the audio hunt)
        with pytest.raises(BuildError, match=r"no readable audio files.*its header's sample rate, 3,000,000 Hz, "
                                             r"is above the highest memstore takes"):
            build_store(fast, store, sample_rate=rate, progress=False)
    assert not list(tmp_path.glob("*.h5*"))


def _file_system(path) -> str:
    """The type of the file system holding ``path`` (the longest mount point above it)."""
    best, kind = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mount, fs = fields[4], fields[fields.index("-") + 1]
            if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
                best, kind = mount, fs
    return kind


@pytest.mark.parametrize("rows", [2**43, 2**62], ids=["past ext4's 16 TiB", "past any off_t"])
def test_a_store_larger_than_one_file_may_be_is_refused_before_hdf5_makes_it(tmp_path, rows):
    if rows < 2**62 and _file_system(tmp_path) != "ext4":  # elsewhere 3 PB may be a legal sparse file
        pytest.skip(f"the 16 TiB limit is ext4's; {tmp_path} is on {_file_system(tmp_path) or 'unknown'}")
    # found by a bad-input hunt: HDF5 met the file system's limit inside its allocation: a bare OSError,
    # screens of errors from the handles it dropped (once a segmentation fault), and a .partial left
    from memstore.layout import INDEX_DTYPE
    from memstore.writer import StoreContents, StoreWriter

    index = np.zeros(1, INDEX_DTYPE)
    index["n_frames"] = rows
    contents = StoreContents(index=index, paths=["a.wav"], labels=np.eye(1, dtype=np.uint8), classes=["a"],
                             n_bins=96, config_json=MelSpectrogram(sample_rate=8000).to_json())
    path = tmp_path / "s.h5"
    with pytest.raises(BuildError) as raised, StoreWriter(path) as writer:
        writer.start(contents)
    message = str(raised.value)
    assert re.search(rf"features take {rows * 96 * 4:,} bytes, more than one file may hold in", message), message
    assert not list(tmp_path.glob("s.h5*"))
