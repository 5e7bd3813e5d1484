"""Plain-NumPy reference implementations of every fastcnn kernel.

These functions are the test oracle and the benchmark baseline, never the fast path. Each
convolution comes in two independent versions so that they can check each other:

* ``*_loops``: course-style, with explicit Python loops over output positions. Slow, but each
  line is one term of the formula in DESIGN.md section 3.
* ``*_im2col``: the input windows are copied into a column matrix (im2col) and the convolution
  becomes one matrix product; the input gradient scatters the columns back (col2im).

The reference functions assume valid input (matching shapes, one floating dtype, a kernel that fits
the padded input) and do not check it: the public ``fastcnn.functional`` API validates. They accept
any array layout and return arrays of the input dtype.

Notation (DESIGN.md section 2): ``x`` is ``(N, C, H, W)``, ``weight`` is ``(F, C, KH, KW)``,
``bias`` is ``(F,)``, stride ``(sh, sw)``, zero padding ``(ph, pw)``,
``OH = (H + 2*ph - KH) // sh + 1`` and ``OW = (W + 2*pw - KW) // sw + 1``.
"""

import numpy as np

__all__ = [
    "col2im",
    "conv2d_backward_input_im2col",
    "conv2d_backward_input_loops",
    "conv2d_backward_weight_im2col",
    "conv2d_backward_weight_loops",
    "conv2d_im2col",
    "conv2d_loops",
    "im2col",
    "lenet5_init_params",
    "lenet5_train_step_numpy",
    "linear_ref",
    "max_pool2d_backward_ref",
    "max_pool2d_loops",
    "max_pool2d_numpy",
    "relu_backward_ref",
    "relu_ref",
    "softmax_cross_entropy_ref",
]


def _pair(value):
    """Return ``value`` as a pair of ints (``3 -> (3, 3)``, ``(2, 1) -> (2, 1)``)."""
    if isinstance(value, (tuple, list)):
        a, b = value
        return int(a), int(b)
    return int(value), int(value)


def _out_size(size, kernel, stride, padding):
    """Number of window positions along one axis: ``(size + 2*padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def _c(*arrays):
    """C-contiguous copies where needed, so that results do not depend on the input layout."""
    return tuple(None if a is None else np.ascontiguousarray(a) for a in arrays)


def _pad(x, ph, pw, value=0.0):
    """Pad the last two axes of ``x`` by ``ph`` rows and ``pw`` columns on each side."""
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=value)


# --------------------------------------------------------------------------------------------
# Convolution, loop version
# --------------------------------------------------------------------------------------------


def conv2d_loops(x, weight, bias=None, stride=1, padding=0):
    """Convolution forward (a correlation), one output position at a time.

    ``y[n, f, i, j] = b[f] + sum_{c,p,q} w[f, c, p, q] * xp[n, c, i*sh + p, j*sw + q]``

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    weight : ndarray, shape (F, C, KH, KW)
    bias : ndarray, shape (F,), optional
    stride, padding : int or (int, int)

    Returns
    -------
    y : ndarray, shape (N, F, OH, OW)
    """
    x, weight, bias = _c(x, weight, bias)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    N, _, H, W = x.shape
    F, _, KH, KW = weight.shape
    OH, OW = _out_size(H, KH, sh, ph), _out_size(W, KW, sw, pw)
    xp = _pad(x, ph, pw)
    y = np.zeros((N, F, OH, OW), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                window = xp[n, :, i * sh:i * sh + KH, j * sw:j * sw + KW]  # (C, KH, KW)
                y[n, :, i, j] = np.sum(weight * window, axis=(1, 2, 3))  # all F at once
    if bias is not None:
        y += bias.reshape(1, F, 1, 1)
    return y


def conv2d_backward_input_loops(grad_y, weight, input_size, stride=1, padding=0):
    """Input gradient of :func:`conv2d_loops`, scattering each output position back.

    The forward pass reads window ``(i, j)`` of ``xp`` once per output element, so the gradient
    adds ``sum_f g[n, f, i, j] * w[f]`` into that window; cropping the padding gives ``dx``. Rows
    and columns of ``xp`` that no window reached get a zero gradient.

    Parameters
    ----------
    grad_y : ndarray, shape (N, F, OH, OW)
    weight : ndarray, shape (F, C, KH, KW)
    input_size : (int, int)
        ``(H, W)`` of the forward input.
    stride, padding : int or (int, int)

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    grad_y, weight = _c(grad_y, weight)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    H, W = _pair(input_size)
    N, F, OH, OW = grad_y.shape
    _, C, KH, KW = weight.shape
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=grad_y.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                g = grad_y[n, :, i, j].reshape(F, 1, 1, 1)
                dxp[n, :, i * sh:i * sh + KH, j * sw:j * sw + KW] += np.sum(g * weight, axis=0)
    return dxp[:, :, ph:ph + H, pw:pw + W].copy()


