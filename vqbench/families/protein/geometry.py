"""Backbone geometry: SE(3)-invariant residue features, Kabsch superposition and the structure
scores (RMSD, lDDT-Ca, GDT-TS, TM-score). Coordinates are Angstrom, backbones (..., L, 3, 3) = N, CA, C.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

NUM_FEATURES = 15  # sin/cos of phi, psi, omega (6), cos of 3 bond angles (3), CA(i)-CA(i+-1,2,3) / 10 A (6)


def _dihedral(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """sin and cos of the dihedral a-b-c-d (IUPAC sign), batched over leading dims."""
    b0, b1, b2 = a - b, c - b, d - c
    b1n = b1 / b1.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    v = b0 - (b0 * b1n).sum(-1, keepdim=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdim=True) * b1n
    x = (v * w).sum(-1)
    y = (torch.cross(b1n, v, dim=-1) * w).sum(-1)
    r = torch.sqrt(x * x + y * y).clamp_min(1e-8)
    return y / r, x / r


def _cos_angle(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    u, v = a - b, c - b
    return (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-8)


def residue_features(x: Tensor) -> Tensor:
    """(batch, L, 3, 3) backbone -> (batch, L, NUM_FEATURES), invariant to rotation and translation.

    Torsions and bond angles are the internal coordinates that fix a backbone (NeRF rebuilds it from
    them); CA distances to i+-2, i+-3 add the local turn geometry directly. Every feature of residue
    i reads residues i-3..i+3 only, so a training crop's interior features equal the whole chain's.
    Terms that fall off a chain end are 0 (sin = cos = 0 never occurs for a real angle).
    """
    n, ca, c = x[..., 0, :], x[..., 1, :], x[..., 2, :]
    bsz, length = x.shape[:2]
    zero = x.new_zeros(bsz, 1)

    def pad(t: Tensor, left: int, right: int) -> Tensor:
        return torch.cat([zero.expand(bsz, left), t, zero.expand(bsz, right)], dim=1)
    phi = _dihedral(c[:, :-1], n[:, 1:], ca[:, 1:], c[:, 1:])  # residues 1..L-1
    psi = _dihedral(n[:, :-1], ca[:, :-1], c[:, :-1], n[:, 1:])  # residues 0..L-2
    omega = _dihedral(ca[:, :-1], c[:, :-1], n[:, 1:], ca[:, 1:])  # residues 0..L-2
    feats = [pad(phi[0], 1, 0), pad(phi[1], 1, 0), pad(psi[0], 0, 1), pad(psi[1], 0, 1),
             pad(omega[0], 0, 1), pad(omega[1], 0, 1),
             pad(_cos_angle(c[:, :-1], n[:, 1:], ca[:, 1:]), 1, 0), _cos_angle(n, ca, c),
             pad(_cos_angle(ca[:, :-1], c[:, :-1], n[:, 1:]), 0, 1)]
    for k in (1, 2, 3):
        if length > k:
            d = (ca[:, k:] - ca[:, :-k]).norm(dim=-1) / 10
            feats += [pad(d, 0, k), pad(d, k, 0)]  # to residue i+k, to residue i-k
        else:
            feats += [x.new_zeros(bsz, length)] * 2
    return torch.stack(feats, dim=-1)


# ideal backbone geometry (Engh & Huber 1991): bonds C-N, N-CA, CA-C (A); angles at N, CA, C (radians)
BOND_C_N, BOND_N_CA, BOND_CA_C = 1.329, 1.458, 1.525
ANGLE_AT_N, ANGLE_AT_CA, ANGLE_AT_C = math.radians(121.7), math.radians(111.2), math.radians(116.2)


def _placement(length: Tensor, theta: Tensor, sin_chi: Tensor, cos_chi: Tensor) -> Tensor:
    """(..., 4, 4) rigid transform from the frame of atoms (a, b, c) to the frame of (b, c, d), where d
    sits at `length` from c, bond angle b-c-d `theta` and dihedral a-b-c-d `chi`. A frame: origin at
    its last atom, x along the last bond, z normal to the plane of its three atoms."""
    ct, st = torch.cos(theta), torch.sin(theta)
    zero, one = torch.zeros_like(sin_chi), torch.ones_like(sin_chi)
    x = torch.stack([-ct, st * cos_chi, st * sin_chi], -1)
    z = torch.stack([zero, -sin_chi, cos_chi], -1)
    rotation = torch.stack([x, torch.cross(z, x, dim=-1), z], -1)  # columns: the new axes
    top = torch.cat([rotation, (length.unsqueeze(-1) * x).unsqueeze(-1)], -1)
    return torch.cat([top, torch.stack([zero, zero, zero, one], -1).unsqueeze(-2)], -2)


def nerf(sin: Tensor, cos: Tensor, angles: Tensor) -> Tensor:
    """Backbone (batch, L, 3, 3) from internal coordinates (NeRF, Parsons et al. 2005): sin and cos
    (batch, L, 3) of each residue's (phi, psi, omega) and its bond angles (batch, L, 3) at N, CA, C
    in radians; bond lengths ideal. The chain of 3L atom placements is a product of rigid transforms,
    computed as a parallel prefix product (log2(3L) batched 4x4 matmuls, as pNeRF does) rather than a
    3L-step loop: 8 ms for forward and backward of 16 crops of 64 residues on one core. Residue 0 sits
    in a fixed frame; its phi and the last residue's psi and omega place nothing."""
    bsz, length, _ = sin.shape
    # atoms 3.. in order N(j+1), CA(j+1), C(j+1): dihedrals psi(j), omega(j), phi(j+1); angles at C(j), N(j+1), CA(j+1)
    s = torch.stack([sin[:, :-1, 1], sin[:, :-1, 2], sin[:, 1:, 0]], -1).reshape(bsz, -1)
    c = torch.stack([cos[:, :-1, 1], cos[:, :-1, 2], cos[:, 1:, 0]], -1).reshape(bsz, -1)
    theta = torch.stack([angles[:, :-1, 2], angles[:, 1:, 0], angles[:, 1:, 1]], -1).reshape(bsz, -1)
    bond = sin.new_tensor([BOND_C_N, BOND_N_CA, BOND_CA_C]).repeat(length - 1)
    frames, n, offset = _placement(bond.expand_as(s), theta, s, c), s.shape[1], 1
    while offset < n:  # Hillis-Steele inclusive scan; earlier transforms multiply from the left
        frames = torch.cat([frames[:, :offset], frames[:, :-offset] @ frames[:, offset:]], 1)
        offset *= 2
    # residue 0 in the xy plane: N at the origin, CA on +x, C by the angle at CA
    theta0 = angles[:, 0, 1]
    x_axis = torch.stack([-torch.cos(theta0), torch.sin(theta0), torch.zeros_like(theta0)], -1)  # (batch, 3)
    n0, ca0 = sin.new_zeros(bsz, 3), sin.new_tensor([BOND_N_CA, 0.0, 0.0]).expand(bsz, 3)
    c0 = ca0 + BOND_CA_C * x_axis
    z_axis = sin.new_tensor([0.0, 0.0, 1.0]).expand(bsz, 3)
    start = torch.stack([x_axis, torch.cross(z_axis, x_axis, dim=-1), z_axis, c0], -1)  # (batch, 3, 4)
    placed = (start.unsqueeze(1) @ frames[..., :, 3:]).squeeze(-1)  # origin of each frame = its atom
    return torch.cat([torch.stack([n0, ca0, c0], 1), placed], 1).reshape(bsz, length, 3, 3)


