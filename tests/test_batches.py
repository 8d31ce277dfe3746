"""BatchStream guarantees, shared by the in-memory and the out-of-core (pager) paths."""

from __future__ import annotations

import shutil
import threading

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstore.batches import BatchStream
from memstore.errors import ParameterError
from memstore.store import open_store

PATHS = {"memory": None, "pager": "pager"}


def limit(path, batch_size, t=128):
    """None (in memory), or four batch buffers plus two windows of ~680 rows: far below the demo
    store's ~1.8 MB of features, so the pager serves from many small windows."""
    if PATHS[path] is None:
        return None
    return 4 * batch_size * t * 96 * 4 + 2 * 680 * 96 * 4


@pytest.fixture(scope="module")
def store(demo_store):
    with open_store(demo_store) as s:
        yield s


def blocks_of(stream, epoch=None):
    return stream.order(epoch)


def expected_block(store, stream, b):
    f, s = int(stream.block_file[b]), int(stream.block_start[b])
    ref = np.zeros((stream.time_context, store.n_bins), np.float32)
    rows = store.frames(f)[s:s + stream.time_context]
    ref[: len(rows)] = rows
    return ref


@pytest.mark.parametrize("path", PATHS)
def test_blocks_equal_plain_numpy_slices_with_right_labels(store, path):
    stream = BatchStream(store, batch_size=8, drop_last=False, memory_limit=limit(path, 8), split="all",
                         labels="index")
    assert stream.out_of_core == (path == "pager")
    order = stream.order(0)
    xs, ys = zip(*list(stream), strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (len(order), 1, 128, 96) and x.dtype == np.float32
    for j, b in enumerate(order):
        np.testing.assert_array_equal(x[j, 0], expected_block(store, stream, b))
        assert y[j] == store.label_index[stream.block_file[b]]


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 40), t=st.integers(16, 200), step=st.integers(5, 120), seed=st.integers(0, 99))
def test_every_block_once_per_epoch_and_replayable(store, path, batch, t, step, seed):
    kw = dict(batch_size=batch, time_context=t, step=step, seed=seed, drop_last=False,
              memory_limit=limit(path, batch, t))
    stream = BatchStream(store, **kw)
    assert stream.out_of_core == (path == "pager")
    o0, o1 = stream.order(0), stream.order(1)
    assert sorted(o0.tolist()) == list(range(len(stream.block_file)))
    assert sorted(o1.tolist()) == sorted(o0.tolist())
    if len(o0) > 20:
        assert not np.array_equal(o0, o1)  # a new epoch reshuffles
    assert np.array_equal(BatchStream(store, **kw).order(0), o0)  # (seed, epoch) replays
    n = sum(len(x) for x, _ in stream)
    assert n == len(o0) and stream.epoch == 1


@pytest.mark.parametrize("path", PATHS)
def test_state_dict_resumes_mid_epoch_exactly(store, path):
    kw = dict(batch_size=4, memory_limit=limit(path, 4), seed=3)
    full = BatchStream(store, **kw)
    reference = [x.copy() for x, _ in full] + [x.copy() for x, _ in full]
    a = BatchStream(store, **kw)
    seen = []
    for i, (x, _) in enumerate(a):
        seen.append(x.copy())
        if i == 4:
            break
    state = a.state_dict()
    b = BatchStream(store, **kw)
    b.load_state_dict(state)
    seen += [x.copy() for x, _ in b] + [x.copy() for x, _ in b]
    assert len(seen) == len(reference)
    for u, v in zip(seen, reference, strict=True):
        np.testing.assert_array_equal(u, v)
    other = BatchStream(store, batch_size=5)
    with pytest.raises(ParameterError, match="other settings"):
        other.load_state_dict(state)


@pytest.mark.parametrize("path", PATHS)
def test_shards_are_disjoint_and_equal(store, path):
    parts = [BatchStream(store, batch_size=2, shard=(r, 3), drop_last=False,
                         memory_limit=limit(path, 2)).order(0)
             for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)
    assert len(flat) >= len(BatchStream(store, batch_size=2).block_file) - 3 * 3


