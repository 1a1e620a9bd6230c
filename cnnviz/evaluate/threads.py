"""Limit the PyTorch CPU threads of the calling thread, and of no other.

`torch.set_num_threads` cannot do this: besides the calling thread's own setting it stores the
count that every thread started later takes up (measured: a thread started while another
thread has set 1 runs on 1 thread for good). The sanity check runs two copies of a model at once,
each in a worker thread on half the cores; in the app that must not change the thread count of
other requests.

With OpenMP, PyTorch's backend on Linux, a parallel region's size is the calling thread's own
OpenMP setting (the ``nthreads-var`` ICV), and MKL keeps a thread-local count of its own: both
are set here directly, for the calling thread only. Where either library cannot be found
(another backend, another platform) `available` is False and callers keep to one thread of work.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class _Libraries:
    omp: ctypes.CDLL
    mkl_local: Callable[[int], int] | None  # MKL_Set_Num_Threads_Local, when PyTorch links MKL


@functools.cache
def _libraries() -> _Libraries | None:
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if line.rstrip().endswith(".so") or ".so." in line}
    except OSError:
        return None
    # PyTorch's own runtime: other wheels (scikit-learn) may bring another copy of libgomp
    own = os.path.dirname(torch.__file__)
    runtimes = [p for p in paths if any(k in os.path.basename(p) for k in ("libgomp", "libiomp", "libomp"))]
    omp = min(runtimes, key=lambda p: (not p.startswith(own), p), default=None)
    if omp is None:
        return None
    try:
        lib = ctypes.CDLL(omp)
        lib.omp_set_num_threads.argtypes = [ctypes.c_int]
        lib.omp_get_max_threads.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    mkl_local = None
    mkl_paths = [p for p in paths if "libtorch_cpu" in p or "libmkl" in p]
    for path in sorted(mkl_paths, key=lambda p: (not p.startswith(own), p)):
        try:
            fn = ctypes.CDLL(path).MKL_Set_Num_Threads_Local  # the C entry (the lower-case name is Fortran)
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        mkl_local = fn
        break
    return _Libraries(lib, mkl_local)


@functools.cache
def available() -> bool:
    """Whether `limit` confines a thread here: the libraries were found, and PyTorch in a thread
    under ``limit(1)`` reports one thread (so the OpenMP runtime found is PyTorch's own)."""
    if _libraries() is None:
        return False
    seen: list[int] = []

    def probe() -> None:
        with limit(1):
            seen.append(torch.get_num_threads())

    worker = threading.Thread(target=probe, name="cnnviz-threads-probe")
    worker.start()
    worker.join()
    return seen == [1]


@contextlib.contextmanager
def limit(threads: int) -> Iterator[None]:
    """PyTorch CPU ops called from this thread use at most `threads` threads, until exit; every
    other thread, and the count that threads started later take up, stay as they are."""
    libs = _libraries()
    if libs is None:
        raise RuntimeError("no per-thread thread count here (see cnnviz.evaluate.threads.available)")
    torch.get_num_threads()  # PyTorch sets a thread up on first use: do it first, or it overrides ours
    before = libs.omp.omp_get_max_threads()
    libs.omp.omp_set_num_threads(max(1, int(threads)))
    mkl_before = libs.mkl_local(max(1, int(threads))) if libs.mkl_local is not None else None
    try:
        yield
    finally:
        libs.omp.omp_set_num_threads(before)
        if libs.mkl_local is not None and mkl_before is not None:
            libs.mkl_local(mkl_before)  # 0 restores "no thread-local count"
