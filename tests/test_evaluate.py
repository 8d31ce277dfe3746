"""aggregate_by_file against a plain per-file loop, its invariants, its errors, and a real stream."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import memstore as ms
from memstore.batches import BatchStream
from memstore.errors import ParameterError
from memstore.evaluate import aggregate_by_file
from memstore.store import open_store


def oracle(scores, file, n_files, how):
    """One file at a time, the obvious way."""
    out = np.full((n_files, scores.shape[1]), np.nan)
    for i in range(n_files):
        mine = scores[file == i].astype(np.float64)
        if len(mine) == 0:
            continue
        if how == "mean":
            out[i] = mine.mean(axis=0)
        elif how == "max":
            out[i] = mine.max(axis=0)
        else:
            out[i] = np.bincount(mine.argmax(axis=1), minlength=scores.shape[1]) / len(mine)
    return out


@st.composite
def blocks(draw):
    n_files = draw(st.integers(0, 12))
    n_blocks = draw(st.integers(0, 60)) if n_files else 0
    n_classes = draw(st.integers(1, 7))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int16]))
    elements = (st.integers(-50, 50) if dtype == np.int16
                else st.floats(-1e6, 1e6, allow_nan=False, width=32 if dtype == np.float32 else 64))
    scores = draw(hnp.arrays(dtype, (n_blocks, n_classes), elements=elements))
    file = draw(hnp.arrays(np.int64, n_blocks, elements=st.integers(0, max(n_files - 1, 0))))
    return scores, file, n_files


@settings(max_examples=200, deadline=None)
@given(data=blocks(), how=st.sampled_from(["mean", "max", "vote"]), seed=st.integers(0, 2**32 - 1))
def test_matches_a_per_file_loop_and_ignores_block_order(data, how, seed):
    scores, file, n_files = data
    out = aggregate_by_file(scores, file, n_files=n_files, how=how)
    assert out.shape == (n_files, scores.shape[1]) and out.dtype == np.float64
    ref = oracle(scores, file, n_files, how)
    absent = np.setdiff1d(np.arange(n_files), file)
    assert np.isnan(out[absent]).all()
    present = np.unique(file)
    assert not np.isnan(out[present]).any()
    tol = 1e-9 * (1 + float(np.abs(scores).max(initial=0)))
    np.testing.assert_allclose(out[present], ref[present], rtol=1e-9, atol=tol)
    perm = np.random.default_rng(seed).permutation(len(file))
    again = aggregate_by_file(scores[perm], file[perm], n_files=n_files, how=how)
    np.testing.assert_allclose(again[present], out[present], rtol=1e-9, atol=tol)
    if how == "max":  # max is exact: it picks one of the scores
        np.testing.assert_array_equal(out[present], ref[present])
    if how == "vote":
        np.testing.assert_allclose(out[present].sum(axis=1), 1.0, rtol=1e-12)
        counts = np.bincount(file, minlength=n_files)[present]
        np.testing.assert_allclose(out[present] * counts[:, None], np.round(out[present] * counts[:, None]),
                                   atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(data=blocks())
def test_mean_lies_between_the_files_min_and_max(data):
    scores, file, n_files = data
    present = np.unique(file)
    mean = aggregate_by_file(scores, file, n_files=n_files, how="mean")[present]
    high = aggregate_by_file(scores, file, n_files=n_files, how="max")[present]
    low = -aggregate_by_file(-scores.astype(np.float64), file, n_files=n_files, how="max")[present]
    tol = 1e-9 * (1 + np.abs(high))
    assert np.all(low - tol <= mean) and np.all(mean <= high + tol)


def test_the_docstring_example_and_the_lazy_export():
    import doctest

    from memstore import evaluate

    failed, attempted = doctest.testmod(evaluate)
    assert attempted >= 1 and failed == 0
    out = ms.aggregate_by_file([[0.2, 0.8], [0.6, 0.4], [1.0, 0.0]], [0, 0, 2], n_files=3)
    np.testing.assert_allclose(out[[0, 2]], [[0.4, 0.6], [1.0, 0.0]])
    assert np.isnan(out[1]).all()
    assert "aggregate_by_file" in ms.__all__
    vote = aggregate_by_file([[1, 1, 0], [0, 2, 2]], [0, 0], n_files=1, how="vote")  # ties: lowest class
    np.testing.assert_allclose(vote, [[0.5, 0.5, 0.0]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores=np.zeros((3, 2)), file=[0, 1], n_files=2), "one file index per block"),
    (dict(scores=np.zeros(3), file=[0, 1, 1], n_files=2), "must be 2-D"),
    (dict(scores=np.zeros((3, 0)), file=[0, 1, 1], n_files=2), "n_classes >= 1"),
    (dict(scores=np.zeros((2, 2, 2)), file=[0, 1], n_files=2), "must be 2-D"),
    (dict(scores=np.array([["a", "b"]]), file=[0], n_files=1), "real numbers"),
    (dict(scores=np.zeros((1, 2), complex), file=[0], n_files=1), "real numbers"),
    (dict(scores=[[0.0, np.nan]], file=[0], n_files=1), r"scores\[0\] holds NaN"),
    (dict(scores=[[1.0, 0.0], [0.0, np.inf]], file=[0, 0], n_files=1), r"scores\[1\] holds NaN or infinity"),
    (dict(scores=np.zeros((2, 2)), file=[0, 2], n_files=2), r"file\[1\]=2 must be in \[0, n_files=2\)"),
    (dict(scores=np.zeros((2, 2)), file=[-1, 0], n_files=2), r"file\[0\]=-1"),
    (dict(scores=np.zeros((2, 2)), file=[0.0, 1.0], n_files=2), "integer file indices"),
    (dict(scores=np.zeros((2, 2)), file=[[0, 1]], n_files=2), "1-D array"),
    (dict(scores=np.zeros((2, 2)), file=[True, False], n_files=2), "integer file indices"),
    (dict(scores=np.zeros((2, 2)), file=[0, 1], n_files=-1), "n_files=-1 must be an integer >= 0"),
    (dict(scores=np.zeros((2, 2)), file=[0, 1], n_files=2.0), "n_files=2.0"),
    (dict(scores=np.zeros((2, 2)), file=[0, 1], n_files=True), "n_files=True"),
    (dict(scores=np.zeros((2, 2)), file=[0, 1], n_files=2, how="median"), "how='median' must be one of"),
    # found by a bad-input hunt: a raw numpy ValueError, a wrapped value, masked values pooled
    (dict(scores=[[1.0, 2.0], [3.0]], file=[0, 1], n_files=2), r"scores must be a 2-D array \(n_blocks"),
    (dict(scores=np.zeros((2, 2)), file=np.array([0, 2**64 - 1], np.uint64), n_files=2),
     r"file\[1\]=18446744073709551615 must be in"),
    (dict(scores=np.ma.masked_array([[100.0, 2.0], [3.0, 4.0]], mask=[[1, 0], [0, 0]]), file=[0, 0], n_files=1),
     "scores has masked values"),
    (dict(scores=np.zeros((1, 2)), file=[0], n_files=10**15), r"n_files=1000000000000000 with 2 classes needs"),
])
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        aggregate_by_file(**kwargs)


@pytest.fixture(scope="module")
def store(demo_store):
    with open_store(demo_store) as s:
        yield s


@pytest.mark.parametrize("memory_limit", [None, 4 * 8 * 128 * 96 * 4 + 2 * 680 * 96 * 4], ids=["memory", "pager"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shuffle=st.booleans(), split=st.sampled_from(["valid", "all"]), seed=st.integers(0, 50))
def test_pooling_the_labels_of_a_stream_gives_each_files_label(store, memory_limit, shuffle, split, seed):
    """One-hot labels as 'scores': every pooling must give back the file's own one-hot row."""
    stream = BatchStream(store, batch_size=8, split=split, shuffle=shuffle, seed=seed, drop_last=False,
                         valid_fraction=0.34, memory_limit=memory_limit, return_file=True)
    assert stream.out_of_core == (memory_limit is not None)
    ys, fs = zip(*[(y, f) for _, y, f in stream], strict=True)
    y, f = np.concatenate(ys), np.concatenate(fs)
    served = np.unique(f)
    assert np.array_equal(served, np.unique(stream.block_file))
    onehot = np.eye(len(store.classes))[store.label_index]
    for how in ("mean", "max", "vote"):
        out = aggregate_by_file(y, f, n_files=len(store), how=how)
        np.testing.assert_array_equal(out[served], onehot[served])
        assert np.isnan(np.delete(out, served, axis=0)).all()


def test_a_mean_of_scores_near_the_largest_float_does_not_overflow():
    """Two blocks of 1e308 sum past float64's range: the mean is still 1e308, not inf."""
    big = np.finfo(np.float64).max / 1.5
    out = aggregate_by_file([[big, -big], [big, 1.0], [2.0, 4.0]], [0, 0, 1], n_files=2)
    np.testing.assert_allclose(out, [[big, (1.0 - big) / 2], [2.0, 4.0]], rtol=1e-12)

