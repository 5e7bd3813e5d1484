"""Throughput of data-parallel training (the figures of the README's MPI section).

    python tests/mpi_bench.py --single --threads T [--model lenet5|bnnet] [--n N]
    mpirun -np K python tests/mpi_bench.py --threads T [--model ...] [--n N]

One epoch of Fashion-MNIST (IDX files under --data), batch 64, SGD; prints the training
images/s (evaluation excluded), the seconds spent in the step's collective (including the wait
for the slower rank) as a share of the epoch, and the gradient size. ``--collective-only``
times the rank-order gradient sum alone (200 sums of the model's gradient).
"""

import argparse
import dataclasses
import time

import numpy as np

import fastcnn
from fastcnn.datasets import load_dataset
from fastcnn.train import Trainer


def model_named(name):
    if name == "lenet5":
        return fastcnn.LeNet5()
    from fastcnn.models import get_model  # the zoo (cli branch)

    return get_model(name)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--single", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--n", type=int, default=60000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--collective-only", action="store_true")
    p.add_argument("--sync-bn", action="store_true")
    a = p.parse_args()
    fastcnn.set_num_threads(a.threads)
    comm = None
    if not a.single:
        from fastcnn.distributed import Communicator

        comm = Communicator()
    model = model_named(a.model)
    params = model.parameters()
    n_grad = sum(p.grad.size for p in params)
    if a.collective_only:
        comm.barrier()
        times = []
        for _ in range(200):
            t = time.perf_counter()
            comm.sum_gradients(params, extra=(0.0, 0.0, 0.0))
            times.append(time.perf_counter() - t)
        if comm.is_root:
            print(f"collective of {n_grad} floats ({4 * n_grad / 1024:.0f} KiB) on {comm.size} "
                  f"ranks: median {1e6 * np.median(times):.0f} us, min "
                  f"{1e6 * min(times):.0f} us")
        return
    data = load_dataset(a.data, normalize=True, pad=2 if a.model == "lenet5" else 0)
    data = dataclasses.replace(data, train=(data.train[0][:a.n], data.train[1][:a.n]))
    opt = fastcnn.SGD(model.param_groups(5e-4), lr=0.05, momentum=0.9)
    trainer = Trainer(model, opt, data, epochs=1, batch_size=a.batch, distributed=comm,
                      progress=False, sync_bn=a.sync_bn)
    trainer.data.test = None  # time training only
    trainer.fit()
    record = trainer.history[-1]
    if comm is None or comm.is_root:
        k = 1 if comm is None else comm.size
        share = "" if comm is None else (f", collective+wait {comm.comm_seconds:.2f} s = "
                                         f"{100 * comm.comm_seconds / record['seconds']:.1f}%")
        name = a.model + (" sync-bn" if a.sync_bn else "")
        print(f"{name} {k} rank(s) x {a.threads} thread(s): {record['images_per_s']:.0f} "
              f"images/s ({record['seconds']:.1f} s for {a.n} images, "
              f"{1000 * record['seconds'] / trainer.steps_per_epoch:.2f} ms/step{share}); "
              f"gradient {n_grad} floats")


if __name__ == "__main__":
    main()