def test_train_and_valid_are_disjoint_by_file_and_stratified(store):
    train = BatchStream(store, batch_size=4, split="train", valid_fraction=0.34)
    valid = BatchStream(store, batch_size=4, split="valid", valid_fraction=0.34)
    tf, vf = set(train.block_file.tolist()), set(valid.block_file.tolist())
    assert tf and vf and not tf & vf and len(tf | vf) == len(store)
    assert sorted(store.label_index[list(vf)].tolist()) == list(range(6))  # one file per class
    blocks = BatchStream(store, batch_size=4, split_by="block", valid_fraction=0.2)
    held = BatchStream(store, batch_size=4, split_by="block", split="valid", valid_fraction=0.2)
    everything = BatchStream(store, batch_size=4, split="all").block_file
    assert len(blocks.block_file) + len(held.block_file) == len(everything)
    explicit = BatchStream(store, batch_size=4, split="valid", valid_files=[store.paths[0]])
    assert set(explicit.block_file.tolist()) == {0}


def test_stream_call_rolls_over_like_the_tutorial(store):
    stream = BatchStream(store, batch_size=16)
    n = stream.iteration_size
    for _ in range(n + 2):
        x, y = stream()
        assert x.shape == (16, 1, 128, 96) and y.shape == (16, 6)
        assert np.allclose(y.sum(axis=1), 1.0)
    assert stream.epoch == 1 and stream.iteration_step == 2
    stream.close()


@pytest.mark.parametrize("layout, shape", [("NCTF", (4, 1, 128, 96)), ("NTFC", (4, 128, 96, 1)),
                                           ("NFTC", (4, 96, 128, 1)), ("NTF", (4, 128, 96))])
def test_layouts(store, layout, shape):
    x, _ = BatchStream(store, batch_size=4, layout=layout, shuffle=False)()
    assert x.shape == shape
    ref = BatchStream(store, batch_size=4, layout="NTF", shuffle=False)()[0]
    back = {"NCTF": lambda: x[:, 0], "NTFC": lambda: x[..., 0],
            "NFTC": lambda: x[..., 0].transpose(0, 2, 1), "NTF": lambda: x}[layout]()
    np.testing.assert_array_equal(back, ref)


def test_labels_and_normalisation(store):
    x, y = BatchStream(store, batch_size=6, labels="multihot", shuffle=False)()
    assert y.shape == (6, 6) and y.dtype == np.float32
    raw = BatchStream(store, batch_size=6, shuffle=False, layout="NTF")()[0]
    std = BatchStream(store, batch_size=6, shuffle=False, layout="NTF", normalize="standard")()[0]
    mean, sd = store.stats["mean"], store.stats["std"]
    np.testing.assert_allclose(std, (raw - mean) / sd, rtol=1e-4, atol=1e-3)
    pca = BatchStream(store, batch_size=6, split="all", shuffle=False, layout="NTF", normalize="pca",
                      step=128, time_context=128)
    xs = np.concatenate([x for x, _ in pca]).reshape(-1, 96)
    cov = np.cov(xs[np.abs(xs).sum(1) > 0].T)
    assert np.abs(np.diag(cov)).mean() > 0.3  # whitened: roughly unit variance


@pytest.mark.parametrize("normalize, key, value, why", [
    ("standard", "std", np.ones(3), r"stats/std has shape \(3,\), not \(96,\)"),
    ("standard", "mean", np.array([b"x"] * 96), "stats/mean holds .S1 values, not numbers"),
    ("pca", "cov", np.ones(96), r"stats/cov has shape \(96,\), not \(96, 96\)"),
    ("pca", "cov", None, "stats/cov is missing"),
])
def test_normalisation_by_damaged_statistics_is_refused_by_name(demo_store, tmp_path, normalize, key, value, why):
    copy = tmp_path / "s.h5"
    shutil.copy(demo_store, copy)
    with h5py.File(copy, "r+") as f:
        del f["stats"][key]
        if value is not None:
            f["stats"].create_dataset(key, data=value)
    with pytest.raises(ParameterError, match=f"cannot normalize={normalize!r}: the statistics of .* are damaged "
                                             rf"\({why}\); `memstore verify`"):
        BatchStream(copy, batch_size=4, normalize=normalize)
    BatchStream(copy, batch_size=4)  # the features themselves are served


def test_get_data_and_validation(store):
    stream = BatchStream(store, batch_size=4, valid_fraction=0.34)
    x, y, xv, yv = stream.get_data()
    assert x.shape[0] == len(stream.block_file) and xv.shape[1:] == (1, 128, 96)
    assert np.array_equal(stream.get_validation()[0], xv)
    small = BatchStream(store, batch_size=4, memory_limit=limit("pager", 4))
    with pytest.raises(ParameterError, match="get_data needs"):
        small.get_data()