def conv2d_backward_weight_loops(x, grad_y, kernel_size, stride=1, padding=0):
    """Weight and bias gradients of :func:`conv2d_loops`, one output position at a time.

    ``dw[f, c, p, q] = sum_{n,i,j} g[n, f, i, j] * xp[n, c, i*sh + p, j*sw + q]`` and
    ``db[f] = sum_{n,i,j} g[n, f, i, j]``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    grad_y : ndarray, shape (N, F, OH, OW)
    kernel_size : int or (int, int)
        ``(KH, KW)``.
    stride, padding : int or (int, int)

    Returns
    -------
    grad_weight : ndarray, shape (F, C, KH, KW)
    grad_bias : ndarray, shape (F,)
    """
    x, grad_y = _c(x, grad_y)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    KH, KW = _pair(kernel_size)
    N, C = x.shape[:2]
    _, F, OH, OW = grad_y.shape
    xp = _pad(x, ph, pw)
    dw = np.zeros((F, C, KH, KW), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                window = xp[n, :, i * sh:i * sh + KH, j * sw:j * sw + KW]  # (C, KH, KW)
                dw += grad_y[n, :, i, j].reshape(F, 1, 1, 1) * window
    db = grad_y.sum(axis=(0, 2, 3))
    return dw, db


# --------------------------------------------------------------------------------------------
# Convolution, im2col + matmul version
# --------------------------------------------------------------------------------------------


def im2col(x, kernel_size, stride=1, padding=0, pad_value=0.0):
    """Copy every window of the padded input into a column.

    ``cols[n, c, p, q, i, j] = xp[n, c, i*sh + p, j*sw + q]``

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size, stride, padding : int or (int, int)
    pad_value : float
        Value of the padding (0 for convolution, -inf for max-pooling).

    Returns
    -------
    cols : ndarray, shape (N, C, KH, KW, OH, OW)
        Reshape to ``(N, C*KH*KW, OH*OW)`` for the usual column matrix.
    """
    KH, KW = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    N, C, H, W = x.shape
    OH, OW = _out_size(H, KH, sh, ph), _out_size(W, KW, sw, pw)
    xp = _pad(x, ph, pw, pad_value)
    cols = np.empty((N, C, KH, KW, OH, OW), dtype=x.dtype)
    for p in range(KH):
        for q in range(KW):
            cols[:, :, p, q] = xp[:, :, p:p + sh * OH:sh, q:q + sw * OW:sw]
    return cols


def col2im(cols, input_size, stride=1, padding=0):
    """Add every column back into the window it came from (the adjoint of :func:`im2col`).

    Parameters
    ----------
    cols : ndarray, shape (N, C, KH, KW, OH, OW)
    input_size : (int, int)
        ``(H, W)`` of the unpadded input.
    stride, padding : int or (int, int)

    Returns
    -------
    x : ndarray, shape (N, C, H, W)
        Padding rows and columns are dropped.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    H, W = _pair(input_size)
    N, C, KH, KW, OH, OW = cols.shape
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for p in range(KH):
        for q in range(KW):
            xp[:, :, p:p + sh * OH:sh, q:q + sw * OW:sw] += cols[:, :, p, q]
    return xp[:, :, ph:ph + H, pw:pw + W].copy()


def conv2d_im2col(x, weight, bias=None, stride=1, padding=0):
    """Convolution forward as ``y[n] = W (F, C*KH*KW) @ cols[n] (C*KH*KW, OH*OW)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    weight : ndarray, shape (F, C, KH, KW)
    bias : ndarray, shape (F,), optional
    stride, padding : int or (int, int)

    Returns
    -------
    y : ndarray, shape (N, F, OH, OW)
    """
    x, weight, bias = _c(x, weight, bias)
    F, C, KH, KW = weight.shape
    cols = im2col(x, (KH, KW), stride, padding)
    N, OH, OW = cols.shape[0], cols.shape[4], cols.shape[5]
    y = np.matmul(weight.reshape(F, C * KH * KW), cols.reshape(N, C * KH * KW, OH * OW))
    if bias is not None:
        y += bias.reshape(1, F, 1)
    return y.reshape(N, F, OH, OW)


def conv2d_backward_input_im2col(grad_y, weight, input_size, stride=1, padding=0):
    """Input gradient as ``col2im(W^T (C*KH*KW, F) @ g[n] (F, OH*OW))``.

    Parameters
    ----------
    grad_y : ndarray, shape (N, F, OH, OW)
    weight : ndarray, shape (F, C, KH, KW)
    input_size : (int, int)
        ``(H, W)`` of the forward input.
    stride, padding : int or (int, int)

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    grad_y, weight = _c(grad_y, weight)
    N, F, OH, OW = grad_y.shape
    _, C, KH, KW = weight.shape
    dcols = np.matmul(weight.reshape(F, C * KH * KW).T, grad_y.reshape(N, F, OH * OW))
    return col2im(dcols.reshape(N, C, KH, KW, OH, OW), input_size, stride, padding)


def conv2d_backward_weight_im2col(x, grad_y, kernel_size, stride=1, padding=0):
    """Weight and bias gradients as ``dw = sum_n g[n] (F, OH*OW) @ cols[n]^T (OH*OW, C*KH*KW)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    grad_y : ndarray, shape (N, F, OH, OW)
    kernel_size : int or (int, int)
        ``(KH, KW)``.
    stride, padding : int or (int, int)

    Returns
    -------
    grad_weight : ndarray, shape (F, C, KH, KW)
    grad_bias : ndarray, shape (F,)
    """
    x, grad_y = _c(x, grad_y)
    KH, KW = _pair(kernel_size)
    N, C = x.shape[:2]
    _, F, OH, OW = grad_y.shape
    cols = im2col(x, (KH, KW), stride, padding).reshape(N, C * KH * KW, OH * OW)
    g = grad_y.reshape(N, F, OH * OW)
    dw = np.tensordot(g, cols, axes=([0, 2], [0, 2]))  # (F, C*KH*KW)
    return dw.reshape(F, C, KH, KW), grad_y.sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------------------------
# Max-pooling
# --------------------------------------------------------------------------------------------


def max_pool2d_loops(x, kernel_size, stride=None, padding=0):
    """Max-pooling forward, one window at a time.

    Padding acts as -inf (it is skipped). Ties go to the first element in row-major order; a NaN
    is the maximum and the first NaN of the window wins.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    argmax : ndarray of int64, shape (N, C, OH, OW)
        Flat index ``u*W + v`` of each maximum in its input plane.
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    N, C, H, W = x.shape
    OH, OW = _out_size(H, kh, sh, ph), _out_size(W, kw, sw, pw)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    best, best_index = None, -1
                    for u in range(max(i * sh - ph, 0), min(i * sh - ph + kh, H)):
                        for v in range(max(j * sw - pw, 0), min(j * sw - pw + kw, W)):
                            value = x[n, c, u, v]
                            if (best is None or value > best
                                    or (np.isnan(value) and not np.isnan(best))):
                                best, best_index = value, u * W + v
                    y[n, c, i, j] = best
                    argmax[n, c, i, j] = best_index
    return y, argmax


def max_pool2d_numpy(x, kernel_size, stride=None, padding=0):
    """Vectorised max-pooling forward, same contract as :func:`max_pool2d_loops`.

    The windows are gathered with :func:`im2col` (padding = -inf) and reduced with ``np.argmax``,
    which returns the first maximum and the first NaN.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    argmax : ndarray of int64, shape (N, C, OH, OW)
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    N, C, H, W = x.shape
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw), pad_value=-np.inf)
    OH, OW = cols.shape[4], cols.shape[5]
    cols = cols.reshape(N, C, kh * kw, OH, OW)
    k = np.argmax(cols, axis=2)  # (N, C, OH, OW): window offset p*kw + q of the max
    y = np.take_along_axis(cols, k[:, :, None], axis=2)[:, :, 0]
    # The same windows over a plane holding its own flat indices u*W + v (-1 in the padding).
    plane = np.arange(H * W, dtype=np.int64).reshape(1, 1, H, W)
    flat = im2col(plane, (kh, kw), (sh, sw), (ph, pw), pad_value=-1).reshape(kh * kw, OH, OW)
    # A window whose real elements are all -inf would report a padding position: take its first
    # real element instead, as the loop version does.
    first_real = np.argmax(flat >= 0, axis=0)  # (OH, OW)
    i_idx, j_idx = np.arange(OH)[:, None], np.arange(OW)[None, :]
    k = np.where(flat[k, i_idx, j_idx] >= 0, k, first_real)
    argmax = flat[k, i_idx, j_idx]
    return y, argmax


