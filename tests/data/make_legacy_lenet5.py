"""Made the legacy (LeNet-5-only format) fixtures in this folder; it ran on commit 5d5a897, before
model files recorded the architecture as a layer list (run from the repository root)."""
import numpy as np

import fastcnn
from fastcnn.datasets import Dataset, Split

rng = np.random.default_rng(0)
n_train, n_test = 48, 16
x = rng.random((n_train + n_test, 1, 28, 28)).astype(np.float32)
xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
mean, std = 0.1307, 0.3081
xn = (xp - np.float32(mean)) / np.float32(std)
y = rng.integers(0, 10, n_train + n_test)
classes = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
data = Dataset(name="random", train=Split(xn[:n_train], y[:n_train]),
               test=Split(xn[n_train:], y[n_train:]), classes=classes, mean=mean, std=std)
model = fastcnn.LeNet5(seed=3)
opt = fastcnn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
trainer = fastcnn.Trainer(model, opt, data=data, epochs=1, batch_size=16, progress=False,
                          checkpoint_path="tests/data/legacy_lenet5_checkpoint.npz",
                          metadata={"data": {"name": "random", "path": None}})
trainer.fit()
trainer.save_model("tests/data/legacy_lenet5_model.npz")
probe = np.random.default_rng(1).random((5, 28, 28)).astype(np.float32)
np.save("tests/data/legacy_lenet5_probe.npy", probe)
pp = np.pad(probe[:, None], ((0, 0), (0, 0), (2, 2), (2, 2)))
pn = (pp - np.float32(mean)) / np.float32(std)
np.save("tests/data/legacy_lenet5_logits.npy", model.forward(pn))
print(model.predict(pn), model.forward(pn)[:, :3])
