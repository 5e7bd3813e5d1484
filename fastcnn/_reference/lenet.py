"""LeNet-5 in plain NumPy: the baseline of the benchmark report."""

import numpy as np

from .activation import relu_backward_ref, relu_ref
from .conv import conv2d_backward_input_im2col, conv2d_backward_weight_im2col, conv2d_im2col
from .linear import linear_ref
from .loss import softmax_cross_entropy_ref
from .pooling import max_pool2d_backward_ref, max_pool2d_numpy

__all__ = ["lenet5_init_params", "lenet5_train_step_numpy"]

# --------------------------------------------------------------------------------------------
# LeNet-5 baseline (DESIGN.md section 5)
# --------------------------------------------------------------------------------------------

_LENET5_SHAPES = {
    "0.weight": (6, 1, 5, 5), "0.bias": (6,),
    "3.weight": (16, 6, 5, 5), "3.bias": (16,),
    "6.weight": (120, 16, 5, 5), "6.bias": (120,),
    "9.weight": (84, 120), "9.bias": (84,),
    "11.weight": (10, 84), "11.bias": (10,),
}


def lenet5_init_params(seed=0, dtype=np.float32):
    """LeNet-5 parameters with PyTorch's default init (uniform in +-1/sqrt(fan_in)).

    Keys follow PyTorch's ``nn.Sequential`` numbering (see :func:`lenet5_train_step_numpy`).
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in _LENET5_SHAPES.items():
        weight_shape = _LENET5_SHAPES[name.split(".")[0] + ".weight"]
        bound = 1.0 / np.sqrt(np.prod(weight_shape[1:]))
        params[name] = rng.uniform(-bound, bound, size=shape).astype(dtype)
    return params


def lenet5_train_step_numpy(params, x, labels, lr):
    """One plain-SGD step of LeNet-5 built from the im2col references (the NumPy baseline).

    The layers are numbered as in PyTorch's ``nn.Sequential``: 0 Conv2d(1, 6, 5), 1 ReLU,
    2 MaxPool2d(2), 3 Conv2d(6, 16, 5), 4 ReLU, 5 MaxPool2d(2), 6 Conv2d(16, 120, 5), 7 ReLU,
    8 Flatten, 9 Linear(120, 84), 10 ReLU, 11 Linear(84, 10); the loss is the mean softmax
    cross-entropy. The first layer's input gradient is not computed.

    Parameters
    ----------
    params : dict of str to ndarray
        ``"0.weight"``, ``"0.bias"``, ``"3.weight"``, ... ``"11.bias"`` with PyTorch's shapes;
        updated in place: ``p -= lr * dL/dp``.
    x : ndarray, shape (N, 1, 32, 32)
    labels : ndarray of int, shape (N,)
    lr : float

    Returns
    -------
    loss : float
        The loss before the update.
    """
    P = params
    x = np.asarray(x, dtype=P["0.weight"].dtype)
    N = x.shape[0]
    # Forward.
    a0 = conv2d_im2col(x, P["0.weight"], P["0.bias"])              # (N, 6, 28, 28)
    a1 = relu_ref(a0)
    a2, idx2 = max_pool2d_numpy(a1, 2)                             # (N, 6, 14, 14)
    a3 = conv2d_im2col(a2, P["3.weight"], P["3.bias"])             # (N, 16, 10, 10)
    a4 = relu_ref(a3)
    a5, idx5 = max_pool2d_numpy(a4, 2)                             # (N, 16, 5, 5)
    a6 = conv2d_im2col(a5, P["6.weight"], P["6.bias"])             # (N, 120, 1, 1)
    a7 = relu_ref(a6)
    a8 = a7.reshape(N, 120)
    a9 = linear_ref(a8, P["9.weight"], P["9.bias"])                # (N, 84)
    a10 = relu_ref(a9)
    a11 = linear_ref(a10, P["11.weight"], P["11.bias"])            # (N, 10)
    loss, g11 = softmax_cross_entropy_ref(a11, labels)
    # Backward.
    grads = {"11.weight": g11.T @ a10, "11.bias": g11.sum(axis=0)}
    g9 = relu_backward_ref(g11 @ P["11.weight"], a9)
    grads["9.weight"], grads["9.bias"] = g9.T @ a8, g9.sum(axis=0)
    g6 = relu_backward_ref((g9 @ P["9.weight"]).reshape(a6.shape), a6)
    grads["6.weight"], grads["6.bias"] = conv2d_backward_weight_im2col(a5, g6, 5)
    g5 = conv2d_backward_input_im2col(g6, P["6.weight"], a5.shape[2:])
    g3 = relu_backward_ref(max_pool2d_backward_ref(g5, idx5, a4.shape[2:]), a3)
    grads["3.weight"], grads["3.bias"] = conv2d_backward_weight_im2col(a2, g3, 5)
    g2 = conv2d_backward_input_im2col(g3, P["3.weight"], a2.shape[2:])
    g0 = relu_backward_ref(max_pool2d_backward_ref(g2, idx2, a1.shape[2:]), a0)
    grads["0.weight"], grads["0.bias"] = conv2d_backward_weight_im2col(x, g0, 5)
    # Plain SGD, in place.
    for name, grad in grads.items():
        P[name] -= (lr * grad).astype(P[name].dtype, copy=False)
    return loss