def max_pool2d_backward_ref(grad_y, argmax, input_size):
    """Max-pooling backward: ``dx[n, c].flat[argmax[n, c]] += g[n, c]``.

    Overlapping windows that pick the same input element add up.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C, OH, OW)
    argmax : ndarray of int, shape (N, C, OH, OW)
    input_size : (int, int)
        ``(H, W)`` of the forward input.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    """
    grad_y, argmax = _c(grad_y, argmax)
    H, W = _pair(input_size)
    N, C, OH, OW = grad_y.shape
    dx = np.zeros((N * C, H * W), dtype=grad_y.dtype)
    planes = np.repeat(np.arange(N * C), OH * OW)
    np.add.at(dx, (planes, np.asarray(argmax).reshape(-1)), grad_y.reshape(-1))
    return dx.reshape(N, C, H, W)


# --------------------------------------------------------------------------------------------
# Element-wise, linear and loss
# --------------------------------------------------------------------------------------------


def relu_ref(x):
    """``y = max(x, 0)``; NaN stays NaN. Any shape."""
    return np.maximum(x, np.zeros((), dtype=x.dtype))


def relu_backward_ref(grad_y, x):
    """``dx = g * (x > 0)``, written as a select so that ``x <= 0`` gives exactly 0. Any shape."""
    return np.where(x > 0, grad_y, np.zeros((), dtype=grad_y.dtype))


