"""The slicer: numba kernels that gather blocks into a batch buffer.

Kernels take plain arrays and scalars only. They trust their inputs: the
Python wrapper :func:`gather_blocks` checks every bound before the call, so a
kernel never reads outside ``src``. Set ``MEMSTORE_DISABLE_JIT=1`` before
import to run the same code as plain Python (for tests and debugging; the
switch is :mod:`memstore._jit`, and :data:`JIT` says which way it is set).

One pass per block fuses the float16 -> float32 conversion, the zero padding
of short blocks, and the normalisation:

- mode 0: copy;
- mode 1: ``(x - mean) * scale`` per bin (``scale = 1 / std``);
- mode 2: ``(x - mean) @ proj`` (PCA whitening; ``proj`` is ``(F, F)``).
"""

from __future__ import annotations

import numpy as np

from ._jit import JIT, njit
from .errors import ParameterError

__all__ = ["gather", "gather_half", "gather_blocks", "BlockGather", "copy_run", "prefetch_run", "warm_up", "JIT"]


@njit(nogil=True, cache=True)
def _emit(x, o1, o, mean, scale, proj, mode):  # pragma: no cover - jitted
    """One normalised row ``x`` into the flat output at ``o`` (modes 1 and 2)."""
    n_bins = x.shape[0]
    if mode == 1:
        for f in range(n_bins):
            o1[o + f] = (x[f] - mean[f]) * scale[f]
    else:
        for g in range(n_bins):
            o1[o + g] = 0.0
        for f in range(n_bins):
            d = x[f] - mean[f]
            for g in range(n_bins):
                o1[o + g] += d * proj[f, g]


def copy_run(dst, dst_start, src, src_start, count):
    """``dst[dst_start:dst_start + count] = src[src_start:src_start + count]`` on 1-D arrays.

    In compiled kernels this is one ``memcpy`` (LLVM's ``llvm.memcpy``, which
    calls libc's for runs this long): numba's own slice assignment first
    checks whether the two slices overlap and may copy through a temporary,
    half the speed. It checks no bound: the caller (``gather_blocks``) has
    validated every one, and ``dst`` and ``src`` never share memory.
    Unlike a ctypes call to libc, the compiled form is cacheable.
    """
    dst[dst_start:dst_start + count] = src[src_start:src_start + count]


#: bytes between two prefetch hints of :func:`prefetch_run`: one per 4 KiB page
PREFETCH_STRIDE = 4096


def prefetch_run(src, start, count):
    """Hint that ``src[start:start + count]`` (1-D) is read next: one CPU prefetch per 4 KiB page.

    The gather kernels call it on the next block before they copy the current
    one, so that block's first cache lines are on their way while the current
    one streams (the hardware prefetcher restarts at every page, and a batch's
    blocks lie at random places): 10-12% off the kernel's time on 128x96
    float32 blocks, side by side. Every hinted address lies inside the run
    (a prefetch never faults, but nothing outside ``src`` is named). Without
    the JIT it does nothing.
    """
    return None


