"""The block table agrees with the tutorial's getNumInstances for every length."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstore.blocks import block_counts, block_table
from memstore.errors import ParameterError


def get_num_instances(length_file, time_context, step):
    """The tutorial's formula, float arithmetic and all."""
    return np.maximum(1, int(np.ceil((float(length_file) - time_context) / step)))


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 3000), min_size=1, max_size=30), t=st.integers(1, 300),
       step=st.integers(1, 200))
def test_counts_and_starts_are_the_tutorials(lengths, t, step):
    bf, bs = block_table(np.array(lengths), t, step)
    for i, length in enumerate(lengths):
        starts = bs[bf == i]
        assert len(starts) == get_num_instances(length, t, step)
        assert starts.tolist() == [k * step for k in range(len(starts))]
        if length >= t:
            assert starts.max() + t <= length  # no block reads past its file
    assert bf.dtype == bs.dtype == np.int64
    assert np.array_equal(block_counts(np.array(lengths), t, step), np.bincount(bf, minlength=len(lengths)))


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 3000), min_size=1, max_size=30), t=st.integers(1, 300),
       step=st.integers(1, 200))
def test_tail_covers_every_frame(lengths, t, step):
    bf, bs = block_table(np.array(lengths), t, step, tail=True)
    for i, length in enumerate(lengths):
        starts = bs[bf == i]
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + t] = True
            assert s + min(t, length) <= length
        if length >= t and step <= t:  # with step > T the gaps between blocks are unused by design
            assert covered.all()


def test_tutorial_example():
    bf, bs = block_table([261], 128, 50)
    assert bs.tolist() == [0, 50, 100]
    assert block_table([261], 128, 50, tail=True)[1].tolist() == [0, 50, 100, 133]
    assert block_table([10], 128, 50)[1].tolist() == [0]  # one padded block


@pytest.mark.parametrize("args, match", [
    (([10], 0, 5), "time_context=0"), (([10], 5, -1), "step=-1"), (([0], 5, 5), "must be positive"),
    (([[1, 2]], 5, 5), "one-dimensional"),
    # found by the command-line hunt (memstore bench --time-context 10**30): a raw OverflowError
    (([10], 10**30, 5), f"time_context={10**30} must be at most 1,099,511,627,776"),
    (([10], 5, 10**30), r"step=1000.* must be at most 1,099,511,627,776"),
])
def test_bad_arguments(args, match):
    with pytest.raises(ParameterError, match=match):
        block_table(*args)
