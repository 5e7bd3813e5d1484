# How many threads a parallel loop uses (included by the kernel modules).
#
# Waking the other threads and the barrier after a parallel loop cost about a microsecond
# (measured: 0.9 us a region on 2 threads, spinning; several when a thread has to be woken or
# its core is busy), the time of some 50K multiply-adds on one core. A loop gets no more
# threads than it has ``grain`` units of work for each (GRAIN multiply-adds by default): the
# batch-1 layers of LeNet-5 run on one thread whatever the setting, a VGG layer of 0.9M
# multiply-adds on two. The results do not change (every kernel's sums are fixed by the
# shapes, not by the thread count).

cdef enum:
    GRAIN = 65536  # least multiply-adds per thread, by default
    MOVE = 8       # multiply-adds a value moved through memory counts for (pad, pool, copy)

cdef Py_ssize_t _grain = GRAIN


cdef inline int _threads_for(Py_ssize_t work, int n_threads) noexcept nogil:
    """``n_threads``, or fewer so that each thread gets ``_grain`` units of ``work`` (>= 1)."""
    cdef Py_ssize_t most = work // _grain
    if most < n_threads:
        return <int> most if most > 1 else 1
    return n_threads


def threads_for(Py_ssize_t work, int n_threads):
    """The threads a parallel loop of ``work`` multiply-adds gets when ``n_threads`` are set."""
    return _threads_for(work, n_threads)


def set_grain(Py_ssize_t grain):
    """Test-only: the least work per thread (1: every loop gets every thread, so that tiny test
    shapes run the parallel paths); returns the previous value."""
    global _grain
    if grain < 1:
        raise ValueError(f"grain must be >= 1, got {grain}")
    old, _grain = _grain, grain
    return old