def linear_ref(x, weight, bias=None):
    """Fully connected layer ``y = x @ weight.T + bias``.

    Parameters
    ----------
    x : ndarray, shape (N, in_features)
    weight : ndarray, shape (out_features, in_features)
    bias : ndarray, shape (out_features,), optional

    Returns
    -------
    y : ndarray, shape (N, out_features)
    """
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y


def softmax_cross_entropy_ref(logits, labels, l2=0.0, weights=()):
    """Mean softmax cross-entropy with optional L2 penalty, and its gradient w.r.t. the logits.

    ``p = softmax(z - max(z))``,
    ``L = -(1/N) sum_n log p[n, t_n] + 0.5 * l2 * sum_W ||W||^2``,
    ``dz = (p - onehot(t)) / N``.

    Parameters
    ----------
    logits : ndarray, shape (N, K)
    labels : ndarray of int, shape (N,)
    l2 : float
        L2 coefficient; the term covers ``weights`` only (pass weights, not biases).
    weights : sequence of ndarray

    Returns
    -------
    loss : float
    grad_logits : ndarray, shape (N, K), dtype of ``logits``
        Gradient of the data term only; the L2 gradient ``l2 * W`` belongs to each weight.
    """
    N = logits.shape[0]
    labels = np.asarray(labels)
    z = logits - logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_p = z - log_sum
    loss = -log_p[np.arange(N), labels].mean(dtype=np.float64)
    if l2:
        loss += 0.5 * l2 * sum(float(np.sum(np.square(w, dtype=np.float64))) for w in weights)
    grad = np.exp(log_p)
    grad[np.arange(N), labels] -= 1
    grad /= N
    return float(loss), grad.astype(logits.dtype, copy=False)


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
