"""Synchronous data-parallel training over MPI (optional: ``pip install "fastcnn[mpi]"``).

Use it through the trainer (``Trainer(..., distributed=True)``, ``fastcnn train
--distributed`` under ``mpirun``). Every rank holds the whole model and reads a disjoint,
contiguous shard of each global batch (:func:`shard_bounds`); the batch and its order do not
depend on the number of ranks K. Each rank's loss is the mean over its shard, so before the
backward pass the trainer scales the logits gradient by the shard's share ``n_r / N``: every
gradient a rank computes (parameters, and the batch-norm sums of ``--sync-bn``) is then its part
of the gradient of the global batch's mean loss. :meth:`Communicator.sum_gradients` packs every
parameter gradient, plus the loss, the count of correct predictions and the stop flag, into one
flat contiguous buffer and sums it across ranks with one collective per step (the uppercase
buffer API, no pickling); every rank takes the same optimiser step.

**Reproducible by design.** MPI's own ``Allreduce`` may add the K contributions in an order that
depends on the algorithm it picks (ring, tree, recursive doubling) and so on K and the message
size. Here the sum has a fixed order instead: ``Igather`` the K buffers to rank 0, add them there
in rank order ``((g_0 + g_1) + g_2) + ...``, and ``Ibcast`` the result. For a fixed K the result
is bitwise the same from run to run and for any number of OpenMP threads per rank (the kernels
are thread-count independent too), and every rank holds bitwise the same weights. The price is
that rank 0 receives K buffers instead of the ``2 (K-1)/K`` of a ring allreduce; for the small
models this package trains (LeNet-5: 61,706 parameters, 241 KiB a step) that is well under a
millisecond on one machine; the README's cost model gives the figures for clusters.

**A rank that dies.** Each collective is started non-blocking and waited for with a deadline
(``timeout`` seconds, default 300); past it the rank prints what it was waiting for and calls
``MPI_Abort``, which makes ``mpirun`` end every rank. A rank killed by a signal or exiting
with an error ends the job through ``mpirun`` at once (``mpirun noticed that process rank 1
... exited on signal 9``); an exception on one rank inside ``Trainer.fit`` (and, with
:meth:`Communicator.abort_on_exception`, anywhere) prints its traceback and aborts the job.

**Stopping.** A stop request (Ctrl-C, SIGTERM or SIGUSR1 on any rank, ``request_stop()``)
travels with the next step's sum, so every rank stops after the same step and rank 0 writes
the one checkpoint. ``mpirun`` forwards SIGUSR1 to every rank; on Ctrl-C it sends the ranks
SIGTERM and SIGKILL one second later (Open MPI's ``odls_base_sigkill_timeout``), so use
``kill -USR1 <mpirun pid>`` for a graceful stop with a checkpoint.

Only rank 0 writes files and output (``is_root``).
"""

import os
import sys
import time

import numpy as np

__all__ = ["Communicator", "launched_by_mpirun", "shard_bounds", "threads_per_rank"]

_RANK_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")


