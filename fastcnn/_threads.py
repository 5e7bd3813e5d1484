"""The thread budget shared by the kernels (OpenMP) and BLAS (used by Linear layers)."""

import os

_num_threads = None  # None: not set by the user, use the default
_default = None  # the default, worked out once (it costs a system call)


def _default_num_threads():
    global _default
    if _default is None:
        _default = _compute_default()
    return _default


def _compute_default():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n >= 1:
            return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n):
    """Set how many threads the kernels and BLAS may use from now on.

    Parameters
    ----------
    n : int or None
        A positive thread count, or None to go back to the default (``OMP_NUM_THREADS`` if set,
        else the number of cores this process may run on).

    Results do not depend on the thread count: every kernel is bitwise reproducible.
    """
    global _num_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
            raise TypeError(f"number of threads must be an int or None, got {n!r}")
        n = int(n)
        if n < 1:
            raise ValueError(f"number of threads must be >= 1, got {n}")
    _num_threads = n
    _limit_blas(get_num_threads())


def get_num_threads():
    """The number of threads the kernels will use."""
    return _num_threads if _num_threads is not None else _default_num_threads()


_blas_limiter = None


def _limit_blas(n):
    """Keep BLAS to the same budget as the kernels. The layers do not call it (Linear runs the
    kernels' own matrix product); NumPy calls around them may (``einsum`` in the distributed
    batch norm's statistics), and a user's code in the same process does."""
    global _blas_limiter
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional at run time; the kernels do not need it
        return
    if _blas_limiter is not None:
        _blas_limiter.restore_original_limits()
    _blas_limiter = threadpool_limits(limits=n, user_api="blas")
