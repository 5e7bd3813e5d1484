"""Convolutions and transposed convolutions: functional API, every algorithm, layers.

Oracles: the NumPy twins (loops and im2col, fastcnn._reference.conv), PyTorch, float64 central
finite differences, and the transpose identity."""

import contextlib

import numpy as np
import pytest

import fastcnn
from fastcnn import nn
from fastcnn._reference import conv as ref
from fastcnn.functional import conv as F

ALGOS = ["auto", "tiles", "lanes", "direct"]


def _algo(name):
    return contextlib.nullcontext() if name == "auto" else F._force_algo(name)


def _random_case(seed):
    """A random convolution: odd sizes, stride/padding/dilation/groups, non-square kernels."""
    rng = np.random.default_rng(seed)
    G = int(rng.choice([1, 1, 2, 3]))
    C = G * int(rng.integers(1, 4))
    Fo = G * int(rng.integers(1, 5))
    KH, KW = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    dh, dw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    if rng.random() < 0.25:
        stride, padding = (1, 1), str(rng.choice(["same", "valid"]))
    else:
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
        padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
    if isinstance(padding, tuple):
        ph, pw = padding
    else:  # 'valid' pads nothing; 'same' keeps the size, so any input fits
        ph, pw = (0, 0) if padding == "valid" else (dh * KH, dw * KW)
    H = max(dh * (KH - 1) + 1 - 2 * ph, 1) + int(rng.integers(0, 9))
    W = max(dw * (KW - 1) + 1 - 2 * pw, 1) + int(rng.integers(0, 9))
    N = int(rng.choice([0, 1, 2, 3]))
    return dict(N=N, C=C, H=H, W=W, F=Fo, KH=KH, KW=KW, stride=stride, padding=padding,
                dilation=(dh, dw), groups=G)


CASES = [_random_case(s) for s in range(30)]
FIXED = [  # shapes that stress the tiles' edges: tails, depthwise, 1x1, asymmetric 'same'
    dict(N=2, C=4, H=4, W=4, F=8, KH=2, KW=2, stride=(1, 1), padding="same", dilation=(1, 1),
         groups=1),
    dict(N=3, C=6, H=7, W=7, F=6, KH=3, KW=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
         groups=6),
    dict(N=2, C=5, H=9, W=9, F=7, KH=1, KW=1, stride=(2, 2), padding=(0, 0), dilation=(1, 1),
         groups=1),
    dict(N=9, C=3, H=11, W=10, F=17, KH=3, KW=2, stride=(2, 3), padding=(2, 1), dilation=(2, 1),
         groups=1),
    dict(N=1, C=16, H=5, W=5, F=12, KH=5, KW=5, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
         groups=1),
    dict(N=2, C=8, H=3, W=3, F=13, KH=3, KW=3, stride=(1, 1), padding=(4, 4), dilation=(1, 1),
         groups=1),
    # filters-on-lanes tiles: planes smaller than a tile, more than one (tail) filter/channel
    # vector, groups with dilation and asymmetric padding
    dict(N=2, C=20, H=2, W=2, F=18, KH=3, KW=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
         groups=1),
    dict(N=3, C=34, H=5, W=3, F=36, KH=2, KW=3, stride=(1, 1), padding=(0, 2), dilation=(2, 1),
         groups=2),
]


def _ids(cases):
    return [f"N{c['N']}C{c['C']}F{c['F']}_{c['H']}x{c['W']}_k{c['KH']}{c['KW']}_s{c['stride']}"
            f"_p{c['padding']}_d{c['dilation']}_g{c['groups']}" for c in cases]


def _arrays(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["N"], case["C"], case["H"], case["W"])).astype(dtype)
    w = rng.standard_normal((case["F"], case["C"] // case["groups"], case["KH"],
                             case["KW"])).astype(dtype)
    b = rng.standard_normal(case["F"]).astype(dtype)
    OH, OW = F.conv2d_output_size((case["H"], case["W"]), (case["KH"], case["KW"]),
                                  case["stride"], case["padding"], case["dilation"])
    g = rng.standard_normal((case["N"], case["F"], OH, OW)).astype(dtype)
    return x, w, b, g


def _args(case):
    return case["stride"], case["padding"], case["dilation"], case["groups"]


def _pad4(case):
    return F._padding4(case["padding"], (case["KH"], case["KW"]), case["dilation"],
                       case["stride"])


def _close(a, b, rtol):
    scale = max(np.abs(b).max(initial=0.0), 1e-30)
    assert a.shape == b.shape
    assert np.abs(a - b).max(initial=0.0) <= rtol * scale


# ---------------------------------------------------------------------------------------------
# Against PyTorch and the twins
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES + FIXED, ids=_ids(CASES + FIXED))
def test_conv2d_matches_torch_float64(case, algo):
    torch = pytest.importorskip("torch")
    x, w, b, g = _arrays(case, np.float64)
    s, p, d, G = _args(case)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, s, p, d, G)
    ty.backward(torch.tensor(g))
    with _algo(algo):
        y = F.conv2d(x, w, b, s, p, d, G)
        dx = F.conv2d_backward_input(g, w, x.shape[2:], s, p, d, G)
        dw, db = F.conv2d_backward_weight(x, g, w.shape[2:], s, p, d, G)
    _close(y, ty.detach().numpy(), 1e-10)
    _close(dx, tx.grad.numpy(), 1e-10)
    _close(dw, tw.grad.numpy(), 1e-10)
    _close(db, tb.grad.numpy(), 1e-10)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES[:12] + FIXED, ids=_ids(CASES[:12] + FIXED))