def launched_by_mpirun():
    """The number of processes of the MPI job this process was started in (1 when started
    alone), read from the launcher's environment without importing MPI."""
    for name in _RANK_ENV[:3]:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def threads_per_rank():
    """A default thread count for this rank, or None to keep fastcnn's default: when the
    launcher did not bind the rank (it may use every core) and several ranks run on this
    machine, the cores divided among them (so that K ranks x T threads do not oversubscribe
    the machine). Bound ranks (Open MPI's default for 2 ranks, ``--map-by ...:PE=T``) keep
    their own cores."""
    local = os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or os.environ.get("MPI_LOCALNRANKS")
    if not (local and local.isdigit() and int(local) > 1):
        return None
    total = os.cpu_count() or 1
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    if mine < total:
        return None
    return max(1, mine // int(local))


def shard_bounds(n, size, rank):
    """``[lo, hi)`` of a batch of ``n`` samples that rank ``rank`` of ``size`` reads: contiguous
    shards, the first ``n % size`` ranks one sample longer. A pure function of (n, size, rank)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class Communicator:
    """The MPI side of data-parallel training (wraps ``mpi4py``'s ``COMM_WORLD``).

    Parameters
    ----------
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    timeout : float, default 300
        Seconds a rank waits in a collective before it aborts the job.

    Attributes
    ----------
    rank, size : int
    is_root : bool
        True on rank 0, the only rank that writes files and output.
    comm_seconds : float
        Time spent in gradient collectives so far (for the communication share of a step).
    """

    def __init__(self, comm=None, timeout=300.0):
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError("distributed training needs mpi4py (and an MPI library such as "
                              "Open MPI): pip install 'fastcnn[mpi]'") from None
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.is_root = self.rank == 0
        timeout = float(timeout)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self.comm_seconds = 0.0
        self._flat = None
        self._gathered = None

    def shard(self, n):
        """``[lo, hi)`` of a global batch of ``n`` samples that this rank reads."""
        return shard_bounds(n, self.size, self.rank)

    def _wait(self, request, what):
        """Wait for a non-blocking collective; abort the whole job past the deadline.

        Polls (``Test`` drives MPI's progress) for up to 100 us, then sleeps 50 us between
        polls: a rank waiting for a slower one gives its core away instead of spinning, which
        matters when ranks share cores with each other or with other work."""
        start = time.monotonic()
        deadline = start + self.timeout
        spin_until = start + 1e-4
        while not request.Test():
            now = time.monotonic()
            if now > spin_until:
                time.sleep(5e-5)
            if now > deadline:
                sys.stderr.write(f"fastcnn: error: rank {self.rank} waited {self.timeout:g} s "
                                 f"for {what}: another rank has died or hangs; aborting the "
                                 "job\n")
                sys.stderr.flush()
                self.comm.Abort(1)

    def _buffers(self, params, dtype, n_extra=0):
        size = sum(p.grad.size for p in params) + n_extra
        if self._flat is None or self._flat.size != size or self._flat.dtype != dtype:
            self._flat = np.empty(size, dtype=dtype)
            self._gathered = np.empty((self.size, size), dtype=dtype) if self.is_root else None
        return self._flat

    def sum_gradients(self, params, weight=None, extra=()):
        """Replace every ``p.grad`` by ``sum_r weight_r * grad_r`` over the ranks, summed in
        rank order (see the module docstring); ``weight`` is this rank's share of the batch
        (None: the gradients are already scaled, as the Trainer does). One Gather and one Bcast
        of a single flat buffer holding the gradients and the few numbers of `extra` (e.g. the
        loss, the count of correct predictions and a stop flag), whose sums are returned as
        float64 (they travel in the gradients' dtype).
        """
        params = list(params)
        extra = np.asarray(extra, dtype=np.float64).reshape(-1)
        if not params and not extra.size:
            return extra
        dtype = params[0].grad.dtype if params else np.dtype(np.float64)
        flat = self._buffers(params, dtype, extra.size)
        offset = 0
        for p in params:
            n = p.grad.size
            if weight is None:
                flat[offset:offset + n] = p.grad.reshape(-1)
            else:
                np.multiply(p.grad.reshape(-1), dtype.type(weight), out=flat[offset:offset + n])
            offset += n
        flat[offset:] = extra
        self.sum_in_rank_order(flat)
        offset = 0
        for p in params:
            n = p.grad.size
            p.grad.reshape(-1)[...] = flat[offset:offset + n]
            offset += n
        return flat[offset:].astype(np.float64)

    def sum_in_rank_order(self, flat, what="the gradient sum"):
        """In place: ``flat = flat_0 + flat_1 + ... + flat_{K-1}`` on every rank, added in rank
        order on rank 0 and broadcast (bitwise reproducible for a fixed K)."""
        MPI = self._MPI
        start = time.perf_counter()
        if self.size > 1:
            gathered = self._gathered if (self.is_root and self._gathered is not None
                                          and self._gathered.shape == (self.size, flat.size)
                                          and self._gathered.dtype == flat.dtype) else (
                np.empty((self.size, flat.size), dtype=flat.dtype) if self.is_root else None)
            mpi_type = MPI.DOUBLE if flat.dtype == np.float64 else MPI.FLOAT
            self._wait(self.comm.Igather([flat, mpi_type],
                                         [gathered, mpi_type] if self.is_root else None, root=0),
                       what)
            if self.is_root:
                np.copyto(flat, gathered[0])
                for r in range(1, self.size):
                    flat += gathered[r]
            self._wait(self.comm.Ibcast([flat, mpi_type], root=0), what)
        self.comm_seconds += time.perf_counter() - start
        return flat

    def agree(self, flag):
        """True on every rank when any rank passes True (e.g. a Ctrl-C seen by one rank), so
        that all ranks stop at the same step."""
        MPI = self._MPI
        if self.size == 1:
            return bool(flag)
        out = np.zeros(1, dtype=np.int32)
        self._wait(self.comm.Iallreduce(np.array([int(bool(flag))], dtype=np.int32), out,
                                        op=MPI.MAX), "the stop flag")
        return bool(out[0])

    def allgather(self, a):
        """Every rank's float64 array `a`, stacked in rank order: ``(size,) + a.shape`` on every
        rank (one Iallgather; used by synchronised batch norm, which combines the rows in rank
        order, so every rank computes the same statistics bit for bit)."""
        a = np.ascontiguousarray(a, dtype=np.float64)
        out = np.empty((self.size,) + a.shape, dtype=np.float64)
        if self.size == 1:
            out[0] = a
            return out
        MPI = self._MPI
        self._wait(self.comm.Iallgather([a, MPI.DOUBLE], [out, MPI.DOUBLE]),
                   "the batch-norm statistics")
        return out

    def broadcast_array(self, a, what="the initial weights"):
        """Rank 0's array on every rank, in place (weights at the start, so ranks agree)."""
        if self.size > 1:
            a = np.asarray(a)
            if not (a.flags.c_contiguous and a.flags.writeable):
                raise ValueError("broadcast_array needs a writeable C-contiguous array")
            self._wait(self.comm.Ibcast(a.reshape(-1).view(np.uint8), root=0), what)
        return a

    def broadcast_state(self, model, buffers_only=False):
        """Rank 0's parameters and buffers (batch-norm running statistics) on every rank, in
        place (one Ibcast per array: done once at the start, and for the buffers before each
        evaluation)."""
        if self.size == 1:
            return
        stack = [model]
        while stack:
            m = stack.pop(0)
            arrays = [] if buffers_only else list(getattr(m, "params", {}).values())
            arrays += list(getattr(m, "buffers", {}).values())
            for a in arrays:
                self.broadcast_array(a, "rank 0's weights and buffers")
            stack.extend(child for _, child in m.children())

    def barrier(self):
        if self.size > 1:
            self._wait(self.comm.Ibarrier(), "the other ranks")

    def abort(self, message, code=1):
        """Print `message` (prefixed with this rank) on stderr and end every rank of the job."""
        sys.stderr.write(f"fastcnn: error: rank {self.rank} of {self.size}: {message}\n")
        sys.stderr.flush()
        self.comm.Abort(code)

    def abort_on_exception(self):
        """Make an uncaught exception on any rank end the whole job at once (the traceback is
        printed first), instead of leaving the other ranks waiting for it in a collective until
        their deadline. The CLI's ``--distributed`` installs it."""
        if self.size == 1:
            return
        previous = sys.excepthook

        def hook(kind, value, tb):
            previous(kind, value, tb)
            if issubclass(kind, SystemExit) and not value.code:
                return
            self.abort(f"{kind.__name__} (traceback above); ending the other ranks")

        sys.excepthook = hook