if JIT:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic, overload

    @intrinsic
    def _memcpy(typingctx, dst, dst_start, src, src_start, count):
        if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype
                and dst.ndim == 1 and src.ndim == 1):
            return None
        sig = types.void(dst, types.intp, src, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            d = context.make_array(signature.args[0])(context, builder, args[0])
            s = context.make_array(signature.args[2])(context, builder, args[2])
            itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
            cgutils.raw_memcpy(builder, builder.gep(d.data, [args[1]]), builder.gep(s.data, [args[3]]),
                               args[4], itemsize)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _prefetch(typingctx, arr, idx):
        if not (isinstance(arr, types.Array) and arr.ndim == 1):
            return None
        sig = types.void(arr, types.intp)

        def codegen(context, builder, signature, args):
            a = context.make_array(signature.args[0])(context, builder, args[0])
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
            # read (0), keep in all cache levels (3), data cache (1)
            builder.call(fn, [builder.bitcast(builder.gep(a.data, [args[1]]), i8p), ir.Constant(i32, 0),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen

    @overload(prefetch_run, jit_options={"nogil": True})
    def _prefetch_run_compiled(src, start, count):
        step = max(1, PREFETCH_STRIDE * 8 // src.dtype.bitwidth)  # elements per 4 KiB

        def impl(src, start, count):  # pragma: no cover - jitted
            for i in range(start, start + count, step):
                _prefetch(src, i)
        return impl

    @overload(copy_run, jit_options={"nogil": True})
    def _copy_run_compiled(dst, dst_start, src, src_start, count):
        def impl(dst, dst_start, src, src_start, count):  # pragma: no cover - jitted
            _memcpy(dst, dst_start, src, src_start, count)
        return impl


@njit(nogil=True, cache=True)
def gather(src, starts, valid, out, mean, scale, proj, mode):  # pragma: no cover - jitted
    """float32 ``src``: copy rows ``starts[b] .. starts[b] + valid[b]`` into ``out[b]``, zero-pad.

    Works on flat views: a block is one contiguous run of ``valid[b] * F``
    values in both arrays, so mode 0 is one ``memcpy`` per block
    (:func:`copy_run`; 2x numba's slice assignment, 7x a per-element loop).
    """
    B, T, F = out.shape
    s1 = src.reshape(-1)
    o1 = out.reshape(-1)
    for b in range(B):
        s = starts[b] * F
        n = valid[b] * F
        o = b * T * F
        if b + 1 < B:
            prefetch_run(s1, starts[b + 1] * F, valid[b + 1] * F)
        if mode == 0:
            copy_run(o1, o, s1, s, n)
        else:
            for t in range(valid[b]):
                _emit(src[starts[b] + t], o1, o + t * F, mean, scale, proj, mode)
        o1[o + n:o + T * F] = 0.0


@njit(nogil=True, cache=True)
def gather_half(src, table, starts, valid, out, mean, scale, proj, mode):  # pragma: no cover - jitted
    """float16 ``src`` seen as uint16 bits; ``table`` maps every bit pattern to its float32 value
    (numba has no float16 type, and a 256 KiB table is faster than decoding bits)."""
    B, T, F = out.shape
    s1 = src.reshape(-1)
    o1 = out.reshape(-1)
    row = np.empty(F, np.float32)
    for b in range(B):
        o = b * T * F
        if b + 1 < B:
            prefetch_run(s1, starts[b + 1] * F, valid[b + 1] * F)
        for t in range(valid[b]):
            r = src[starts[b] + t]
            if mode == 0:
                for f in range(F):
                    o1[o + t * F + f] = table[r[f]]
            else:
                for f in range(F):
                    row[f] = table[r[f]]
                _emit(row, o1, o + t * F, mean, scale, proj, mode)
        o1[o + valid[b] * F:o + T * F] = 0.0


HALF_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)

_EMPTY1 = np.zeros(1, np.float32)
_EMPTY2 = np.zeros((1, 1), np.float32)


def gather_blocks(src: np.ndarray, starts, valid, out: np.ndarray, *, mean=None, scale=None,
                  proj=None) -> np.ndarray:
    """Validate, then gather blocks ``src[starts[b] : starts[b] + valid[b]]`` into ``out[b]``.

    Parameters
    ----------
    src : ndarray [shape=(rows, n_bins)], float32 or float16, C-contiguous
    starts, valid : array_like of int [shape=(B,)]
        First row and number of real rows of each block (the rest is zero padding).
    out : ndarray [shape=(B, T, n_bins)], float32, C-contiguous
    mean, scale : ndarray [shape=(n_bins,)], optional
        Standardisation ``(x - mean) * scale``.
    proj : ndarray [shape=(n_bins, n_bins)], optional
        PCA whitening ``(x - mean) @ proj`` (needs ``mean``).

    Returns
    -------
    out
    """
    _check_out(out)
    B, T, F = out.shape
    src = np.asarray(src)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    valid = np.ascontiguousarray(valid, dtype=np.int64)
    if src.ndim == 2 and F != src.shape[1]:
        raise ParameterError(f"out has {F} bins but src has {src.shape[1]}")
    if starts.shape != (B,) or valid.shape != (B,):
        raise ParameterError(f"starts and valid must have shape ({B},)")
    BlockGather(src, starts, valid, T, mean=mean, scale=scale, proj=proj)(0, B, out)
    return out


class BlockGather:
    """Gather from one source, many times: the source, every block and the normalisation checked once.

    A batch producer serves a window's blocks a batch at a time. Checking every
    bound per batch (as :func:`gather_blocks` does) cost about a tenth of a
    batch; here the whole window's ``starts``/``valid`` are checked when the
    gather is made, and a call checks only ``out`` and the range ``a:b``, so the
    kernel still never reads outside ``src``.

    Parameters
    ----------
    src : ndarray [shape=(rows, n_bins)], float32 or float16, C-contiguous
    starts, valid : int arrays [shape=(n,)]
        Every block that calls will gather (the window's, in serving order).
    time_context : int
        Rows of each output block (``valid`` must not exceed it).
    mean, scale, proj : optional
        As for :func:`gather_blocks`.
    """

    def __init__(self, src, starts, valid, time_context: int, *, mean=None, scale=None, proj=None):
        src = np.asarray(src)
        if src.ndim != 2 or src.dtype not in (np.float32, np.float16) or not src.flags.c_contiguous:
            raise ParameterError(f"src must be a C-contiguous 2-D float32/float16 array, got {src.dtype} "
                                 f"{src.shape}")
        self.starts = np.ascontiguousarray(starts, dtype=np.int64)
        self.valid = np.ascontiguousarray(valid, dtype=np.int64)
        if self.starts.shape != self.valid.shape or self.starts.ndim != 1:
            raise ParameterError("starts and valid must be two 1-D arrays of the same length")
        T, F = int(time_context), src.shape[1]
        if len(self.valid):
            if self.valid.min() < 0 or self.valid.max() > T:
                raise ParameterError(f"valid rows must lie in [0, {T}]")
            if self.starts.min() < 0 or (self.starts + self.valid).max() > src.shape[0]:
                raise ParameterError(f"a block reads rows outside src (0..{src.shape[0]})")
        mode, m, sc, pr = 0, _EMPTY1, _EMPTY1, _EMPTY2
        if proj is not None:
            mode, m, pr = 2, _vec(mean, F, "mean"), np.ascontiguousarray(proj, dtype=np.float32)
            if pr.shape != (F, F):
                raise ParameterError(f"proj must have shape ({F}, {F})")
        elif mean is not None or scale is not None:
            mode, m, sc = 1, _vec(mean, F, "mean"), _vec(scale, F, "scale")
        self._half = src.dtype == np.float16
        self._src = src.view(np.uint16) if self._half else src
        self._shape = (T, F)
        self._norm = (m, sc, pr, mode)

    def __len__(self) -> int:
        return len(self.starts)

    def fresh(self, a: int, b: int) -> np.ndarray:
        """Blocks ``a:b`` into a new float32 array [shape=(b - a, T, F)] (no ``out`` to check)."""
        if not 0 <= a <= b <= len(self.starts):
            raise ParameterError(f"blocks {a}:{b} lie outside the {len(self.starts)} checked ones")
        return self._gather(a, b, np.empty((b - a,) + self._shape, np.float32))

    def __call__(self, a: int, b: int, out: np.ndarray) -> np.ndarray:
        """Blocks ``a:b`` of the checked ones into ``out`` [shape=(b - a, T, F)], float32, C-contiguous."""
        if not 0 <= a <= b <= len(self.starts):
            raise ParameterError(f"blocks {a}:{b} lie outside the {len(self.starts)} checked ones")
        if out.shape[1:] != self._shape or out.shape[0] != b - a:
            raise ParameterError(f"out has shape {out.shape}; blocks {a}:{b} need {(b - a,) + self._shape}")
        _check_out(out)
        return self._gather(a, b, out)

    def _gather(self, a: int, b: int, out: np.ndarray) -> np.ndarray:
        m, sc, pr, mode = self._norm
        if self._half:
            gather_half(self._src, HALF_TABLE, self.starts[a:b], self.valid[a:b], out, m, sc, pr, mode)
        else:
            gather(self._src, self.starts[a:b], self.valid[a:b], out, m, sc, pr, mode)
        return out


def _check_out(out) -> None:
    if (not isinstance(out, np.ndarray) or out.ndim != 3 or out.dtype != np.float32 or not out.flags.c_contiguous
            or not out.flags.writeable):
        raise ParameterError("out must be a writeable C-contiguous (B, T, F) float32 array")


def warm_up(dtype, n_bins: int) -> None:
    """Compile (or load from numba's cache) the kernels for ``dtype`` before anything is timed."""
    src = np.zeros((4, n_bins), dtype)
    out = np.zeros((1, 4, n_bins), np.float32)
    gather_blocks(src, [0], [4], out)
    gather_blocks(src, [0], [4], out, mean=np.zeros(n_bins), scale=np.ones(n_bins))


def _vec(v, n: int, name: str) -> np.ndarray:
    if v is None:
        raise ParameterError(f"{name} is required for this normalisation")
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.shape != (n,):
        raise ParameterError(f"{name} must have shape ({n},), got {v.shape}")
    return v