def test_bad_arguments(store):
    cases = [(dict(batch_size=0), "batch_size=0"), (dict(batch_size=4, layout="NCHW"), "layout"),
             (dict(batch_size=4, labels="soft"), "labels"), (dict(batch_size=4, normalize=True), "normalize"),
             (dict(batch_size=4, split="test"), "split"), (dict(batch_size=4, valid_fraction=1.5), "valid_fraction"),
             (dict(batch_size=4, shard=(3, 2)), "shard"), (dict(batch_size=4, memory_limit="lots"), "memory_limit"),
             (dict(batch_size=64, memory_limit="1MB"), "too small"),
             (dict(batch_size=4, normalize=0), r"normalize=0 must be one of")]  # 0 is not False (_validate.choice)
    for kw, match in cases:
        with pytest.raises(ParameterError, match=match):
            BatchStream(store, **kw)



@pytest.mark.parametrize("kw, match", [
    (dict(shard=(False, True)), r"shard=\(False, True\) must be \(rank, world_size\)"),  # bools were (0, 1)
    (dict(valid_fraction=False), "valid_fraction=False must be in"),                   # was 0.0
    (dict(valid_fraction=float("nan")), "valid_fraction=nan must be in"),
    (dict(drop_last="no"), "drop_last='no' must be True or False"),                    # was True
    (dict(shuffle=1), "shuffle=1 must be True or False"),
    (dict(tail=None), "tail=None must be True or False"),
    (dict(prefetch=None), "prefetch=None must be True or False"),                      # was False
])
def test_flags_and_fractions_follow_the_shared_rules(store, kw, match):
    with pytest.raises(ParameterError, match=match):
        BatchStream(store, batch_size=4, **kw)


def test_numpy_numbers_are_accepted_where_python_ones_are(store):
    a = BatchStream(store, batch_size=4, shard=(np.int64(1), np.int32(2)), valid_fraction=np.float32(0.25))
    b = BatchStream(store, batch_size=4, shard=(1, 2), valid_fraction=float(np.float32(0.25)))
    assert a.shard == (1, 2) and type(a.shard[0]) is int  # used to be refused
    np.testing.assert_array_equal(a.order(np.int64(1)), b.order(1))


def test_an_epoch_is_an_integer_at_least_zero(store):
    stream = BatchStream(store, batch_size=4)
    for bad in (-1, 1.7, "1", True):  # -1 reached numpy's SeedSequence; 1.7 was silently epoch 1
        for call in (stream.order, stream.shuffle_report, lambda v: setattr(stream, "epoch", v)):
            with pytest.raises(ParameterError, match=f"epoch={bad!r} must be an integer >= 0"):
                call(bad)
    stream.epoch = np.int64(2)
    assert stream.epoch == 2 and type(stream.epoch) is int



def test_absurd_sizes_are_refused_by_name(store):
    # a batch larger than the machine's memory failed at the first batch with numpy's allocation error
    with pytest.raises(ParameterError, match=r"one batch of 4 blocks of 1000000000000 x 96 is .* more than this "
                                             r"machine's memory"):
        BatchStream(store, batch_size=4, time_context=10**12)
    s = BatchStream(store, batch_size=4)
    state = s.state_dict()
    state["remaining"] = [[12, 2**70]]  # raised OverflowError converting to int64
    with pytest.raises(ParameterError, match="unserved positions must be ascending disjoint"):
        s.load_state_dict(state)

@pytest.mark.parametrize("field, value", [("epoch", -5), ("epoch", "x"), ("iteration_step", None),
                                          ("iteration_step", 2.5), ("iteration_step", ...)])
def test_a_format_1_state_with_a_bad_field_is_refused_by_name(store, field, value):
    # format 1 (no "format" key) skipped the field checks: KeyError, TypeError, or epoch -5 accepted
    s = BatchStream(store, batch_size=4, seed=5)
    state = {"epoch": 0, "iteration_step": 1, "seed": 5, "fingerprint": s._fingerprint_v1(), field: value}
    if value is ...:
        del state[field]
    shown = None if value is ... else value
    with pytest.raises(ParameterError, match=f"state_dict {field}={shown!r} must be an integer >= 0"):
        s.load_state_dict(state)

def test_threads_end_with_their_iterators(store):
    before = threading.active_count()
    for path in PATHS:
        stream = BatchStream(store, batch_size=4, memory_limit=limit(path, 4))
        for _ in range(30):
            for i, _ in enumerate(stream):
                if i == 2:
                    break  # abandoned mid-epoch
        for _ in stream:
            pass
        stream.close()
    assert threading.active_count() == before