def test_conv2d_matches_twins_float32(case, algo):
    x, w, b, g = _arrays(case, np.float32, seed=1)
    s, p, d, G = _args(case)
    pad4 = _pad4(case)
    x64, w64, b64, g64 = (a.astype(np.float64) for a in (x, w, b, g))
    with _algo(algo):
        y = F.conv2d(x, w, b, s, p, d, G)
        dx = F.conv2d_backward_input(g, w, x.shape[2:], s, p, d, G)
        dw, db = F.conv2d_backward_weight(x, g, w.shape[2:], s, p, d, G)
    for twin in ("loops", "im2col"):
        fwd = getattr(ref, f"conv2d_general_{twin}")
        bwi = getattr(ref, f"conv2d_backward_input_general_{twin}")
        bww = getattr(ref, f"conv2d_backward_weight_general_{twin}")
        _close(y, fwd(x64, w64, b64, s, pad4, d, G), 1e-5)
        _close(dx, bwi(g64, w64, x.shape[2:], s, pad4, d, G), 1e-5)
        rdw, rdb = bww(x64, g64, w.shape[2:], s, pad4, d, G)
        _close(dw, rdw, 1e-5)
        _close(db, rdb, 1e-5)


def test_twins_agree_with_each_other():
    for case in CASES[:8]:
        x, w, b, g = _arrays(case, np.float64, seed=2)
        s, _, d, G = _args(case)
        pad4 = _pad4(case)
        _close(ref.conv2d_general_loops(x, w, b, s, pad4, d, G),
               ref.conv2d_general_im2col(x, w, b, s, pad4, d, G), 1e-12)


@pytest.mark.parametrize("shape", [(5, 16, 5, 5, 120, 5, 5), (3, 3, 4, 6, 7, 4, 6)],
                         ids=["lenet_c5", "odd"])
@pytest.mark.parametrize("algo", ["matmul", "tiles", "direct"])
def test_kernel_covering_the_input(shape, algo):
    N, C, H, W, Fo, KH, KW = shape
    case = dict(N=N, C=C, H=H, W=W, F=Fo, KH=KH, KW=KW, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups=1)
    x, w, b, g = _arrays(case, np.float64, seed=3)
    with F._force_algo(algo):
        y = F.conv2d(x, w, b)
        dx = F.conv2d_backward_input(g, w, (H, W))
        dw, db = F.conv2d_backward_weight(x, g, (KH, KW))
    _close(y, ref.conv2d_general_loops(x, w, b), 1e-12)
    _close(dx, ref.conv2d_backward_input_general_loops(g, w, (H, W)), 1e-12)
    _close(dw, ref.conv2d_backward_weight_general_loops(x, g, (KH, KW))[0], 1e-12)


def test_finite_differences_float64():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((6, 2, 3, 2))
    args = ((2, 1), (1, 2), (2, 1), 2)
    g = rng.standard_normal(F.conv2d(x, w, None, *args).shape)
    dx = F.conv2d_backward_input(g, w, x.shape[2:], *args)
    dw, _ = F.conv2d_backward_weight(x, g, w.shape[2:], *args)
    h = 1e-5
    for arr, grad in ((x, dx), (w, dw)):
        for idx in [tuple(rng.integers(0, n) for n in arr.shape) for _ in range(12)]:
            old = arr[idx]
            arr[idx] = old + h
            up = np.sum(F.conv2d(x, w, None, *args) * g)
            arr[idx] = old - h
            down = np.sum(F.conv2d(x, w, None, *args) * g)
            arr[idx] = old
            num = (up - down) / (2 * h)
            assert abs(num - grad[idx]) <= 1e-6 * max(1.0, abs(num))


def test_transpose_identity():
    """<conv(x), g> == <x, conv_transpose(g)> (the input gradient is the adjoint)."""
    for case in CASES[:10]:
        x, w, _, g = _arrays(case, np.float64, seed=5)
        if case["N"] == 0:
            continue
        s, p, d, G = _args(case)
        lhs = np.sum(F.conv2d(x, w, None, s, p, d, G) * g)
        rhs = np.sum(x * F.conv2d_backward_input(g, w, x.shape[2:], s, p, d, G))
        assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


# ---------------------------------------------------------------------------------------------
# Threads, NaN, layouts
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", FIXED[:4] + CASES[:3], ids=_ids(FIXED[:4] + CASES[:3]))
def test_bitwise_identical_for_1_2_3_threads(case, algo):
    _check_bitwise_for_1_2_3_threads(dict(case, N=max(case["N"], 11)), algo, seed=6)


def _check_bitwise_for_1_2_3_threads(case, algo, seed):
    """Forward, input gradient and weight gradient of ``case`` with ``algo``: the same bytes on
    1, 2 and 3 threads."""
    x, w, b, g = _arrays(case, np.float32, seed=seed)
    s, p, d, G = _args(case)
    results = []
    try:
        for k in (1, 2, 3):
            fastcnn.set_num_threads(k)
            with _algo(algo):
                results.append((F.conv2d(x, w, b, s, p, d, G),
                                F.conv2d_backward_input(g, w, x.shape[2:], s, p, d, G),
                                *F.conv2d_backward_weight(x, g, w.shape[2:], s, p, d, G)))
    finally:
        fastcnn.set_num_threads(None)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert a.tobytes() == b_.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo", ["auto", "lanes"])