def internal_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """Training loss of the NeRF decoder: 1 - cos of each torsion's error plus the squared error of the
    bond angles' cosines (about the squared angle error in radians), from residue_features of both;
    terms that fall off a chain end are left out."""
    f_hat, f = residue_features(x_hat), residue_features(x)
    torsion = 1 - (f_hat[..., 0:6:2] * f[..., 0:6:2] + f_hat[..., 1:6:2] * f[..., 1:6:2])
    real = (f[..., 0:6:2] ** 2 + f[..., 1:6:2] ** 2) > 0.5
    angle = (f_hat[..., 6:9] - f[..., 6:9]) ** 2
    real_angle = f[..., 6:9] != 0
    return torsion[real].mean() + angle[real_angle].mean()


def kabsch_rotation(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """R, t minimizing |q R^T + t - p|^2 over rotations (no reflection); p, q (batch, n, 3).
    Kabsch 1976; the sign fix keeps det R = +1 (a mirror image is not a superposition)."""
    pc, qc = p.mean(1, keepdim=True), q.mean(1, keepdim=True)
    h = (q - qc).transpose(1, 2).double() @ (p - pc).double()  # (batch, 3, 3)
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vt.transpose(1, 2) @ u.transpose(1, 2)))
    diag = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    r = (vt.transpose(1, 2) @ diag @ u.transpose(1, 2)).to(p.dtype)
    return r, pc - qc @ r.transpose(1, 2)


