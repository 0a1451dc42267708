"""Chain sets for the protein family: the lite pool from the package index, or a user folder.

Both tiers: chains (see structures.py) deduplicated by exact sequence, chains longer than
`max_length` dropped, then split train/eval by sequence identity: two chains whose local
alignment (Bio.Align.PairwiseAligner, BLOSUM62, gap open -11, extend -1) has identical residues
covering >= `identity_threshold` of the SHORTER chain are linked, linked chains form clusters
(single linkage), and whole clusters go to one side. So no eval chain shares >= 30% identity
(the default) with any training chain. The all-pairs identities are cached by the sequences' hash.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from vqbench.cache import read_verified, write_verified
from vqbench.families import DataRootError, resolve_data_root
from vqbench.families.protein.sources import SOURCES
from vqbench.families.protein.structures import Chain, is_structure_file, load_files
from vqbench.families.sources import fetch
from vqbench.paths import cache_home

SPLIT_VERSION = 1  # bump when the identity definition changes: names the cache


def _aligner():
    from Bio.Align import PairwiseAligner, substitution_matrices
    return PairwiseAligner(mode="local", substitution_matrix=substitution_matrices.load("BLOSUM62"),
                           open_gap_score=-11, extend_gap_score=-1)


def identity(a: str, b: str, aligner=None) -> float:
    """Identical aligned residues of the best local alignment / length of the shorter sequence."""
    aln = (aligner or _aligner()).align(a, b)[0]
    return aln.counts().identities / min(len(a), len(b))


def identity_matrix(sequences: list[str]) -> np.ndarray:
    """All-pairs identity (symmetric, 1 on the diagonal); cached by the sequences' hash."""
    key = hashlib.sha256(json.dumps([SPLIT_VERSION, sequences]).encode()).hexdigest()[:32]
    path = cache_home() / "protein" / "identity" / f"{key}.npy"
    if (data := read_verified(path)) is not None:
        return np.load(io.BytesIO(data))
    aligner, n = _aligner(), len(sequences)
    m = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = identity(sequences[i], sequences[j], aligner)
    buffer = io.BytesIO()
    np.save(buffer, m)
    write_verified(path, buffer.getvalue())
    return m


def clusters(sim: np.ndarray, threshold: float) -> list[int]:
    """Single-linkage cluster label of each item: linked when sim >= threshold."""
    label = list(range(len(sim)))

    def root(i):
        while label[i] != i:
            label[i] = label[label[i]]
            i = label[i]
        return i
    for i, j in zip(*np.nonzero(np.triu(sim >= threshold, 1))):
        label[root(i)] = root(j)
    return [root(i) for i in range(len(sim))]


def split_by_identity(chains: list[Chain], eval_fraction: float, threshold: float, seed: int
                      ) -> tuple[list[Chain], list[Chain]]:
    """Whole identity clusters go to eval, in a seeded hash order of their first sequence, until
    round(eval_fraction * n) chains (at least one) are held out."""
    sim = identity_matrix([c.sequence for c in chains])
    label = clusters(sim, threshold)
    members: dict[int, list[int]] = {}
    for i, lab in enumerate(label):
        members.setdefault(lab, []).append(i)
    order = sorted(members.values(), key=lambda m: hashlib.sha256(f"{seed}:{chains[m[0]].sequence}".encode()).hexdigest())
    target, held = max(1, round(eval_fraction * len(chains))), set()
    for m in order:
        if len(held) >= target:
            break
        held.update(m)
    return ([c for i, c in enumerate(chains) if i not in held], [c for i, c in enumerate(chains) if i in held])


def unique_chains(chains: list[Chain], max_length: int) -> list[Chain]:
    """One chain per exact sequence (the first by id), longest allowed `max_length`, sorted by id."""
    by_seq: dict[str, Chain] = {}
    for c in sorted(chains, key=lambda c: c.id):
        if len(c) <= max_length:
            by_seq.setdefault(c.sequence, c)
    return sorted(by_seq.values(), key=lambda c: c.id)


def lite_files() -> list[tuple[str, Path]]:
    """(name, path) of every lite structure file, name = '<source>/<file>'."""
    out = []
    for src in SOURCES:
        folder = fetch(src)
        out += [(f"{src.name}/{m}", folder / m) for m in sorted(src.members)]
    return out


def folder_files(root: str | None, task_path) -> list[tuple[str, Path]]:
    """Structure files under a user folder (any depth), named by their path relative to it."""
    how = ("put PDB/mmCIF files (.pdb, .cif, .ent, optionally .gz; e.g. a CATH domain set or a PDB subset) "
           "in a folder")
    folder = resolve_data_root("protein", root, task_path, how)
    where = f"{task_path}: " if task_path else ""
    if not folder.is_dir():
        raise DataRootError(f"{where}field 'data.root': {folder} does not exist. Fix: {how} and pass "
                            "`--data protein=<folder>` or set data.root")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_structure_file(p))
    if not files:
        raise DataRootError(f"{where}field 'data.root': {folder} holds no structure files (.pdb, .cif, .ent, .gz). "
                            f"Fix: {how}")
    return [(str(p.relative_to(folder)), p) for p in files]


def chain_sets(source: str, root: str | None, task_path, min_length: int, max_length: int,
               eval_fraction: float, threshold: float, split_seed: int) -> tuple[list[Chain], list[Chain]]:
    files = lite_files() if source == "lite" else folder_files(root, task_path)
    chains = unique_chains(load_files(files, min_length), max_length)
    if len(chains) < 2:
        raise DataRootError(f"{task_path}: {len(chains)} usable chain(s) (>= {min_length} standard residues with "
                            "N, CA, C). Fix: give more structure files")
    return split_by_identity(chains, eval_fraction, threshold, split_seed)