def test_shuffle_report_compares_with_a_global_shuffle(store):
    rep = BatchStream(store, batch_size=8, memory_limit=limit("pager", 8)).shuffle_report()
    assert rep["out_of_core"] is True
    for key in ("stream", "global_shuffle"):
        assert rep[key]["distinct_files_per_batch"] > 1 and rep[key]["mean_abs_step"] > 0


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 24), t=st.integers(16, 160), step=st.integers(10, 120), seed=st.integers(0, 99),
       shuffle=st.booleans(), split=st.sampled_from(["train", "valid", "all"]), tail=st.booleans(),
       shard=st.sampled_from([None, (0, 1), (0, 2), (1, 2), (2, 3)]))
def test_return_file_names_the_store_file_of_every_block(store, path, batch, t, step, seed, shuffle, split, tail,
                                                         shard):
    stream = BatchStream(store, batch_size=batch, time_context=t, step=step, seed=seed, shuffle=shuffle,
                         split=split, tail=tail, shard=shard, drop_last=False, labels="index", layout="NTF",
                         memory_limit=limit(path, batch, t), return_file=True)
    assert stream.out_of_core == (path == "pager")
    order = stream.order(0)
    xs, ys, fs = [], [], []
    for item in stream:
        assert len(item) == 3
        x, y, f = item
        assert f.dtype == np.int64 and f.shape == (len(x),)
        xs.append(x)
        ys.append(y)
        fs.append(f)
    files = np.concatenate(fs) if fs else np.zeros(0, np.int64)
    np.testing.assert_array_equal(files, stream.block_file[order])
    np.testing.assert_array_equal(np.concatenate(ys) if ys else files, store.label_index[files])
    if len(order):
        x = np.concatenate(xs)
        for j in {0, len(order) // 2, len(order) - 1}:  # the block served is a block of the file named
            f, s = int(files[j]), int(stream.block_start[order[j]])
            rows = store.frames(f)[s:s + t]
            np.testing.assert_array_equal(x[j, : len(rows)], rows)
    if not shuffle:  # file by file in store order, and by start frame within a file
        starts = stream.block_start[order]
        assert np.all(np.diff(files) >= 0)
        assert np.all(np.diff(starts)[np.diff(files) == 0] > 0)


@pytest.mark.parametrize("path", PATHS)
def test_unshuffled_shards_each_come_in_store_order_and_together_cover_the_split(store, path):
    parts = []
    for rank in range(3):
        stream = BatchStream(store, batch_size=4, split="all", shuffle=False, shard=(rank, 3), drop_last=False,
                             memory_limit=limit(path, 4), return_file=True)
        rows = stream.block_row[stream.order(0)]
        files = np.concatenate([f for _, _, f in stream])
        assert np.all(np.diff(rows) > 0) and np.all(np.diff(files) >= 0)
        parts.append(rows)
    everything = BatchStream(store, batch_size=4, split="all", shuffle=False).block_row
    flat = np.sort(np.concatenate(parts))
    assert len(np.unique(flat)) == len(flat) and len(everything) - len(flat) < 3
    assert set(flat.tolist()) <= set(everything.tolist())


def test_return_file_leaves_the_default_tuples_alone(store):
    plain = BatchStream(store, batch_size=4, shuffle=False)
    named = BatchStream(store, batch_size=4, shuffle=False, return_file=True)
    x, y = plain()
    x2, y2, f = named()
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(f, named.block_file[:4])
    assert len(named.get_data()) == 4 and len(named.get_validation()) == 2
    with pytest.raises(ParameterError, match="return_file"):
        BatchStream(store, batch_size=4, return_file="yes")


def test_torch_adapter_passes_the_file_index_through(demo_store):
    torch = pytest.importorskip("torch")
    from memstore.torch import BlockDataset

    ds = BlockDataset(demo_store, batch_size=4, split="all", shuffle=False, drop_last=False, return_file=True,
                      with_ids=True)
    with open_store(demo_store) as s:
        full = BatchStream(s, batch_size=4, split="all")
        files, ids = [], []
        for x, y, f, b in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0):
            assert x.shape[0] == y.shape[0] == f.shape[0] == b.shape[0]
            files.append(f.numpy())
            ids.append(b.numpy())
        files, ids = np.concatenate(files), np.concatenate(ids)
        np.testing.assert_array_equal(ids, np.arange(len(full.block_file)))
        np.testing.assert_array_equal(files, full.block_file)