def superpose(p: Tensor, q: Tensor) -> Tensor:
    """q moved onto p by the best rotation and translation."""
    r, t = kabsch_rotation(p, q)
    return q @ r.transpose(1, 2) + t


def aligned_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """Training loss, invariant to the frame the decoder happens to output in (nm^2):
    mean squared deviation of the backbone atoms after superposing the target onto the prediction
    (the rotation is detached: at the optimum its derivative term vanishes, and SVD gradients are
    unstable for near-degenerate inputs), plus the squared error of the CA distance matrix, which
    gives the decoder's global arrangement a gradient from every residue pair."""
    b = x.shape[0]
    p, q = x_hat.reshape(b, -1, 3) / 10, x.reshape(b, -1, 3) / 10
    with torch.no_grad():
        r, t = kabsch_rotation(p.detach(), q)
    msd = ((p - (q @ r.transpose(1, 2) + t)) ** 2).sum(-1).mean()
    ca_hat, ca = x_hat[:, :, 1] / 10, x[:, :, 1] / 10
    dist = ((torch.cdist(ca_hat, ca_hat) - torch.cdist(ca, ca)) ** 2).mean()
    return msd + dist


# ---------------------------------------------------------------- per-protein scores, numpy float64

def kabsch_rmsd(pred: np.ndarray, true: np.ndarray) -> float:
    """RMSD (A) of two (n, 3) point sets after optimal superposition."""
    p, q = torch.from_numpy(np.asarray(true, np.float64))[None], torch.from_numpy(np.asarray(pred, np.float64))[None]
    moved = superpose(p, q)[0].numpy()
    return float(np.sqrt(((moved - true) ** 2).sum(-1).mean()))


def lddt(pred: np.ndarray, true: np.ndarray, radius: float = 15.0, thresholds=(0.5, 1.0, 2.0, 4.0)) -> float:
    """lDDT (Mariani et al. 2013) of (n, 3) CA sets, no superposition: for each residue, the pairs
    within `radius` in the reference whose distance is kept within 0.5/1/2/4 A, averaged over the
    four thresholds; the mean over residues that have any such pair."""
    d_true = np.linalg.norm(true[:, None] - true[None], axis=-1)
    d_pred = np.linalg.norm(pred[:, None] - pred[None], axis=-1)
    mask = (d_true < radius) & ~np.eye(len(true), dtype=bool)
    err = np.abs(d_pred - d_true)
    kept = np.mean([((err < t) & mask).sum(1) for t in thresholds], axis=0)
    has = mask.sum(1) > 0
    return float((kept[has] / mask.sum(1)[has]).mean())


def gdt_ts(pred: np.ndarray, true: np.ndarray, cutoffs=(1.0, 2.0, 4.0, 8.0), rounds: int = 8) -> float:
    """GDT-TS (Zemla 2003) of (n, 3) CA sets with a known correspondence: for each cutoff, the
    largest fraction of residues within it over superpositions found by iterating Kabsch on the
    residues within the cutoff, started from the global fit and from windows of 8 residues (a lower
    bound of LGA's exhaustive search, usually within a percent of it)."""
    tt, pp = torch.from_numpy(np.asarray(true, np.float64)), torch.from_numpy(np.asarray(pred, np.float64))
    n = len(true)
    starts = [np.arange(n)] + [np.arange(s, min(n, s + 8)) for s in range(0, max(1, n - 7), max(1, n // 8))]
    scores = []
    for cutoff in cutoffs:
        best = 0.0
        for sel in starts:
            for _ in range(rounds):
                if len(sel) < 3:
                    break
                r, t = kabsch_rotation(tt[sel][None], pp[sel][None])
                dev = ((pp @ r[0].T + t[0]) - tt).norm(dim=-1).numpy()
                within = dev <= cutoff
                best = max(best, within.mean())
                new = np.nonzero(within)[0]
                if np.array_equal(new, sel):
                    break
                sel = new
        scores.append(best)
    return float(np.mean(scores))


def tm_score(pred: np.ndarray, true: np.ndarray, sequence: str) -> float:
    """TM-score (Zhang & Skolnick 2004) from TM-align (tmtools), normalized by the true chain's
    length. TM-align finds its own residue alignment, so this is >= the TM-score of the fixed
    one-to-one correspondence (the two agree when the reconstruction is close)."""
    from tmtools import tm_align
    res = tm_align(np.ascontiguousarray(pred, np.float64), np.ascontiguousarray(true, np.float64), sequence, sequence)
    return float(res.tm_norm_chain2)
