"""Dense layer reference."""



__all__ = ["linear_ref"]

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
