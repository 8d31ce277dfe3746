"""Read many byte ranges of a file into one buffer, without the GIL: the pager's reads.

The pager reads each window as a dozen or more pages from different places
of the store (one ``pread`` each). From Python, every ``os.preadv`` releases
the GIL and must take it back, and a thread that wants the GIL back waits
for the one holding it: the window reader, the batch producer and the
consumer took turns at every page, and the reader that reads 1 GB from the
page cache in 60 ms alone took several times that inside a stream. A
window is now one GIL-free call (``docs/performance.md``: whole warm epochs
out of core, side by side, 8-11 % more blocks/s at 16 and 128 MB limits, and
1.3x where the store's cache is in small folios).

:func:`read_pages` and :class:`PageReads` run one compiled loop of ``pread``
calls (libc's, declared to LLVM by name, so the compiled code is cached like
the other kernels), retried on ``EINTR`` and on short reads, each page from
its own descriptor (the pager reads some pages with the readahead off,
through a second one). Without the JIT, or off Linux (``errno`` is read
through glibc's and musl's ``__errno_location``), the same loop runs in
Python with ``os.preadv``.
"""

from __future__ import annotations

import errno as _errno_names
import os
import sys

import numpy as np

from ._jit import JIT, njit

__all__ = ["read_pages", "PageReads", "NATIVE"]

#: True where :func:`read_pages` runs the compiled loop (the JIT is on and this is Linux)
NATIVE = JIT and sys.platform.startswith("linux")


def _read_pages_py(fds, buf, dst, src, size):
    """Python form of :func:`_read_pages`: ``(pages read, 0 or -errno)``."""
    view = memoryview(buf)
    for k in range(len(dst)):
        fd, d, s, n = int(fds[k]), int(dst[k]), int(src[k]), int(size[k])
        got = 0
        while got < n:
            try:
                r = os.preadv(fd, [view[d + got:d + n]], s + got)
            except OSError as err:
                return k, -(err.errno or _errno_names.EIO)
            if r == 0:
                return k, 0
            got += r
    return len(dst), 0


if NATIVE:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def _pread(typingctx, fd, arr, start, count, offset):
        """libc's ``pread(fd, &arr[start], count, offset)``; ``arr`` a 1-D uint8 array."""
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.uint8):
            return None
        sig = types.int64(types.int64, arr, types.int64, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            a = context.make_array(signature.args[1])(context, builder, args[1])
            i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i32, i8p, i64, i64]), "pread")
            ptr = builder.bitcast(builder.gep(a.data, [args[2]]), i8p)
            return builder.call(fn, [builder.trunc(args[0], i32), ptr, args[3], args[4]])

        return sig, codegen

    @intrinsic
    def _errno(typingctx):
        """The calling thread's ``errno``."""
        sig = types.int64()

        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32.as_pointer(), []),
                                                "__errno_location")
            return builder.sext(builder.load(builder.call(fn, [])), ir.IntType(64))

        return sig, codegen

    @njit(nogil=True, cache=True)
    def _read_pages(fds, buf, dst, src, size):  # pragma: no cover - jitted
        """``buf[dst[k]:dst[k] + size[k]]`` = the bytes at ``src[k]`` of ``fds[k]``: ``(pages read, 0 or -errno)``.

        Trusts its inputs (:class:`PageReads` checks every bound).
        """
        for k in range(len(dst)):
            got = 0
            while got < size[k]:
                r = _pread(fds[k], buf, dst[k] + got, size[k] - got, src[k] + got)
                if r < 0:
                    e = _errno()
                    if e == _errno_names.EINTR:
                        continue
                    return k, -e
                if r == 0:
                    return k, 0
                got += r
        return len(dst), 0
else:
    _read_pages = _read_pages_py


class PageReads:
    """Byte ranges checked once, then read a slice at a time: ``buf[dst[k]:]`` = ``size[k]`` bytes at ``src[k]``.

    The pager reads an epoch's pages a window at a time, from a thread that shares the GIL with the
    batch producer and the consumer: what it does with the GIL held, it makes them wait for. So every
    range is checked here, once per epoch, against ``buf_bytes``, and :meth:`read` checks only the
    buffer it is given.

    Parameters
    ----------
    dst, src, size : int arrays [shape=(pages,)]
        Where each page lands in the buffer, its file offset and its length, in bytes.
    buf_bytes : int
        The size of the buffers it reads into; every range must lie inside.

    Raises
    ------
    ValueError
        A range outside ``buf_bytes``, a negative offset or size, or arrays of different lengths.
    """

    def __init__(self, dst, src, size, buf_bytes: int):
        dst, src, size = (np.ascontiguousarray(a, dtype=np.int64) for a in (dst, src, size))
        if not dst.ndim == src.ndim == size.ndim == 1 or not len(dst) == len(src) == len(size):
            raise ValueError("dst, src and size must be 1-D arrays of one length")
        if len(dst):
            if dst.min() < 0 or src.min() < 0 or size.min() < 0:
                raise ValueError("offsets and sizes must not be negative")
            if (dst + size).max() > buf_bytes:
                raise ValueError(f"a range ends past the buffer's {buf_bytes} bytes")
        self.dst, self.src, self.size, self.buf_bytes = dst, src, size, int(buf_bytes)

    def __len__(self) -> int:
        return len(self.dst)

    def read(self, fds: np.ndarray, buf: np.ndarray, lo: int = 0, hi: int | None = None) -> int:
        """Read pages ``lo:hi`` into ``buf`` without the GIL, page ``k`` from descriptor ``fds[k - lo]``.

        ``fds``: an int64 array of at least ``hi - lo`` descriptors. Returns how many of the pages
        were read whole; fewer than ``hi - lo``: the file ended in the next one. A failed read
        raises ``OSError`` with its ``errno`` (the pages before it are read).
        """
        if not (type(buf) is np.ndarray and buf.dtype == np.uint8 and buf.ndim == 1 and len(buf) >= self.buf_bytes
                and buf.flags.c_contiguous and buf.flags.writeable):
            raise ValueError(f"buf must be a writable C-contiguous 1-D uint8 array of at least {self.buf_bytes} "
                             "bytes")
        hi = len(self.dst) if hi is None else hi
        if not (type(fds) is np.ndarray and fds.dtype == np.int64 and fds.ndim == 1 and len(fds) >= hi - lo):
            raise ValueError(f"fds must be a 1-D int64 array of at least {hi - lo} descriptors")
        done, err = _read_pages(fds, buf, self.dst[lo:hi], self.src[lo:hi], self.size[lo:hi])
        if err:
            raise OSError(-err, os.strerror(-err))
        return int(done)


def read_pages(fd: int, buf: np.ndarray, dst, src, size) -> int:
    """Read ``size[k]`` bytes at file offset ``src[k]`` into ``buf[dst[k]:]``, for each k, without the GIL.

    Every range must lie inside ``buf`` (a writable C-contiguous 1-D uint8 array), checked before
    the kernel runs (``ValueError``). Returns the number of pages read whole: ``len(dst)``, or the
    page at which the file ended. A failed read raises ``OSError`` with its ``errno``.
    :class:`PageReads` checks the ranges once and reads them a slice at a time.
    """
    if not (isinstance(buf, np.ndarray) and buf.dtype == np.uint8 and buf.ndim == 1):
        raise ValueError("buf must be a writable C-contiguous 1-D uint8 array")
    reads = PageReads(dst, src, size, len(buf))
    return reads.read(np.full(len(reads), fd, np.int64), buf)
