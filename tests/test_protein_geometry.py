"""Known answers of the protein family's geometry: superposition, structure scores, invariant features."""
from __future__ import annotations

import math

import numpy as np
import torch

from vqbench.families.protein.geometry import (aligned_loss, gdt_ts, kabsch_rmsd, lddt, residue_features,
                                               tm_score)

BONDS, ANGLES = (1.458, 1.525, 1.329), (111.0, 116.2, 121.7)  # N-CA, CA-C, C-N; at CA, C, N (degrees)


def backbone(torsions: np.ndarray) -> np.ndarray:
    """(L, 3, 3) N, CA, C from (L, 3) phi, psi, omega in degrees, ideal bonds and angles (NeRF,
    Parsons et al. 2005): each atom placed from the previous three by one bond, angle and torsion."""
    atoms = [np.zeros(3), np.array([BONDS[0], 0, 0])]
    a = math.radians(180 - ANGLES[0])
    atoms.append(atoms[1] + BONDS[1] * np.array([math.cos(a), math.sin(a), 0]))
    sequence = []  # (bond, angle, torsion) of each next atom: N(i+1) from psi_i, CA(i+1) omega_i, C(i+1) phi_i+1
    for i in range(len(torsions) - 1):
        sequence += [(BONDS[2], ANGLES[1], torsions[i, 1]), (BONDS[0], ANGLES[2], torsions[i, 2]),
                     (BONDS[1], ANGLES[0], torsions[i + 1, 0])]
    for bond, angle, torsion in sequence:
        a, b, c = atoms[-3:]
        bc = (c - b) / np.linalg.norm(c - b)
        n = np.cross(b - a, bc)
        n /= np.linalg.norm(n)
        frame = np.stack([bc, np.cross(n, bc), n], axis=1)
        th, ph = math.radians(angle), math.radians(torsion)
        d = bond * np.array([-math.cos(th), math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph)])
        atoms.append(c + frame @ d)
    return np.array(atoms).reshape(-1, 3, 3)


def helix_then_strand(length: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tors = np.where(np.arange(length)[:, None] < length // 2, [-57.0, -47.0, 180.0], [-120.0, 130.0, 180.0])
    return backbone(tors + rng.normal(0, 8, tors.shape) * [1, 1, 0])


def rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))  # a proper rotation


def test_nerf_builds_true_torsions_and_features_read_them_back():
    tors = np.array([[-57.0, -47.0, 180.0]] * 30)
    x = torch.from_numpy(backbone(tors)).float()[None]
    f = residue_features(x)[0]
    phi, psi = torch.atan2(f[1:, 0], f[1:, 1]), torch.atan2(f[:-1, 2], f[:-1, 3])
    assert torch.allclose(torch.rad2deg(phi), torch.full_like(phi, -57.0), atol=0.1)
    assert torch.allclose(torch.rad2deg(psi), torch.full_like(psi, -47.0), atol=0.1)
    assert f[0, 0] == 0 and f[0, 1] == 0  # no phi at the N terminus
    assert abs(float(f[5, 10]) * 10 - 3.8) < 0.05  # CA(i)-CA(i+1) of a trans peptide


def test_features_are_se3_invariant_and_local():
    x = helix_then_strand()
    moved = x @ rotation(1).T + np.array([5.0, -20.0, 7.0])
    f, g = residue_features(torch.from_numpy(x)[None]), residue_features(torch.from_numpy(moved)[None])
    assert torch.allclose(f, g, atol=1e-9)
    crop = residue_features(torch.from_numpy(x[20:60])[None])
    assert torch.allclose(crop[0, 3:-3], f[0, 23:57], atol=1e-12)  # a crop's interior = the whole chain's


def test_scores_of_a_moved_copy_are_perfect():
    x = helix_then_strand()
    moved = x @ rotation(2).T + np.array([30.0, 1.0, -4.0])
    assert kabsch_rmsd(moved.reshape(-1, 3), x.reshape(-1, 3)) < 1e-6
    ca, ca_moved = x[:, 1], moved[:, 1]
    assert abs(tm_score(ca_moved, ca, "A" * len(ca)) - 1) < 1e-6
    assert lddt(ca_moved, ca) == 1.0 and gdt_ts(ca_moved, ca) == 1.0
    mirror = x.reshape(-1, 3) * np.array([1, 1, -1])  # a mirror image is not a superposition
    assert kabsch_rmsd(mirror, x.reshape(-1, 3)) > 1.0


def test_noise_lowers_every_score_and_more_noise_lowers_it_more():
    x = helix_then_strand()
    rng = np.random.default_rng(3)
    ca = x[:, 1]
    scores = []
    for sigma in (0.5, 2.0):
        noisy = ca + rng.normal(0, sigma, ca.shape)
        scores.append((kabsch_rmsd(noisy, ca), tm_score(noisy, ca, "A" * len(ca)), lddt(noisy, ca), gdt_ts(noisy, ca)))
    (r1, t1, l1, g1), (r2, t2, l2, g2) = scores
    assert 0.5 < r1 < r2 and 1 > t1 > t2 and 1 > l1 > l2 and 1 > g1 > g2
    assert abs(r1 - 0.5 * math.sqrt(3)) < 0.15  # RMSD of isotropic noise: sigma * sqrt(3)


def test_gdt_ts_counts_residues_within_cutoffs():
    ca = helix_then_strand()[:, 1]
    shifted = ca.copy()
    shifted[:20] += np.array([0.0, 0.0, 50.0])  # a quarter of the chain far away, the rest exact
    assert abs(gdt_ts(shifted, ca) - 0.75) < 1e-9  # the best superposition is on the exact 60


def test_aligned_loss_ignores_the_frame_and_sees_error():
    x = torch.from_numpy(helix_then_strand()).float()[None]
    moved = x @ torch.from_numpy(rotation(4)).float().T + 3.0
    assert float(aligned_loss(moved, x)) < 1e-6
    noisy = (moved + torch.randn_like(moved)).requires_grad_()
    loss = aligned_loss(noisy, x)
    loss.backward()
    assert loss.item() > 0.01 and torch.isfinite(noisy.grad).all()


def test_parallel_nerf_equals_the_sequential_one_and_its_internal_loss_vanishes_at_the_truth():
    from vqbench.families.protein.geometry import internal_loss, nerf
    rng = np.random.default_rng(3)
    tors = rng.uniform(-180, 180, (70, 3))
    want = backbone(tors)
    rad = torch.from_numpy(np.radians(tors))[None]
    angles = torch.tensor([math.radians(a) for a in (ANGLES[2], ANGLES[0], ANGLES[1])], dtype=torch.float64)
    got = nerf(torch.sin(rad), torch.cos(rad), angles.expand(1, 70, 3))[0].numpy()
    assert np.abs(got - want).max() < 1e-9  # same frame, same atoms: the scan is exact, not approximate
    x = torch.from_numpy(want)[None]
    assert float(internal_loss(x, x)) < 1e-12
    bent = torch.from_numpy(backbone(tors + [0, 20, 0]))[None].requires_grad_()
    loss = internal_loss(bent, x)
    loss.backward()
    assert float(loss) > 0.01 and torch.isfinite(bent.grad).all()