def test_an_image_outputs_do_not_depend_on_its_batch(algo, dtype):
    """The filters-on-lanes tiles run over the batch's positions image after image (a tile may
    end one image and start the next, and the batch's last tile is shifted back): each image's
    forward and input gradient are bitwise those of the image alone, and the same on 1 and 3
    threads, for planes of fewer outputs than a tile, not a multiple of a tile, and chunked
    sums (C=60)."""
    rng = np.random.default_rng(21)
    shapes = [  # (N, C, H, W, F, k, padding, stride)
        (7, 3, 1, 1, 5, 1, 0, 1), (5, 4, 2, 2, 9, 3, 1, 1), (4, 6, 5, 1, 17, 1, 0, 1),
        (3, 5, 7, 7, 16, 3, 1, 1), (6, 60, 4, 4, 20, 3, 1, 1), (2, 8, 9, 7, 33, 3, 1, 2),
    ]
    try:
        for N, C, H, W, Fo, k, pad, st in shapes:
            x = rng.standard_normal((N, C, H, W)).astype(dtype)
            w = rng.standard_normal((Fo, C, k, k)).astype(dtype)
            b = rng.standard_normal(Fo).astype(dtype)
            OH, OW = F.conv2d_output_size((H, W), k, st, pad)
            g = rng.standard_normal((N, Fo, OH, OW)).astype(dtype)
            first = None
            for threads in (1, 3):
                fastcnn.set_num_threads(threads)
                with _algo(algo):
                    y = F.conv2d(x, w, b, st, pad)
                    dx = F.conv2d_backward_input(g, w, (H, W), st, pad)
                    # one thread against three (tasks of one filter block each at small batches)
                    first = first or (y.tobytes(), dx.tobytes())
                    assert (y.tobytes(), dx.tobytes()) == first
                    for n in range(N):
                        assert y[n].tobytes() == F.conv2d(x[n:n + 1], w, b, st, pad).tobytes()
                        assert dx[n].tobytes() == F.conv2d_backward_input(
                            g[n:n + 1], w, (H, W), st, pad).tobytes()
                ref_y = ref.conv2d_general_loops(x.astype(np.float64), w.astype(np.float64),
                                                 b.astype(np.float64), (st, st),
                                                 (pad, pad, pad, pad), (1, 1), 1)
                _close(y, ref_y, 1e-4 if dtype == np.float32 else 1e-12)
    finally:
        fastcnn.set_num_threads(None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_filters_on_lanes_tile_is_one_vector_when_one_holds_every_filter(dtype):
    """ftile_shape gives one vector of filters (fc_flanes6x1) for at most a vector's lanes of
    filters, two (fc_flanes6x2) above; both widths compute the same bytes as the twin's order
    (the parametrised cases above run both, with filter tails), and forward_lanes refuses any
    other width instead of reading past the packed weights."""
    K = fastcnn._kernels.conv
    NL = fastcnn._kernels.conv.ftile_shape(dtype == np.float64, 1)[1]
    assert NL == (64 if fastcnn._kernels.VARIANT == "avx512" else 32) // np.dtype(dtype).itemsize
    assert K.ftile_shape(dtype == np.float64, NL) == (6, NL)
    assert K.ftile_shape(dtype == np.float64, NL + 1) == (6, 2 * NL)
    rng = np.random.default_rng(5)
    for Fo in (1, NL - 1, NL, NL + 1):
        x = rng.standard_normal((3, 2, 5, 6)).astype(dtype)
        w = rng.standard_normal((Fo, 2, 3, 3)).astype(dtype)
        b = rng.standard_normal(Fo).astype(dtype)
        with F._force_algo("lanes"):
            y = F.conv2d(x, w, b, 1, 1)
        with F._force_algo("tiles"):
            assert y.tobytes() == F.conv2d(x, w, b, 1, 1).tobytes()
    y = np.empty((1, 2, 3, 3), dtype)
    with pytest.raises(ValueError, match="NF must be"):
        K.forward_lanes(np.zeros(64, dtype), np.zeros(64, dtype), np.zeros(8, dtype),
                        np.zeros(1, np.intp), y, 1, 1, 1, 3, 3, 1, NL + 1, False, 1)


def test_lanes_or_tiles_by_weighted_products():
    """The filters-on-lanes tiles are chosen when their products, weighted by their speed,
    are fewer: LeNet's C3 forward (16 filters) runs on them in every build; its C1 forward (6
    filters) and C3 input gradient (6 channels) on the positions-on-lanes tiles, also where a
    one-vector filter tile would hold them (32-byte vectors: no speed edge for it there)."""
    def algo(kind, C, Fo, H, k):
        g = F._geometry((64, C, H, H), (Fo, C, k, k), 1, 0, 1, 1)
        return F._algo(g, kind, np.float32)
    assert algo("forward", 6, 16, 14, 5) == "lanes"
    assert algo("forward", 1, 6, 32, 5) == "tiles"
    assert algo("input", 6, 16, 14, 5) == "tiles"
    assert algo("forward", 32, 64, 9, 3) == "lanes"


@pytest.mark.parametrize("module", ["conv", "pool"])
def test_small_loops_get_fewer_threads_and_the_same_bytes(module):
    """A parallel loop gets no more threads than it has work for (``_threads.pxi``: batch-1
    layers of LeNet-5 run on one thread), and the results are the same bytes as with every loop
    on every thread (the grain the other tests run with)."""
    K = getattr(fastcnn._kernels, module)
    old = K.set_grain(65536)
    try:
        assert K.threads_for(0, 4) == 1
        assert K.threads_for(65536 * 2 - 1, 2) == 1
        assert K.threads_for(65536 * 2, 2) == 2
        assert K.threads_for(65536 * 3, 8) == 3
        assert K.threads_for(10 ** 12, 3) == 3
        with pytest.raises(ValueError, match="grain"):
            K.set_grain(0)
        x = np.random.default_rng(4).standard_normal((1, 16, 14, 14)).astype(np.float32)
        w = np.random.default_rng(5).standard_normal((32, 16, 3, 3)).astype(np.float32)
        results = []
        for grain in (65536, 1):
            K.set_grain(grain)
            fastcnn.set_num_threads(2)
            results.append((F.conv2d(x, w, None, 1, 1).tobytes(),
                            fastcnn.functional.max_pool2d(x, 2)[0].tobytes()))
        assert results[0] == results[1]
    finally:
        K.set_grain(old)
        fastcnn.set_num_threads(None)


def test_nan_weight_reaches_only_positions_it_touches():
    """A 1x1 NaN kernel at stride 2 reads only even positions: the others get gradient 0."""
    w = np.full((1, 1, 1, 1), np.nan)
    g = np.ones((1, 1, 3, 3))
    dx = F.conv2d_backward_input(g, w, (6, 6), stride=2)
    assert np.isnan(dx[0, 0, ::2, ::2]).all()
    mask = np.ones((6, 6), bool)
    mask[::2, ::2] = False
    assert (dx[0, 0][mask] == 0).all()


def test_inf_weight_and_zero_padding_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    w = rng.standard_normal((2, 3, 3, 3))
    w[0, 1, 0, 0] = np.inf
    w[1, 2, 2, 1] = np.nan
    g = rng.standard_normal((2, 2, 4, 5))
    dx = F.conv2d_backward_input(g, w, (8, 9), stride=2, padding=1)
    tx = torch.zeros((2, 3, 8, 9), dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(tx, torch.tensor(w), None, 2, 1).backward(torch.tensor(g))
    t = tx.grad.numpy()
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(t))
    np.testing.assert_allclose(np.nan_to_num(dx), np.nan_to_num(t), rtol=1e-10, atol=1e-12)


def test_non_contiguous_and_read_only_inputs():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 9, 11))[:, :, ::2, ::2]
    w = np.asfortranarray(rng.standard_normal((6, 2, 3, 3)))
    w.setflags(write=False)
    y = F.conv2d(x, w, None, 1, 1, 1, 2)
    _close(y, ref.conv2d_general_loops(np.ascontiguousarray(x), np.ascontiguousarray(w), None,
                                       1, (1, 1, 1, 1), 1, 2), 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layout_passes_match_numpy_on_1_2_3_threads(dtype):
    """The weight gradient's layout passes against NumPy, on shapes with every remainder of the
    register transposes (filters and positions not multiples of 8 / 4) and more planes than
    threads: to_pixels_major, bias_grad, to_wide_rows, pad_split (stride 1 and 2)."""
    K = fastcnn._kernels.conv
    rng = np.random.default_rng(3)
    try:
        for threads in (1, 2, 3):
            for N, Fo, H, W in [(5, 13, 7, 5), (3, 16, 4, 4), (2, 9, 11, 3), (1, 3, 1, 1)]:
                g = rng.standard_normal((N, Fo, H, W)).astype(dtype)
                out = np.full(g.size + 8, -1, dtype)
                K.to_pixels_major(g, out, threads)
                np.testing.assert_array_equal(out[:g.size],
                                              g.reshape(N, Fo, -1).transpose(0, 2, 1).ravel())
                assert (out[g.size:] == -1).all()
                db = np.full(Fo, np.nan, dtype)
                K.bias_grad(g, db, threads)
                expected = np.zeros(Fo, dtype)
                for n in range(N):  # the documented order: images one after another
                    expected = (expected + g[n].reshape(Fo, -1).sum(1, dtype=dtype)).astype(dtype)
                rtol = 1e-5 if dtype == np.float32 else 1e-12
                np.testing.assert_allclose(db, expected, rtol=rtol)
                WPh = W + 2
                Pg = (H - 1) * WPh + W + 3
                wide = np.full(N * Fo * Pg, np.nan, dtype)
                K.to_wide_rows(g, wide, WPh, Pg, threads)
                expected = np.zeros((N, Fo, H, WPh), dtype)
                expected[..., :W] = g
                np.testing.assert_array_equal(wide.reshape(N, Fo, Pg)[..., :(H - 1) * WPh + W],
                                              expected.reshape(N, Fo, -1)[..., :(H - 1) * WPh + W])
                assert (wide.reshape(N, Fo, Pg)[..., (H - 1) * WPh + W:] == 0).all()
                for (top, left, sh, sw) in [(1, 2, 1, 1), (2, 1, 2, 2), (0, 3, 1, 3), (3, 0, 2, 1),
                                          (1, 0, 2, 2), (0, 2, 1, 2), (0, 3, 3, 2)]:
                    HPh, WPh2 = -(-(H + 2 * top) // sh), -(-(W + 2 * left) // sw)
                    split = np.full(N * Fo * sh * sw * HPh * WPh2, np.nan, dtype)
                    K.pad_split(g, split, top, left, sh, sw, HPh, WPh2, threads)
                    padded = np.zeros((N, Fo, HPh * sh, WPh2 * sw), dtype)
                    padded[:, :, top:top + H, left:left + W] = g[:, :, :HPh * sh - top,
                                                                 :WPh2 * sw - left]
                    phases = padded.reshape(N, Fo, HPh, sh, WPh2, sw).transpose(0, 1, 3, 5, 2, 4)
                    np.testing.assert_array_equal(split, phases.ravel())
    finally:
        fastcnn.set_num_threads(None)


# ---------------------------------------------------------------------------------------------
# Transposed convolution
# ---------------------------------------------------------------------------------------------

TRANSPOSED = [  # N, Cin, H, W, Cout, KH, KW, stride, padding, output_padding, groups, dilation
    (2, 4, 5, 6, 6, 3, 3, (2, 2), (1, 1), (1, 0), 2, (1, 1)),
    (1, 3, 4, 4, 2, 2, 3, (1, 2), (0, 1), (0, 1), 1, (2, 1)),
    (3, 2, 3, 5, 4, 4, 4, (3, 1), (2, 0), (2, 0), 2, (1, 1)),
    (2, 3, 4, 3, 3, 3, 2, (1, 1), (0, 0), (1, 0), 1, (2, 1)),  # output_padding < dilation
    (0, 2, 4, 4, 2, 3, 3, (1, 1), (1, 1), (0, 0), 1, (1, 1)),
]


@pytest.mark.parametrize("case", TRANSPOSED, ids=[str(i) for i in range(len(TRANSPOSED))])
def test_conv_transpose2d_matches_torch(case):
    torch = pytest.importorskip("torch")
    N, Cin, H, W, Cout, KH, KW, s, p, op, G, d = case
    rng = np.random.default_rng(9)
    x = rng.standard_normal((N, Cin, H, W))
    w = rng.standard_normal((Cin, Cout // G, KH, KW))
    b = rng.standard_normal(Cout)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, s, p, op, G, d)
    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(g))
    y = F.conv_transpose2d(x, w, b, s, p, op, G, d)
    _close(y, ty.detach().numpy(), 1e-10)
    dx = F.conv_transpose2d_backward_input(g, w, s, p, op, G, d, input_size=(H, W))
    _close(dx, tx.grad.numpy(), 1e-10)
    dw, db = F.conv_transpose2d_backward_weight(x, g, (KH, KW), s, p, op, G, d)
    _close(dw, tw.grad.numpy(), 1e-10)
    _close(db, tb.grad.numpy(), 1e-10)
    assert y.shape[2:] == F.conv_transpose2d_output_size((H, W), (KH, KW), s, p, op, d)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

X = np.zeros((1, 4, 8, 8))
W4 = np.zeros((6, 2, 3, 3))


@pytest.mark.parametrize(("call", "exc", "match"), [
    (lambda: F.conv2d(X, W4, groups=3), ValueError, "groups=3 does not divide"),
    (lambda: F.conv2d(X, np.zeros((6, 3, 3, 3))), ValueError, "expects 3 input channels"),
    (lambda: F.conv2d(X, W4, groups=2, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda: F.conv2d(X, W4, groups=2, dilation=5), ValueError, "larger than the padded input"),
    (lambda: F.conv2d(X, W4, groups=2, stride=2 ** 63), ValueError, "stride must be < 2"),
    (lambda: F.conv2d(np.zeros((0, 4, 8, 8)), W4, groups=2, padding=2 ** 20), ValueError,
     "too large"),
    (lambda: F.conv2d(X, W4, groups=2, stride=2, padding="same"), ValueError, "'same'"),
    (lambda: F.conv2d(X, W4, groups=2, padding="full"), ValueError, "'valid' or 'same'"),
    (lambda: F.conv2d(X, W4, groups=0), ValueError, "groups must be >= 1"),
    (lambda: F.conv2d(X, np.zeros((6, 2, 3))), ValueError, "weight must be 4-D"),
    (lambda: F.conv2d(X, W4, np.zeros(5), groups=2), ValueError, r"bias must have shape \(6,\)"),
    (lambda: F.conv2d_backward_input(np.zeros((1, 6, 5, 5)), W4, (8, 8), groups=2), ValueError,
     "grad_y has shape"),
    (lambda: F.conv_transpose2d(X, np.zeros((4, 2, 3, 3)), output_padding=1), ValueError,
     "output_padding"),
    (lambda: F.conv_transpose2d(X, np.zeros((4, 2, 3, 3)), padding="same"), ValueError,
     "int or a pair"),
    (lambda: nn.Conv2d(4, 6, 3, groups=4), ValueError, "groups=4 must divide"),
    (lambda: nn.Conv2d(4, 6, 3, padding_mode="mirror"), ValueError, "padding_mode"),
    (lambda: nn.ConvTranspose2d(4, 6, 3, padding_mode="reflect"), ValueError, "'zeros'"),
])
def test_bad_arguments_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# Layers against torch.nn
# ---------------------------------------------------------------------------------------------

LAYERS = [  # in, out, kernel, kwargs
    (4, 6, 3, dict(stride=2, padding=1, groups=2)),
    (3, 5, (2, 3), dict(padding="same", dilation=(2, 1))),
    (6, 6, 3, dict(padding=1, groups=6, bias=False)),
    (3, 4, 3, dict(padding=(1, 2), padding_mode="reflect")),
    (3, 4, 3, dict(padding=2, padding_mode="replicate", stride=2)),
    (3, 4, (3, 2), dict(padding="same", padding_mode="circular")),
]


@pytest.mark.parametrize("case", LAYERS, ids=[str(i) for i in range(len(LAYERS))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_layer_matches_torch(case, dtype):
    torch = pytest.importorskip("torch")
    cin, cout, k, kw = case
    layer = nn.Conv2d(cin, cout, k, **kw, dtype=dtype, seed=0)
    if "bias" in layer.params:
        layer.params["bias"][...] = np.arange(cout) * 0.1
    tl = torch.nn.Conv2d(cin, cout, k, **kw, dtype=torch.float64)
    tl.load_state_dict({k_: torch.tensor(v, dtype=torch.float64)
                        for k_, v in layer.state_dict().items()})
    x = np.random.default_rng(10).standard_normal((3, cin, 9, 10)).astype(dtype)
    y = layer.forward(x)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ty = tl(tx)
    g = np.random.default_rng(11).standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.tensor(g, dtype=torch.float64))
    dx = layer.backward(g)
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    _close(y, ty.detach().numpy(), rtol)
    _close(dx, tx.grad.numpy(), rtol)
    _close(layer.grads["weight"], tl.weight.grad.numpy(), rtol)
    if "bias" in layer.params:
        _close(layer.grads["bias"], tl.bias.grad.numpy(), rtol)
    layer.compute_input_grad = False
    layer.forward(x)
    assert layer.backward(g) is None


@pytest.mark.parametrize("kw", [dict(stride=2, padding=1, output_padding=1, groups=2),
                                dict(dilation=2, padding=(1, 0), bias=False)],
                         ids=["strided", "dilated"])
def test_conv_transpose2d_layer_matches_torch(kw):
    torch = pytest.importorskip("torch")
    layer = nn.ConvTranspose2d(4, 6, 3, **kw, dtype=np.float64, seed=1)
    tl = torch.nn.ConvTranspose2d(4, 6, 3, **kw, dtype=torch.float64)
    tl.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    x = np.random.default_rng(12).standard_normal((2, 4, 5, 6))
    tx = torch.tensor(x, requires_grad=True)
    ty = tl(tx)
    y = layer.forward(x)
    g = np.random.default_rng(13).standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(g))
    dx = layer.backward(g)
    _close(y, ty.detach().numpy(), 1e-10)
    _close(dx, tx.grad.numpy(), 1e-10)
    _close(layer.grads["weight"], tl.weight.grad.numpy(), 1e-10)
    assert layer.output_shape(x.shape) == tuple(ty.shape)


def test_layers_accept_batch_zero():
    conv = nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64)
    y = conv.forward(np.zeros((0, 2, 5, 5)))
    assert y.shape == (0, 3, 5, 5)
    assert conv.backward(np.zeros_like(y)).shape == (0, 2, 5, 5)
    assert (conv.grads["weight"] == 0).all()


@pytest.mark.parametrize("algo", ALGOS + ["dw"])
def test_layer_plans_follow_shapes_threads_and_weights(algo):
    """A layer keeps one plan per geometry (offsets, buffers, kernels made once): alternating
    input sizes, thread counts and weights must give, call after call, what a fresh
    functional call gives, bitwise (a plan's offsets or buffers clobbered by another's, or a
    stale packed weight, would show here)."""
    rng = np.random.default_rng(31)
    groups = 4 if algo == "dw" else 2
    try:
        for dtype in (np.float32, np.float64):
            conv = nn.Conv2d(4, 4 if algo == "dw" else 6, 3, padding=1, groups=groups, seed=5,
                             dtype=dtype)
            calls = [(9, 1), (9, 2), (9, 1), (6, 2), (6, 2), (9, 1)]  # (input size, threads)
            with _algo(algo):
                for step, (hw, threads) in enumerate(calls):
                    fastcnn.set_num_threads(threads)
                    conv.params["weight"][...] = rng.standard_normal(conv.params["weight"].shape)
                    if step == 2:
                        conv.params["weight"][0, 0, 1, 1] = np.nan  # the input gradient's fallback
                    x = rng.standard_normal((2, 4, hw, hw)).astype(dtype)
                    y = conv.forward(x)
                    dy = rng.standard_normal(y.shape).astype(dtype)
                    dx = conv.backward(dy)
                    w, b = conv.params["weight"], conv.params["bias"]
                    assert y.tobytes() == F.conv2d(x, w, b, 1, 1, 1, groups).tobytes()
                    ref_dx = F.conv2d_backward_input(dy, w, (hw, hw), 1, 1, 1, groups)
                    assert dx.tobytes() == ref_dx.tobytes()
    finally:
        fastcnn.set_num_threads(None)


def test_sequential_fusion_is_bitwise_equal_to_the_layers():
    layers = [nn.Conv2d(3, 8, 3, padding="same", groups=1, seed=2), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(8, 8, 3, padding=1, groups=8, seed=3), nn.ReLU()]
    seq = nn.Sequential(*layers)
    assert [k for _, _, k in seq.fusion_plan()] == ["ConvReLUMaxPool", "ConvReLU"]
    x = np.random.default_rng(14).standard_normal((4, 3, 10, 10)).astype(np.float32)
    y = seq.forward(x)
    g = np.random.default_rng(15).standard_normal(y.shape).astype(np.float32)
    dx = seq.backward(g)
    grads = [layer.grads["weight"].copy() for layer in (layers[0], layers[3])]
    out = x
    for layer in layers:
        out = layer.forward(out)
    assert out.tobytes() == y.tobytes()
    back = g
    for layer in reversed(layers):
        back = layer.backward(back)
    assert back.tobytes() == dx.tobytes()
    for layer, gw in zip((layers[0], layers[3]), grads):
        assert layer.grads["weight"].tobytes() == gw.tobytes()


# ---------------------------------------------------------------------------------------------
# Depthwise kernels (dwconv.pyx) and the positions-on-lanes weight gradient ("rows")
# ---------------------------------------------------------------------------------------------

def _dw_case(seed):
    """A random depthwise convolution (groups == C, channel multiplier 1-3)."""
    rng = np.random.default_rng(100 + seed)
    C = int(rng.integers(2, 6))
    KH, KW = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    dh, dw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
    if rng.random() < 0.4:
        stride = (1, 1)
    padding = (int(rng.integers(0, 4)), int(rng.integers(0, 3)))
    H = max(dh * (KH - 1) + 1 - 2 * padding[0], 1) + int(rng.integers(0, 12))
    W = max(dw * (KW - 1) + 1 - 2 * padding[1], 1) + int(rng.integers(0, 12))
    return dict(N=int(rng.choice([0, 1, 2, 3])), C=C, H=H, W=W, F=C * int(rng.integers(1, 4)),
                KH=KH, KW=KW, stride=stride, padding=padding, dilation=(dh, dw), groups=C)


DW_CASES = [_dw_case(s) for s in range(16)] + [
    dict(N=3, C=32, H=14, W=14, F=32, KH=3, KW=3, stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), groups=32),  # the suite's shape, smaller batch
    dict(N=2, C=3, H=9, W=17, F=6, KH=3, KW=3, stride=(1, 1), padding="same", dilation=(2, 3),
         groups=3),
    dict(N=1, C=2, H=5, W=4, F=2, KH=1, KW=1, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
         groups=2),
    dict(N=2, C=4, H=13, W=11, F=12, KH=5, KW=3, stride=(2, 2), padding=(2, 1),
         dilation=(1, 1), groups=4),
    dict(N=2, C=2, H=7, W=7, F=2, KH=3, KW=3, stride=(1, 1), padding=(5, 0), dilation=(1, 1),
         groups=2),  # padding wider than the kernel: whole rows of padding only
    dict(N=0, C=3, H=6, W=6, F=3, KH=3, KW=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
         groups=3),
]


def _geom(case):
    return F._geometry((case["N"], case["C"], case["H"], case["W"]),
                       (case["F"], case["C"] // case["groups"], case["KH"], case["KW"]),
                       *_args(case))


@pytest.mark.parametrize("algo", ["dw", "auto"])
@pytest.mark.parametrize("case", DW_CASES, ids=_ids(DW_CASES))
def test_depthwise_matches_torch_float64(case, algo):
    torch = pytest.importorskip("torch")
    g = _geom(case)
    assert F._dw_ok(g, "forward") and F._dw_ok(g, "weight")  # the cases run the dw kernels
    x, w, b, gy = _arrays(case, np.float64, seed=20)
    s, p, d, G = _args(case)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, s, p, d, G)
    ty.backward(torch.tensor(gy))
    with _algo(algo):
        y = F.conv2d(x, w, b, s, p, d, G)
        dx = F.conv2d_backward_input(gy, w, x.shape[2:], s, p, d, G)
        dw, db = F.conv2d_backward_weight(x, gy, w.shape[2:], s, p, d, G)
    _close(y, ty.detach().numpy(), 1e-10)
    _close(dx, tx.grad.numpy(), 1e-10)
    _close(dw, tw.grad.numpy(), 1e-10)
    _close(db, tb.grad.numpy(), 1e-10)


@pytest.mark.parametrize("algo", ["dw", "rows"])
@pytest.mark.parametrize("case", DW_CASES[:10] + FIXED + CASES[:10],
                         ids=_ids(DW_CASES[:10] + FIXED + CASES[:10]))
def test_dw_and_rows_float32_match_the_loop_twin(case, algo):
    x, w, b, gy = _arrays(case, np.float32, seed=21)
    s, p, d, G = _args(case)
    pad4 = _pad4(case)
    x64, w64, b64, g64 = (a.astype(np.float64) for a in (x, w, b, gy))
    with F._force_algo(algo):
        y = F.conv2d(x, w, b, s, p, d, G)
        dx = F.conv2d_backward_input(gy, w, x.shape[2:], s, p, d, G)
        dw, db = F.conv2d_backward_weight(x, gy, w.shape[2:], s, p, d, G)
    _close(y, ref.conv2d_general_loops(x64, w64, b64, s, pad4, d, G), 1e-5)
    _close(dx, ref.conv2d_backward_input_general_loops(g64, w64, x.shape[2:], s, pad4, d, G),
           1e-5)
    rdw, rdb = ref.conv2d_backward_weight_general_loops(x64, g64, w.shape[2:], s, pad4, d, G)
    _close(dw, rdw, 1e-5)
    _close(db, rdb, 1e-5)


@pytest.mark.parametrize("case", CASES + FIXED, ids=_ids(CASES + FIXED))
def test_rows_weight_gradient_matches_torch_float64(case):
    torch = pytest.importorskip("torch")
    x, w, b, gy = _arrays(case, np.float64, seed=22)
    s, p, d, G = _args(case)
    tx, tw = torch.tensor(x), torch.tensor(w, requires_grad=True)
    torch.nn.functional.conv2d(tx, tw, None, s, p, d, G).backward(torch.tensor(gy))
    with F._force_algo("rows"):
        dw, _ = F.conv2d_backward_weight(x, gy, w.shape[2:], s, p, d, G)
    _close(dw, tw.grad.numpy(), 1e-10)


@pytest.mark.parametrize("algo", ["dw", "rows", "auto"])
@pytest.mark.parametrize("case", DW_CASES[16:20] + FIXED[:4],
                         ids=_ids(DW_CASES[16:20] + FIXED[:4]))
def test_dw_and_rows_bitwise_identical_for_1_2_3_threads(case, algo):
    # N = 11: several images per chunk and per thread
    _check_bitwise_for_1_2_3_threads(dict(case, N=11), algo, seed=23)


@pytest.mark.parametrize("algo", ["rows", "tiles"])
def test_weight_chunks_add_in_order(algo, monkeypatch):
    """A batch cut into many chunks (2 images each, the last one short) equals the definition;
    by default this small batch is one chunk."""
    case = dict(N=13, C=3, H=16, W=16, F=5, KH=3, KW=3, stride=(1, 1), padding=(1, 1),
                dilation=(1, 1), groups=1)
    x, w, _, gy = _arrays(case, np.float64, seed=24)
    g = _geom(case)
    HPh, WPh, P, _, _ = F._rows_geometry(g)
    assert F._rows_chunk(g, P, HPh, WPh, 8) == 13 and F._tiles_chunk(g, 8) == 13
    monkeypatch.setattr(F, f"_{algo}_chunk", lambda *a: 2)
    with F._force_algo(algo):
        dw, _ = F.conv2d_backward_weight(x, gy, (3, 3), 1, 1)
    _close(dw, ref.conv2d_backward_weight_general_loops(x, gy, (3, 3), 1, (1, 1, 1, 1))[0],
           1e-12)


def test_weight_chunks_are_even_in_number_and_size():
    """Two threads take the chunks' tasks in static halves: several chunks come in an even
    number of at most cap images, no two differing by more than the batch forces."""
    assert F._even_chunks(64, 40) == 32  # was 40 + 24
    assert F._even_chunks(64, 10) == 8  # 7 chunks -> 8
    assert F._even_chunks(64, 64) == 64 and F._even_chunks(5, 8) == 5 and F._even_chunks(1, 1) == 1
    for N in range(1, 257):
        for cap in (1, 2, 3, 7, 8, 13, 40, 64, 500):
            nb = F._even_chunks(N, cap)
            n = -(-N // nb)
            assert 1 <= nb <= cap and (n == 1) == (N <= cap), (N, cap)
            assert n * nb - N < nb, (N, cap)  # only the last chunk is short
            if N % 8 == 0 and n > 1:
                assert n % 2 == 0, (N, cap)


@pytest.mark.parametrize("groups", [1, 4], ids=["rows", "dw"])
def test_weight_gradient_with_inf_or_nan_input_is_exact(groups):
    """The dw, rows and tiles kernels multiply padding / gap zeros with real values; when an inf
    or NaN in x or dy turns such a product into NaN (seen in the small result), the call is
    done again by the direct definition (only real products)."""
    rng = np.random.default_rng(25)
    x = rng.standard_normal((2, 2 if groups == 1 else 4, 12, 12))
    gy = rng.standard_normal((2, 4, 12, 12))
    g = F._geometry(x.shape, (4, x.shape[1] // groups, 3, 3), 1, 1, 1, groups)
    algo = "dw" if groups == 4 else "rows"
    assert F._weight_algo(g) == algo
    finite, _ = F.conv2d_backward_weight(x, gy, 3, 1, 1, 1, groups)
    assert not F._needs_exact_weight(g, algo, finite)
    x[0, 1, 0, 11] = np.inf  # read by some taps only
    gy[1, 2, 11, 0] = np.nan  # its left taps read padding
    with F._force_algo(algo):
        fast, _ = F.conv2d_backward_weight(x, gy, 3, 1, 1, 1, groups)
    assert F._needs_exact_weight(g, algo, fast)
    dw, _ = F.conv2d_backward_weight(x, gy, 3, 1, 1, 1, groups)
    with F._force_algo("direct"):
        ref_dw, _ = F.conv2d_backward_weight(x, gy, 3, 1, 1, 1, groups)
    assert np.isnan(ref_dw).any() and not np.isnan(ref_dw).all()
    assert dw.tobytes() == ref_dw.tobytes()


def test_depthwise_inf_weight_takes_the_general_kernels():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(26)
    w = rng.standard_normal((3, 1, 3, 3))
    w[1, 0, 0, 0] = np.inf
    g = F._geometry((2, 3, 6, 6), w.shape, 1, 1, 1, 3)
    plan = F._plan(g, "input", w.dtype, None)
    assert plan.algo == "dw" and plan.algo_for(w) == "direct"
    gy = rng.standard_normal((2, 3, 6, 6))
    dx = F.conv2d_backward_input(gy, w, (6, 6), 1, 1, 1, 3)
    tx = torch.zeros((2, 3, 6, 6), dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(tx, torch.tensor(w), None, 1, 1, 1, 3).backward(torch.tensor(gy))
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(tx.grad.numpy()))


def test_depthwise_routing():
    """Shapes the dw kernels leave to the general ones: one channel, strided input gradient,
    planes larger than their buffer, kernels with more than DWK taps."""
    buf, max_taps, _ = fastcnn._kernels.dwconv.limits()
    assert not F._dw_ok(F._geometry((1, 1, 8, 8), (4, 1, 3, 3), 1, 1, 1, 1), "forward")
    strided = F._geometry((1, 4, 8, 8), (4, 1, 3, 3), 2, 1, 1, 4)
    assert F._dw_ok(strided, "forward") and not F._dw_ok(strided, "input")
    side = int(buf ** 0.5) + 1
    assert not F._dw_ok(F._geometry((1, 2, side, side), (2, 1, 3, 3), 1, 1, 1, 2), "weight")
    k = int(max_taps ** 0.5) + 1
    assert not F._dw_ok(F._geometry((1, 2, 20, 20), (2, 1, k, k), 1, 0, 1, 2), "forward")
    # a plane too large for the buffer still gives the right answer (general kernels)
    x = np.random.default_rng(27).standard_normal((1, 2, side, side))
    w = np.random.default_rng(28).standard_normal((2, 1, 3, 3))
    with F._force_algo("dw"):
        y = F.conv2d(x, w, None, 1, 1, 1, 2)
    _close(y, ref.conv2d_general_loops(x, w, None, 1, (1, 1, 1, 1), 1, 2), 1e-12)


# ---------------------------------------------------------------------------------------------
# Bound calls (a layer's repeated eval-mode forward with its kernel arguments fixed)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo", ["auto", "tiles", "lanes", "matmul"])
def test_bound_conv_forward_is_bitwise_the_planned_call(algo, dtype, set_threads):
    """Conv2d's bound forward (the kernels' Bound* calls) against the functional convolution
    with the same algorithm, on the random cases (batch >= 1), 1 and 2 threads, with ReLU, and
    after the weight and bias change in place (the packed weights must follow)."""
    for i, case in enumerate(CASES[:16] + FIXED):
        if case["N"] == 0:
            continue
        x, w, b, _ = _arrays(case, dtype, seed=i)
        s, p, d, G = _args(case)
        layer = nn.Conv2d(case["C"], case["F"], (case["KH"], case["KW"]), s, p, d, G,
                          dtype=dtype).eval()
        layer.params["weight"][...], layer.params["bias"][...] = w, b
        set_threads(1 + i % 2)
        with _algo(algo):
            for relu in (False, True):
                f = layer._bind(x.shape, relu=relu)
                for step in range(3):
                    y = f(x)
                    want = F.conv2d(x, layer.params["weight"], layer.params["bias"], s, p, d, G)
                    if relu:
                        want = np.maximum(want, 0)
                    assert y.tobytes() == want.tobytes(), (i, relu, step)
                    layer.params["weight"][..., 0] *= -1.5  # the next call sees the change
                    layer.params["bias"][:1] += 1.0


def test_bound_kernel_calls_reject_an_input_they_were_not_bound_for():
    """A bound call checks its input's size, dtype and layout before entering the kernel."""
    from fastcnn.functional.activation import _bind_unary
    from fastcnn.functional.linear import _bind_linear
    from fastcnn.functional.pooling import _bind_max_pool2d_values

    y = np.empty((2, 3, 4, 4), np.float32)
    pool = _bind_max_pool2d_values((2, 3, 8, 8), y, (2, 2), (2, 2), (0, 0))
    relu = _bind_unary(0, y)
    gemm = _bind_linear(np.ones((5, 6), np.float32), np.ones(5, np.float32),
                        np.empty((2, 5), np.float32))
    good = np.ones((2, 3, 8, 8), np.float32)
    pool(good)
    for bad in (np.ones((2, 3, 8, 7), np.float32), good.astype(np.float64),
                np.ones((2, 3, 8, 16), np.float32)[..., ::2], [1.0, 2.0]):
        with pytest.raises((ValueError, TypeError)):
            pool(bad)
    relu(y, 0.0)
    with pytest.raises(ValueError, match="float32"):
        relu(y.astype(np.float64), 0.0)
    gemm(np.ones((2, 6), np.float32))
    with pytest.raises(ValueError, match="48 bytes"):
        gemm(np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match="bound dense product"):
        _bind_linear(np.ones((4, 6), np.float32), None, np.empty((2, 5), np.float32))
    assert _bind_max_pool2d_values((2, 3, 8, 8), y, (3, 3), (2, 2), (0, 0)) is None
