"""One training run for tests/test_distributed.py, started under ``mpirun`` (or alone, for
the one-process reference). Every rank writes its weights (``model.state_dict()``, the
dropout step counters and the history's losses) to ``OUT.rank<r>.npz``.

    python tests/mpi_worker.py OUT [--model lenet|bnnet] [--single] [--sync-bn]
        [--epochs E] [--batch B] [--n-train N] [--stop-after S] [--stop-rank R]
        [--checkpoint P] [--resume] [--die exit|hang] [--die-at S] [--timeout T] [--threads T]
"""

import argparse
import dataclasses
import os
import signal
import sys
import time

import numpy as np

import fastcnn
from fastcnn.datasets import load_mnist5k
from fastcnn.train import Progress, Trainer, TrainingInterrupted
from fastcnn.transforms import RandomShift


def build(name):
    rng = np.random.default_rng(7)
    if name == "lenet":
        model = fastcnn.LeNet5()
    else:  # batch norm and dropout
        nn = fastcnn.nn
        model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Conv2d(6, 8, 5), nn.BatchNorm2d(8),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3),
                              nn.Linear(200, 10))
        model.input_shape = (1, 32, 32)
    for p in model.parameters():  # a fixed initialisation, whatever the layers' defaults
        p.data[...] = rng.normal(0, 0.1, p.data.shape)
    return model


class Hooks(Progress):
    """Stops (as a Ctrl-C would) or kills one rank after a given step."""

    def __init__(self, trainer, args, rank):
        super().__init__(bar=False, log=print if rank == 0 else None)
        self.trainer, self.args, self.rank = trainer, args, rank

    def step(self, partial):
        a, t = self.args, self.trainer
        done = t.epoch * t.steps_per_epoch + t.step
        if a.die and self.rank == 1 and done == a.die_at:
            if a.die == "exit":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        if a.stop_after and self.rank == a.stop_rank:
            # one process stops after the step it asks in; a distributed run after the next
            # step (the request travels with that step's sum), so ask one step earlier
            if done == a.stop_after - (0 if a.single else 1):
                t.request_stop()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--model", default="lenet")
    p.add_argument("--single", action="store_true")
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n-train", type=int, default=640)
    p.add_argument("--stop-after", type=int, default=0)
    p.add_argument("--stop-rank", type=int, default=0)
    p.add_argument("--checkpoint")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--die")
    p.add_argument("--die-at", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-augment", action="store_true")
    a = p.parse_args()
    fastcnn.set_num_threads(a.threads)
    comm = None
    if not a.single:
        from fastcnn.distributed import Communicator

        comm = Communicator(timeout=a.timeout)
    rank = 0 if comm is None else comm.rank
    data = load_mnist5k()
    data = dataclasses.replace(data, train=(data.train[0][:a.n_train], data.train[1][:a.n_train]),
                               test=(data.test[0][:300], data.test[1][:300]))
    model = build(a.model)
    opt = fastcnn.SGD(model.param_groups(5e-4), lr=0.05, momentum=0.9)
    trainer = Trainer(model, opt, data, epochs=a.epochs, batch_size=a.batch, seed=3,
                      schedule="cosine", augment=[] if a.no_augment else [RandomShift(2)],
                      checkpoint=a.checkpoint, distributed=comm, sync_bn=a.sync_bn)
    trainer.progress = Hooks(trainer, a, rank)
    if a.resume:
        trainer.load_checkpoint(a.checkpoint)
    stopped = None
    try:
        trainer.fit()
    except TrainingInterrupted as exc:
        stopped = exc
    state = model.state_dict()
    steps = trainer.epoch * trainer.steps_per_epoch + trainer.step
    drop = [m.step for m in [model] + [c for _, c in model.children()] if hasattr(m, "step")]
    np.savez(f"{a.out}.rank{rank}.npz", steps=steps, dropout_steps=np.array(drop),
             losses=np.array([h["loss"] for h in trainer.history]),
             test_acc=np.array([h["test_acc"] for h in trainer.history]),
             stopped=stopped is not None, **{"w:" + k: v for k, v in state.items()})
    sys.stdout.write(f"rank {rank}: {steps} steps\n")


if __name__ == "__main__":
    main()
