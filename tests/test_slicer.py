"""The numba gather equals its own Python run and a plain numpy reference; bounds are checked first."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstore.errors import ParameterError
from memstore.slicer import HALF_TABLE, JIT, gather, gather_blocks, gather_half


def reference(src, starts, valid, t, mean=None, scale=None, proj=None):
    out = np.zeros((len(starts), t, src.shape[1]), np.float32)
    for b, (s, v) in enumerate(zip(starts, valid, strict=True)):
        x = src[s:s + v].astype(np.float32)
        if proj is not None:
            x = (x - mean) @ proj
        elif mean is not None:
            x = (x - mean) * scale
        out[b, :v] = x
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data(), rows=st.integers(1, 300), f=st.integers(1, 12), t=st.integers(1, 40),
       b=st.integers(0, 8), dtype=st.sampled_from([np.float32, np.float16]),
       mode=st.sampled_from(["none", "standard", "pca"]))
def test_jit_python_and_numpy_agree(data, rows, f, t, b, dtype, mode):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    src = rng.standard_normal((rows, f)).astype(dtype)
    valid = np.array([data.draw(st.integers(0, min(t, rows))) for _ in range(b)], np.int64)
    starts = np.array([data.draw(st.integers(0, rows - v)) for v in valid], np.int64)
    kw = {}
    if mode != "none":
        kw["mean"] = rng.standard_normal(f).astype(np.float32)
        if mode == "standard":
            kw["scale"] = rng.uniform(0.5, 2, f).astype(np.float32)
        else:
            kw["proj"] = rng.standard_normal((f, f)).astype(np.float32)
    out = np.full((b, t, f), np.nan, np.float32)
    gather_blocks(src, starts, valid, out, **kw)
    ref = reference(src, starts, valid, t, **kw)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    if JIT and b:
        py = np.full((b, t, f), np.nan, np.float32)
        m = kw.get("mean", np.zeros(1, np.float32))
        sc = kw.get("scale", np.zeros(1, np.float32))
        pr = kw.get("proj", np.zeros((1, 1), np.float32))
        mode_id = {"none": 0, "standard": 1, "pca": 2}[mode]
        if dtype == np.float16:
            gather_half.py_func(src.view(np.uint16), HALF_TABLE, starts, valid, py, m, sc, pr, mode_id)
        else:
            gather.py_func(src, starts, valid, py, m, sc, pr, mode_id)
        np.testing.assert_allclose(py, out, rtol=1e-5, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(starts=st.lists(st.integers(-50, 150), min_size=1, max_size=5),
       valid=st.lists(st.integers(-5, 40), min_size=1, max_size=5))
def test_fuzzed_plans_never_reach_the_kernel_out_of_bounds(starts, valid):
    src = np.zeros((100, 4), np.float32)
    n = min(len(starts), len(valid))
    starts, valid = np.array(starts[:n]), np.array(valid[:n])
    out = np.zeros((n, 32, 4), np.float32)
    ok = (valid >= 0).all() and (valid <= 32).all() and (starts >= 0).all() and (starts + valid <= 100).all()
    if ok:
        gather_blocks(src, starts, valid, out)
    else:
        with pytest.raises(ParameterError):
            gather_blocks(src, starts, valid, out)


def test_shape_and_dtype_checks():
    src = np.zeros((10, 4), np.float32)
    with pytest.raises(ParameterError, match="C-contiguous 2-D"):
        gather_blocks(src.astype(np.float64), [0], [1], np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ParameterError, match="out has 3 bins"):
        gather_blocks(src, [0], [1], np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ParameterError, match="starts and valid"):
        gather_blocks(src, [0, 1], [1], np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ParameterError, match="mean is required"):
        gather_blocks(src, [0], [1], np.zeros((1, 2, 4), np.float32), scale=np.ones(4))


def test_disable_jit_runs_the_same_code_in_python():
    code = ("import numpy as np; from memstore import slicer\n"
            "assert not slicer.JIT\n"
            "src = np.arange(40, dtype=np.float32).reshape(10, 4); out = np.zeros((2, 3, 4), np.float32)\n"
            "slicer.gather_blocks(src, [1, 8], [3, 2], out)\n"
            "print(out.sum())\n")
    env = dict(os.environ, MEMSTORE_DISABLE_JIT="1")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    src = np.arange(40, dtype=np.float32).reshape(10, 4)
    assert float(got.stdout) == reference(src, [1, 8], [3, 2], 3).sum()


def test_block_gather_checks_once_and_then_only_the_range():
    from memstore.slicer import BlockGather

    rng = np.random.default_rng(3)
    src = rng.standard_normal((500, 6)).astype(np.float32)
    starts = rng.integers(0, 480, 40)
    valid = rng.integers(0, 21, 40)
    g = BlockGather(src, starts, valid, 20, mean=np.zeros(6), scale=np.full(6, 2.0))
    out = np.full((7, 20, 6), np.nan, np.float32)
    g(10, 17, out)
    ref = gather_blocks(src, starts[10:17], valid[10:17], np.empty((7, 20, 6), np.float32),
                        mean=np.zeros(6), scale=np.full(6, 2.0))
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ParameterError, match="outside the 40 checked"):
        g(35, 42, np.empty((7, 20, 6), np.float32))
    with pytest.raises(ParameterError, match="need"):
        g(0, 7, np.empty((6, 20, 6), np.float32))
    with pytest.raises(ParameterError, match="writeable C-contiguous"):
        g(0, 7, np.empty((7, 20, 6), np.float64))
    with pytest.raises(ParameterError, match="outside src"):
        BlockGather(src, [495], [10], 20)
    with pytest.raises(ParameterError, match=r"valid rows must lie in \[0, 20\]"):
        BlockGather(src, [0], [21], 20)


def test_fresh_gathers_into_a_new_array_and_checks_the_range():
    from memstore.slicer import BlockGather

    rng = np.random.default_rng(4)
    src = rng.standard_normal((300, 5)).astype(np.float16)
    starts = rng.integers(0, 280, 12)
    valid = rng.integers(0, 21, 12)
    g = BlockGather(src, starts, valid, 20)
    a = g.fresh(3, 9)
    b = g.fresh(3, 9)
    assert a.dtype == np.float32 and a.shape == (6, 20, 5) and a.flags.c_contiguous and a is not b
    np.testing.assert_array_equal(a, reference(src, starts[3:9], valid[3:9], 20))
    assert g.fresh(12, 12).shape == (0, 20, 5)
    with pytest.raises(ParameterError, match="outside the 12 checked"):
        g.fresh(10, 13)
    with pytest.raises(ParameterError, match="outside the 12 checked"):
        g.fresh(-1, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_blocks_of_many_pages_up_to_the_last_row(dtype):
    """Blocks of 24 KiB and more (the kernels hint every 4 KiB page of the next block), the last one
    ending at the last row of src, some short and padded: equal to numpy."""
    rng = np.random.default_rng(5)
    src = rng.standard_normal((2000, 96)).astype(dtype)
    t = 128
    valid = np.array([128, 64, 128, 1, 128, 128], np.int64)
    starts = np.array([0, 900, 37, 1999, 1500, 2000 - 128], np.int64)
    out = np.full((6, t, 96), np.nan, np.float32)
    gather_blocks(src, starts, valid, out)
    np.testing.assert_array_equal(out, reference(src, starts, valid, t))
