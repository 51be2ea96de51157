"""3-bit group-wise weight formats and the algorithms that choose their parameters (backend-neutral, torch).

A quantized weight ``W[..., N, K]`` is stored as codes ``q[..., N, G, gs]`` (ints in ``[0, 7]``, ``G = K / gs``),
a per-group scale ``s[..., N, G, 1]`` and, depending on the format, a zero point ``z[..., N, G, 1]``:

=============  ===========================  =============================================================
format         levels ``L[q]``               dequantization
=============  ===========================  =============================================================
``int3_sym``   ``q - 4``  (-4..3)            ``s * (q - 4)``           (scalar zero point 4, as NNCF INT3_SYM)
``int3_asym``  ``q``      (0..7)             ``s * (q - z)``,  ``z`` integer in [0, 7] per group
``nf3``        8-entry codebook in [-1, 1]   ``s * (C[q] - z)``,  ``z`` = 0, or the ICQ offset ``-tau/s``
=============  ===========================  =============================================================

Everything is vectorised over leading dims (experts, rows, groups). ``importance`` (broadcastable to the
grouped weight) weights the squared error: ones for data-free runs, the diagonal of the input Hessian
``E[x_k^2]`` for activation-aware runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FORMATS = ("int3_sym", "int3_asym", "nf3")
#: Formats the engine can assign to a weight: the 3-bit modes plus a 4-bit asymmetric one for dense
#: (always-active) weights of MoE models.
ALL_FORMATS = FORMATS + ("int4_asym",)
_ASYM_QMAX = {"int3_asym": 7, "int4_asym": 15}


def _lloyd_max_gaussian(levels: int = 8, iters: int = 200) -> np.ndarray:
    """Lloyd-Max quantizer levels for N(0, 1) (computed with exact Gaussian integrals)."""
    from math import erf, exp, pi, sqrt

    def pdf(x):
        return exp(-x * x / 2) / sqrt(2 * pi)

    def cdf(x):
        return 0.5 * (1 + erf(x / sqrt(2)))

    c = np.linspace(-2.0, 2.0, levels)
    for _ in range(iters):
        edges = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]])
        new = []
        for a, b in zip(edges[:-1], edges[1:]):
            pa = 0.0 if np.isinf(a) else pdf(a)
            pb = 0.0 if np.isinf(b) else pdf(b)
            mass = (1.0 if np.isinf(b) else cdf(b)) - (0.0 if np.isinf(a) else cdf(a))
            new.append((pa - pb) / mass)
        c = np.asarray(new)
    return c


#: NF3 codebook: the 8 Lloyd-Max levels of N(0,1) normalised to [-1, 1] (symmetric, no exact zero).
NF3_CODEBOOK = (_lloyd_max_gaussian() / _lloyd_max_gaussian().max()).astype(np.float32)


@dataclass(frozen=True)
class FormatSpec:
    name: str
    levels: np.ndarray  # value of each code before scaling, sorted ascending
    asym: bool  # per-group zero point

    @property
    def lmax(self) -> float:
        return float(np.abs(self.levels).max())


def format_spec(fmt: str) -> FormatSpec:
    if fmt == "int3_sym":
        return FormatSpec(fmt, np.arange(-4, 4, dtype=np.float32), False)
    if fmt == "int3_asym":
        return FormatSpec(fmt, np.arange(0, 8, dtype=np.float32), True)
    if fmt == "int4_asym":
        return FormatSpec(fmt, np.arange(0, 16, dtype=np.float32), True)
    if fmt == "nf3":
        return FormatSpec(fmt, NF3_CODEBOOK.copy(), False)
    raise ValueError(f"Unknown 3-bit format {fmt!r}; expected one of {FORMATS} (or 'int4_asym' for dense weights)")


@dataclass
class QuantizedWeight:
    """Codes ``[..., N, G, gs]`` (uint8 0..7), scale ``[..., N, G, 1]`` (f32, rounded to f16 precision), zero point
    ``[..., N, G, 1]`` (f32; integer-valued for int3_asym, None where the format has none)."""

    fmt: str
    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    group_size: int

    def dequantize(self) -> torch.Tensor:
        """Dequantized weight ``[..., N, K]`` (float32)."""
        w = dequantize(self.fmt, self.codes, self.scale, self.zero_point)
        return w.reshape(*w.shape[:-2], -1)


# ---------------------------------------------------------------------------------------------------------------
# Grouping / elementary quantize-dequantize
# ---------------------------------------------------------------------------------------------------------------
def group(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[..., N, K] -> [..., N, K/gs, gs]``; ``group_size=-1`` means one group per row."""
    k = w.shape[-1]
    gs = k if group_size in (-1, None) else group_size
    if gs <= 0 or k % gs != 0:
        raise ValueError(f"group_size {group_size} does not divide the reduction dimension K={k}")
    return w.reshape(*w.shape[:-1], k // gs, gs)


def f16_round(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest float16 value (what the IR stores), keeping float32 dtype; tiny magnitudes kept > 0."""
    y = x.to(torch.float16).to(torch.float32)
    tiny = float(np.finfo(np.float16).tiny)
    return torch.where(y.abs() < tiny, torch.where(x < 0, -tiny, tiny) * torch.ones_like(x), y)


def _levels(fmt: str, device=None) -> torch.Tensor:
    return torch.from_numpy(format_spec(fmt).levels).to(device)


def encode(fmt: str, w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None) -> torch.Tensor:
    """Nearest code (0..7) of each weight for given scale / zero point."""
    x = w / scale
    if zero_point is not None:
        x = x + zero_point
    if fmt == "int3_sym":
        return (torch.round(x).clamp_(-4, 3) + 4).to(torch.uint8)
    if fmt in _ASYM_QMAX:
        return torch.round(x).clamp_(0, _ASYM_QMAX[fmt]).to(torch.uint8)
    lv = _levels(fmt, w.device)
    mids = (lv[1:] + lv[:-1]) / 2
    code = torch.zeros_like(x, dtype=torch.uint8)
    for m in mids.tolist():
        code += x > m
    return code


def dequantize(fmt: str, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None) -> torch.Tensor:
    if fmt == "int3_sym":
        lv = codes.to(torch.float32) - 4
    elif fmt in _ASYM_QMAX:
        lv = codes.to(torch.float32)
    else:
        lv = torch.take(_levels(fmt, codes.device), codes.long())
    if zero_point is not None:
        lv = lv - zero_point
    return lv * scale


# ---------------------------------------------------------------------------------------------------------------
# Scale / zero-point search
# ---------------------------------------------------------------------------------------------------------------
#: Default clipping-ratio grid for the scale search.
CLIP_GRID = tuple(np.round(np.linspace(1.0, 0.55, 19), 4))


def _werr(w, wq, imp):
    d = (w - wq) ** 2
    return (d * imp).sum(-1, keepdim=True) if imp is not None else d.sum(-1, keepdim=True)


def _ls_scale(w, lv, imp):
    """Least-squares optimal scale for fixed level values: argmin_s sum imp (w - s lv)^2."""
    imp = torch.ones_like(w) if imp is None else imp.expand_as(w)
    num = (imp * w * lv).sum(-1, keepdim=True)
    den = (imp * lv * lv).sum(-1, keepdim=True)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


def _finalize_scale(s, w):
    """f16-representable, non-zero scale (sign kept)."""
    amax = w.abs().amax(-1, keepdim=True)
    s = torch.where(s == 0, torch.where(amax > 0, amax, torch.ones_like(amax)), s)
    return f16_round(s)


def search_symmetric(fmt: str, w: torch.Tensor, imp: torch.Tensor | None = None, grid=CLIP_GRID,
                     refine: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group scale for int3_sym / nf3 minimising the (importance-weighted) squared error.

    Candidates: clipping ratios ``r`` of the absmax scale (for int3_sym with the sign that puts the largest
    magnitude on the -4 side, as NNCF does), then ``refine`` rounds of least-squares scale with fixed codes.
    Returns (codes, scale).
    """
    spec = format_spec(fmt)
    lv_all = _levels(fmt, w.device)
    amax_idx = w.abs().argmax(-1, keepdim=True)
    signed_max = torch.gather(w, -1, amax_idx)
    if fmt == "int3_sym":
        base = -signed_max / 4.0  # largest magnitude lands on level -4 (scale may be negative)
    else:
        base = signed_max.abs() / spec.lmax
    base = torch.where(base == 0, torch.ones_like(base), base)
    best_err = best_s = None
    for r in grid:
        s = f16_round(base * float(r))
        q = encode(fmt, w, s, None)
        err = _werr(w, dequantize(fmt, q, s, None), imp)
        if best_err is None:
            best_err, best_s = err, s
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, s, best_s)
    s = best_s
    q = encode(fmt, w, s, None)
    for _ in range(refine):
        s_new = _finalize_scale(_ls_scale(w, lv_all[q.long()], imp), w)
        q_new = encode(fmt, w, s_new, None)
        err_new = _werr(w, dequantize(fmt, q_new, s_new, None), imp)
        better = err_new < best_err
        best_err = torch.where(better, err_new, best_err)
        s = torch.where(better, s_new, s)
        q = encode(fmt, w, s, None)
    return q, s


def absmax_symmetric(fmt: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain RTN with absmax scales (NNCF's INT3_SYM rule for int3_sym; max|w|/max|C| for nf3)."""
    return search_symmetric(fmt, w, None, grid=(1.0,), refine=0)


def search_asymmetric(w: torch.Tensor, imp: torch.Tensor | None = None, grid=CLIP_GRID,
                      refine: int = 3, fmt: str = "int3_asym") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group (scale, integer zero point) for int3_asym minimising the weighted squared error.

    A 2-D grid shrinks the [min, max] range from either side; then ``refine`` alternating rounds:
    codes fixed -> least-squares (scale, offset) -> integer zero point -> least-squares scale.
    Returns (codes, scale, zero_point).
    """
    qmax = _ASYM_QMAX[fmt]
    wmin = w.amin(-1, keepdim=True)
    wmax = w.amax(-1, keepdim=True)
    best = None
    shrink = [g for g in grid if g >= 0.7]
    for a in shrink:
        for b in shrink:
            lo, hi = wmin * a, wmax * b
            s = f16_round(((hi - lo) / qmax).clamp_min(1e-8))
            z = torch.round(-lo / s).clamp(0, qmax)
            q = encode(fmt, w, s, z)
            err = _werr(w, dequantize(fmt, q, s, z), imp)
            if best is None:
                best = [err, s, z]
            else:
                m = err < best[0]
                best = [torch.where(m, err, best[0]), torch.where(m, s, best[1]), torch.where(m, z, best[2])]
    err, s, z = best
    imp_full = torch.ones_like(w) if imp is None else imp.expand_as(w)
    for _ in range(refine):
        q = encode(fmt, w, s, z).float()
        # weighted LS for w ~ s*q + m
        sw = imp_full.sum(-1, keepdim=True)
        sq = (imp_full * q).sum(-1, keepdim=True)
        sqq = (imp_full * q * q).sum(-1, keepdim=True)
        sx = (imp_full * w).sum(-1, keepdim=True)
        sqx = (imp_full * q * w).sum(-1, keepdim=True)
        det = sw * sqq - sq * sq
        ok = det.abs() > 1e-12
        s_ls = torch.where(ok, (sw * sqx - sq * sx) / torch.where(ok, det, torch.ones_like(det)), s)
        s_ls = torch.where(s_ls.abs() < 1e-8, s, s_ls)
        m_ls = torch.where(ok, (sx - s_ls * sq) / sw.clamp_min(1e-30), -s * z)
        z_new = torch.round(-m_ls / s_ls).clamp(0, qmax)
        qz = q - z_new
        s_new = _finalize_scale(_ls_scale(w, qz, imp), w)
        s_new = torch.where(s_new > 0, s_new, s)
        q2 = encode(fmt, w, s_new, z_new)
        err_new = _werr(w, dequantize(fmt, q2, s_new, z_new), imp)
        better = err_new < err
        err = torch.where(better, err_new, err)
        s = torch.where(better, s_new, s)
        z = torch.where(better, z_new, z)
    return encode(fmt, w, s, z), s, z


def minmax_asymmetric(w: torch.Tensor, fmt: str = "int3_asym"):
    """Plain RTN with min/max range (NNCF's asymmetric rule)."""
    return search_asymmetric(w, None, grid=(1.0,), refine=0, fmt=fmt)


def icq_offset(w: torch.Tensor, imp: torch.Tensor | None = None, criterion: str = "entropy", n: int = 25,
               lam: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IR-QLoRA's information calibration (ICQ) for NF3: per group, shift by tau before quantising.

    tau = median(w) + f * absmax(w - median), f in linspace(-lam*sigma, lam*sigma, 2n+1), sigma = 0.541; keep the
    tau maximising the entropy of the 8 code frequencies (``criterion="entropy"``, the paper's rule) or minimising
    the weighted squared error (``"mse"``). The scale of each candidate is searched as in :func:`search_symmetric`.
    Returns (codes, scale, zero_point) with zero_point = -tau/scale so that w ~ scale*(C[q] - zero_point).
    """
    fmt = "nf3"
    sigma = 0.541
    tau0 = w.median(-1, keepdim=True).values
    spread = (w - tau0).abs().amax(-1, keepdim=True)
    best = None
    for f in np.linspace(-lam * sigma, lam * sigma, 2 * n + 1):
        tau = f16_round(tau0 + float(f) * spread)
        q, s = search_symmetric(fmt, w - tau, imp, refine=1)
        z = -tau / s
        if criterion == "entropy":
            hist = torch.stack([(q == c).float().mean(-1, keepdim=True) for c in range(8)], 0)
            score = -(hist * torch.log(hist.clamp_min(1e-12))).sum(0)  # higher is better
            score = -score
        elif criterion == "mse":
            score = _werr(w, dequantize(fmt, q, s, z), imp)
        else:
            raise ValueError(f"ICQ criterion must be 'entropy' or 'mse', got {criterion!r}")
        if best is None:
            best = [score, q, s, z]
        else:
            m = score < best[0]
            best = [torch.where(m, score, best[0]), torch.where(m, q, best[1]), torch.where(m, s, best[2]),
                    torch.where(m, z, best[3])]
    _, q, s, z = best
    return q, s, f16_round(z)


def fit_group(fmt: str, w: torch.Tensor, imp: torch.Tensor | None = None, search: bool = True,
              icq: str | None = None):
    """Choose codes / scale / zero point of grouped weights ``w[..., gs]``. Returns (codes, scale, zero_point|None)."""
    if fmt in _ASYM_QMAX:
        return search_asymmetric(w, imp, fmt=fmt) if search else minmax_asymmetric(w, fmt)
    if fmt == "nf3" and icq:
        return icq_offset(w, imp, criterion=icq)
    q, s = search_symmetric(fmt, w, imp) if search else absmax_symmetric(fmt, w)
    return q, s, None


def check_weight(w: torch.Tensor, name: str = "weight") -> None:
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf values; refusing to quantize it")


def quantize_rtn(fmt: str, w: torch.Tensor, group_size: int, importance: torch.Tensor | None = None,
                 search: bool = True, icq: str | None = None, chunk_rows: int = 4096) -> QuantizedWeight:
    """Round-to-nearest with (optionally) searched per-group parameters. ``w[..., N, K]``; ``importance[..., K]``
    (per input channel, broadcast over rows) or None."""
    check_weight(w)
    wg = group(w.float(), group_size)
    gs = wg.shape[-1]
    imp = None
    if importance is not None:
        imp = group(importance.float().unsqueeze(-2), group_size)  # [..., 1, G, gs]
    flat = wg.reshape(-1, wg.shape[-3], wg.shape[-2], gs)  # [B, N, G, gs]
    imp_flat = None if imp is None else imp.expand(*wg.shape[:-3], 1, wg.shape[-2], gs).reshape(-1, 1, wg.shape[-2], gs)
    codes, scales, zps = [], [], []
    for b in range(flat.shape[0]):
        for r0 in range(0, flat.shape[1], chunk_rows):
            q, s, z = fit_group(fmt, flat[b, r0 : r0 + chunk_rows], None if imp_flat is None else imp_flat[b], search, icq)
            codes.append(q)
            scales.append(s)
            zps.append(z)
    lead = wg.shape[:-1]
    codes = torch.cat(codes, 0).reshape(*wg.shape)
    scale = torch.cat(scales, 0).reshape(*lead, 1)
    zp = None if zps[0] is None else torch.cat(zps, 0).reshape(*lead, 1)
    return QuantizedWeight(fmt, codes, scale, zp, gs)


# ---------------------------------------------------------------------------------------------------------------
# GPTQ (batched over experts), with per-group parameter search at group start
# ---------------------------------------------------------------------------------------------------------------
def refit_scales(qw: QuantizedWeight, w: torch.Tensor, H: torch.Tensor, chunk: int = 256) -> QuantizedWeight:
    """Codes and zero points fixed, re-solve every row's group scales for the output error
    ``(w - w_hat)^T H (w - w_hat)`` (a G x G linear system per row; cross-group terms included). A row keeps its
    old scales unless the new (f16-rounded) ones lower its error."""
    B, N, G, gs = qw.codes.shape
    K = G * gs
    Hd = H.to(torch.float64)
    lv = dequantize(qw.fmt, qw.codes, torch.ones_like(qw.scale), qw.zero_point).to(torch.float64)  # [B,N,G,gs]
    Hg = Hd.reshape(B, G, gs, K)
    W = w.to(torch.float64)
    new_scale = qw.scale.clone()
    for r0 in range(0, N, chunk):
        a = lv[:, r0 : r0 + chunk]  # [B,n,G,gs]
        wr = W[:, r0 : r0 + chunk]  # [B,n,K]
        U = torch.einsum("bngi,bgij->bngj", a, Hg)  # [B,n,G,K]
        M = torch.einsum("bnghj,bnhj->bngh", U.reshape(*U.shape[:3], G, gs), a)
        rhs = torch.einsum("bngj,bnj->bng", U, wr)
        M = M + 1e-9 * torch.diagonal(M, dim1=-2, dim2=-1).mean(-1, keepdim=True)[..., None] * torch.eye(G, dtype=M.dtype)
        s_new = torch.linalg.solve(M, rhs.unsqueeze(-1))  # [B,n,G,1]
        s_new = f16_round(s_new.to(torch.float32))
        old = qw.scale[:, r0 : r0 + chunk]

        def err(scale):
            e = wr - (a * scale.to(torch.float64)).reshape(wr.shape)
            return torch.einsum("bnk,bkj,bnj->bn", e, Hd, e)

        ok = torch.isfinite(s_new).all(-1).all(-1) & (s_new != 0).all(-1).all(-1)
        s_new = torch.where(ok[..., None, None], s_new, old)
        better = err(s_new) < err(old)
        new_scale[:, r0 : r0 + chunk] = torch.where(better[..., None, None], s_new, old)
    return QuantizedWeight(qw.fmt, qw.codes, new_scale, qw.zero_point, qw.group_size)


def U_from(H: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 (GPTQ's error-propagation matrix)."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def _gptq_act_order(fmt, W, H, gs, search, icq, imp_all, block, refit, w_orig, rounds: int = 2):
    """GPTQ over columns in descending Hessian-diagonal order with static groups: every group's parameters are
    fitted up front on the original weights (activation-weighted), then codes are chosen column by column in
    the permuted order with error feedback."""
    B, N, K = W.shape
    G = K // gs
    wg = W.to(torch.float32).reshape(B, N, G, gs)
    _, scale, zp = fit_group(fmt, wg, imp_all.reshape(B, 1, G, gs), search, icq)
    perm = torch.argsort(torch.diagonal(H, dim1=-2, dim2=-1), dim=-1, descending=True)  # [B, K]
    bidx = torch.arange(B)[:, None]
    Wp = torch.gather(W, 2, perm[:, None, :].expand(B, N, K)).clone()
    Hp = H[bidx[:, :, None], perm[:, :, None], perm[:, None, :]]
    U = U_from(Hp)
    W0 = Wp.clone()
    inv = torch.argsort(perm, dim=-1)
    qw, best, best_err = None, None, None
    Hd = H.to(torch.float64)

    def out_err(q):
        e = w_orig.to(torch.float64) - q.dequantize().to(torch.float64)
        return float(torch.einsum("bnk,bkj,bnj->", e, Hd, e))

    for _ in range(max(1, rounds)):
        Wp = W0.clone()
        codes = torch.zeros(B, N, K, dtype=torch.uint8)
        for b0 in range(0, K, block):
            b1 = min(b0 + block, K)
            Err = torch.zeros(B, N, b1 - b0, dtype=torch.float64)
            for j in range(b0, b1):
                g = (perm[:, j] // gs)[:, None, None, None].expand(B, N, 1, 1)  # original group of this column
                s = torch.gather(scale, 2, g)[..., 0]  # [B, N, 1]
                z = None if zp is None else torch.gather(zp, 2, g)[..., 0]
                col = Wp[:, :, j : j + 1].to(torch.float32)
                qc = encode(fmt, col, s, z)
                codes[:, :, j] = qc[..., 0]
                deq = dequantize(fmt, qc, s, z).to(torch.float64)
                e = (col.to(torch.float64) - deq) / U[:, j, j][:, None, None]
                Wp[:, :, j:b1] -= e * U[:, j : j + 1, j:b1]
                Err[:, :, j - b0] = e[..., 0]
            if b1 < K:
                Wp[:, :, b1:] -= Err @ U[:, b0:b1, b1:]
        codes_o = torch.gather(codes, 2, inv[:, None, :].expand(B, N, K)).reshape(B, N, G, gs)
        qw = QuantizedWeight(fmt, codes_o, scale, zp, gs)
        if not refit:
            break
        qw = refit_scales(qw, w_orig.detach().float(), H)
        err = out_err(qw)
        if best_err is None or err < best_err:
            best, best_err = qw, err
        scale = qw.scale  # the next round re-chooses codes for the refitted scales
    return best if best is not None else qw


def gptq(fmt: str, w: torch.Tensor, hessian: torch.Tensor, group_size: int, damp: float = 0.01,
         block: int = 128, search: bool = True, icq: str | None = None, refit: bool = True,
         act_order: bool = False) -> QuantizedWeight:
    """GPTQ with error feedback. ``w[B, N, K]`` (B = experts, 1 for a 2-D weight), ``hessian[B, K, K]`` = sum of x x^T.

    Without ``act_order`` group parameters are fitted when the group is reached (from the error-updated weights),
    weighting the squared error by the Hessian diagonal; with it, see :func:`_gptq_act_order`. ``refit`` re-solves
    the group scales for the full-Hessian output error at the end (:func:`refit_scales`). Dead input channels
    (zero Hessian diagonal) are quantized data-free.
    """
    check_weight(w)
    W = w.detach().to(torch.float64).clone()
    H = hessian.detach().to(torch.float64).clone()
    B, N, K = W.shape
    gs = K if group_size in (-1, None) else group_size
    if K % gs:
        raise ValueError(f"group_size {group_size} does not divide K={K}")
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    dead = diag <= 0
    idx = torch.arange(K)
    H[:, idx, idx] = torch.where(dead, torch.ones_like(diag), diag)
    mean_diag = torch.diagonal(H, dim1=-2, dim2=-1).mean(-1)
    H[:, idx, idx] += damp * mean_diag[:, None]
    imp_all = torch.diagonal(H, dim1=-2, dim2=-1).to(torch.float32)  # [B, K]
    G = K // gs
    if act_order:
        return _gptq_act_order(fmt, W, H, gs, search, icq, imp_all, block, refit, w)
    U = U_from(H)  # [B, K, K]
    codes = torch.zeros(B, N, G, gs, dtype=torch.uint8)
    scale = torch.zeros(B, N, G, 1)
    zp = None
    params = {}
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        Err = torch.zeros(B, N, b1 - b0, dtype=torch.float64)
        for j in range(b0, b1):
            g, jj = divmod(j, gs)
            if jj == 0:
                wg = W[:, :, j : j + gs].to(torch.float32)
                imp = imp_all[:, None, j : j + gs]  # [B, 1, gs]
                q, s, z = fit_group(fmt, wg, imp, search, icq)
                params[g] = (s, z)
                scale[:, :, g] = s
                if z is not None:
                    if zp is None:
                        zp = torch.zeros(B, N, G, 1)
                    zp[:, :, g] = z
            s, z = params[g]
            col = W[:, :, j : j + 1].to(torch.float32)
            qc = encode(fmt, col, s, z)
            codes[:, :, g, jj] = qc[..., 0]
            deq = dequantize(fmt, qc, s, z).to(torch.float64)
            d = U[:, j, j][:, None, None]
            e = (col.to(torch.float64) - deq) / d  # [B, N, 1]
            W[:, :, j:b1] -= e * U[:, j : j + 1, j:b1]
            Err[:, :, j - b0] = e[..., 0]
        if b1 < K:
            W[:, :, b1:] -= Err @ U[:, b0:b1, b1:]
    qw = QuantizedWeight(fmt, codes, scale, zp, gs)
    if refit and G > 0:
        qw = refit_scales(qw, w.detach().float(), H)
    return qw


# ---------------------------------------------------------------------------------------------------------------
# Double-quantized scales (Q3_K-style sub-block scales)
# ---------------------------------------------------------------------------------------------------------------
def double_quantize_scales(qw: QuantizedWeight, w: torch.Tensor, sub_bits: int = 6, super_groups: int = 16,
                           importance: torch.Tensor | None = None,
                           reencode: bool = True) -> tuple[QuantizedWeight, torch.Tensor, torch.Tensor]:
    """Store each group scale as an unsigned ``sub_bits`` integer times one f16 super-scale per ``super_groups``
    consecutive groups of a row (llama.cpp Q3_K uses 16 sub-blocks of 16 weights with 6-bit scales).

    Weights are re-encoded against the stored scales (codes follow the rounded scale) unless ``reencode=False``
    (GPTQ's error-feedback codes are kept; only the scales move to the stored grid). Returns
    (requantized weight, sub_scale ints ``[..., N, G, 1]``, super_scale ``[..., N, G/super_groups, 1, 1]``).
    Signed int3_sym scales keep their sign in the codes (the sign is folded into the weights' codes by negation).
    """
    if qw.fmt == "int3_sym":
        raise ValueError("double-quantized scales are implemented for int3_asym and nf3 (sign-free scales)")
    s = qw.scale  # [..., N, G, 1] > 0
    G = s.shape[-2]
    super_groups = min(super_groups, G)  # rows with fewer groups share one super-scale per row
    if G % super_groups:
        raise ValueError(f"{G} groups per row are not a multiple of super_groups={super_groups}")
    levels = 2**sub_bits - 1
    sg = s.reshape(*s.shape[:-2], G // super_groups, super_groups)  # [..., N, Gs, sg]
    sup = f16_round(sg.abs().amax(-1, keepdim=True).clamp_min(1e-8) / levels)
    sub = torch.round(sg / sup).clamp(1, levels)
    s_new = (sub * sup).reshape(*s.shape)
    wg = group(w.float(), qw.group_size)
    imp = None if importance is None else group(importance.float().unsqueeze(-2), qw.group_size)
    z = qw.zero_point
    if not reencode:
        return QuantizedWeight(qw.fmt, qw.codes, s_new, z, qw.group_size), sub.reshape(*s.shape).to(torch.uint8), sup.unsqueeze(-1)
    if qw.fmt == "int3_asym":
        # re-pick the zero point for the stored scale
        best = None
        for zc in range(8):
            zt = torch.full_like(s_new, float(zc))
            q = encode(qw.fmt, wg, s_new, zt)
            err = _werr(wg, dequantize(qw.fmt, q, s_new, zt), imp)
            if best is None:
                best = [err, zt]
            else:
                m = err < best[0]
                best = [torch.where(m, err, best[0]), torch.where(m, zt, best[1])]
        z = best[1]
    codes = encode(qw.fmt, wg, s_new, z)
    return QuantizedWeight(qw.fmt, codes, s_new, z, qw.group_size), sub.reshape(*s.shape).to(torch.uint8), sup.unsqueeze(-1)


def bits_per_weight(fmt: str, group_size: int, icq: bool = False, double_quant: tuple[int, int] | None = None) -> float:
    """Storage bits per weight incl. scales / zero points (codebook and scalar zero point amortised to 0)."""
    scale_bits = 16.0 if double_quant is None else double_quant[0] + 16.0 / double_quant[1]
    extra = scale_bits
    if fmt == "int3_asym":
        extra += 3
    if fmt == "int4_asym":
        return 4.0 + (scale_bits + 4) / group_size
    if fmt == "nf3" and icq:
        extra += 16
    return 3.0 + extra / group_size


def gaussian_mse(fmt: str, group_size: int, search: bool = True, icq: str | None = None, rows: int = 512,
                 cols: int = 4096, seed: int = 0) -> float:
    """MSE of quantize->dequantize on i.i.d. N(0,1) (see :func:`nncf_moe3.accuracy.gaussian_weight_mse`)."""
    from nncf_moe3.accuracy import gaussian_weight_mse

    def qd(w):
        return quantize_rtn(fmt, torch.from_numpy(w), group_size, search=search, icq=icq).dequantize().numpy()

    return gaussian_weight_mse(qd, rows, cols, seed)


__all__ = [
    "FORMATS", "NF3_CODEBOOK", "QuantizedWeight", "format_spec", "group", "encode", "dequantize", "quantize_rtn",
    "gptq", "icq_offset", "search_symmetric", "search_asymmetric", "double_quantize_scales", "bits_per_weight",
    "gaussian_mse", "refit_scales", "ALL_FORMATS",
]
