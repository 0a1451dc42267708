"""The protein family's data: parser (PDB, mmCIF, chain breaks, malformed files), the identity split,
the full-tier folder errors, per-protein usage arithmetic and no padding in eval batches."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import torch

from vqbench.families import Batch, DataRootError, EvalBatch, get_family
from vqbench.families.protein.data import identity, split_by_identity, unique_chains
from vqbench.families.protein.metrics import CodeCosine, ProteinUsage, symbols
from vqbench.families.protein.structures import (Chain, MalformedStructure, load_chains, load_files,
                                                 parse_structure)
from vqbench.tasks import get_task
from test_protein_geometry import helix_then_strand

AMINO = "ARNDCQEGHILKMFPSTWYV"
THREE = ["ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
         "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL"]


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VQBENCH_HOME", str(tmp_path / "home"))  # parse and identity caches


def random_sequence(n: int, rng) -> str:
    return "".join(rng.choice(list(AMINO), n))


def pdb_text(chains: dict[str, tuple[str, np.ndarray]], hetero: bool = False) -> str:
    """ATOM records (N, CA, C of each residue) of {chain id: (sequence, (L, 3, 3) coords)}."""
    lines, serial = [], 1
    for cid, (seq, xyz) in chains.items():
        for i, (aa, res) in enumerate(zip(seq, xyz)):
            for name, (x, y, z) in zip(("N", "CA", "C"), res):
                lines.append(f"ATOM  {serial:5d}  {name:<3s} {THREE[AMINO.index(aa)]} {cid}{i + 1:4d}    "
                             f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00 {10 + i % 7:5.2f}           {name[0]}")
                serial += 1
        lines.append("TER")
    if hetero:
        lines.append(f"HETATM{serial:5d}  O   HOH W   1       0.000   0.000   0.000  1.00  0.00           O")
    return "\n".join(lines + ["END"]) + "\n"


def write_protein(path, rng, lengths=(80,), gap_at: int | None = None, seed=0):
    chains = {}
    for k, n in enumerate(lengths):
        xyz = helix_then_strand(n, seed + k)
        if gap_at is not None and k == 0:
            xyz[gap_at:] += np.array([0.0, 0.0, 12.0])  # unmodelled residues: C(i)-N(i+1) far apart
        chains["ABCDEFGH"[k]] = (random_sequence(n, rng), xyz)
    path.write_text(pdb_text(chains, hetero=True))
    return chains


def test_parser_reads_pdb_and_mmcif_splits_breaks_and_drops_short_chains(tmp_path):
    from Bio.PDB import MMCIFIO, PDBParser
    rng = np.random.default_rng(0)
    truth = write_protein(tmp_path / "x.pdb", rng, lengths=(130, 40, 60), gap_at=70)
    chains = parse_structure(tmp_path / "x.pdb")
    assert [c.id for c in chains] == ["x.pdb:A/0", "x.pdb:A/1", "x.pdb:C"]  # B has 40 < 50 residues
    assert [len(c) for c in chains] == [70, 60, 60]
    assert chains[0].sequence + chains[1].sequence == truth["A"][0]
    assert np.allclose(chains[2].coords[:, :3], truth["C"][1], atol=1e-3) and np.isnan(chains[2].coords[:, 3]).all()
    assert chains[2].bfactors[:3].tolist() == [10, 11, 12]
    io = MMCIFIO()
    io.set_structure(PDBParser(QUIET=True).get_structure("x", tmp_path / "x.pdb"))
    io.save(str(tmp_path / "x.cif"))
    from_cif = parse_structure(tmp_path / "x.cif")
    assert [c.sequence for c in from_cif] == [c.sequence for c in chains]
    assert all(np.allclose(a.coords[:, :3], b.coords[:, :3]) for a, b in zip(from_cif, chains))
    assert [c.id for c in load_chains(tmp_path / "x.pdb", name="sub/y.pdb")] == \
        ["sub/y.pdb:A/0", "sub/y.pdb:A/1", "sub/y.pdb:C"]  # cached by content, named by the caller


def test_malformed_file_is_skipped_with_a_warning_naming_it(tmp_path):
    (tmp_path / "bad.cif").write_text("data_bad\nloop_\n_atom_site.group_PDB\nATOM\nnot a structure\n")
    write_protein(tmp_path / "good.pdb", np.random.default_rng(1))
    with pytest.raises(MalformedStructure, match="bad.cif"):
        parse_structure(tmp_path / "bad.cif")
    with pytest.warns(UserWarning, match=r"malformed structure file .*bad\.cif"):
        chains = load_files([("bad.cif", tmp_path / "bad.cif"), ("good.pdb", tmp_path / "good.pdb")])
    assert [c.id for c in chains] == ["good.pdb:A"]


def test_split_keeps_similar_sequences_on_one_side():
    rng = np.random.default_rng(2)
    chains = []
    for family in range(10):
        base = random_sequence(int(rng.integers(60, 120)), rng)
        for copy in range(3):  # mutants at ~20% and a truncation: one identity cluster
            seq = "".join(a if rng.random() > 0.2 else rng.choice(list(AMINO)) for a in base)[copy * 5:]
            chains.append(Chain(f"f{family}c{copy}", seq, np.zeros((len(seq), 4, 3), np.float32),
                                np.zeros(len(seq), np.float32)))
    chains = unique_chains(chains + [chains[0]], max_length=512)  # an exact duplicate is dropped
    assert len(chains) == 30
    train, held = split_by_identity(chains, 0.2, 0.3, seed=0)
    assert len(held) == 6 and len(train) == 24
    cross = max(identity(a.sequence, b.sequence) for a in train for b in held)
    assert cross < 0.3
    families = lambda side: {c.id.split("c")[0] for c in side}  # noqa: E731
    assert not families(train) & families(held)


def test_missing_root_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("VQBENCH_DATA_PROTEIN", raising=False)
    task = get_task("protein/full@codebook_size=512")
    family = get_family("protein")
    with pytest.raises(DataRootError, match=r"data\.root.*no data folder given.*--data protein="):
        family.build(task, 0, torch.device("cpu"))
    missing = dataclasses.replace(task, data=dataclasses.replace(task.data, root=str(tmp_path / "nowhere")))
    with pytest.raises(DataRootError, match=r"nowhere does not exist\. Fix: put PDB/mmCIF"):
        family.build(missing, 0, torch.device("cpu"))


def test_folder_build_evaluates_whole_chains_without_padding(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "pdbs").mkdir()
    for i in range(12):
        write_protein(tmp_path / "pdbs" / f"p{i}.pdb", rng, lengths=(int(rng.integers(50, 90)),), seed=i)
    task = get_task("protein/lite@codebook_size=256")
    task = dataclasses.replace(task, data=dataclasses.replace(task.data, source="folder", root=str(tmp_path / "pdbs"),
                                                              crop=48, eval_fraction=0.25))
    setup = get_family("protein").build(task, 0, torch.device("cpu"))
    assert setup.metric_context["eval_chains"] == 3 and setup.metric_context["train_chains"] == 9
    x = next(setup.train_batches)
    assert x.shape == (task.train.batch_size, 48, 3, 3)
    tokens = 0
    for batch in setup.eval_batches():
        lengths = {len(s) for s in batch.side["sequence"]}
        assert lengths == {batch.x.shape[1]} and torch.isfinite(batch.x).all()  # one exact length, no padding
        z = setup.encoder(batch.x)
        assert setup.decoder(z).shape == batch.x.shape
        tokens += z.shape[0] * z.shape[1]
    assert tokens == sum(len(s) for b in setup.eval_batches() for s in b.side["sequence"])


def eval_batch(codes: torch.Tensor, z_hat: torch.Tensor | None = None, table=None) -> EvalBatch:
    b, n = codes.shape[:2]
    z_hat = torch.randn(b, n, 4) if z_hat is None else z_hat
    return EvalBatch(Batch(torch.zeros(b, n, 3, 3), [f"p{i}" for i in range(b)], {}), torch.zeros(b, n, 3, 3),
                     z_hat, z_hat, codes, table)


def test_per_protein_usage_arithmetic():
    ur, ppl = ProteinUsage(8, "ur"), ProteinUsage(8, "ppl")
    for m in (ur, ppl):
        m.update(eval_batch(torch.tensor([[0, 0, 1, 2]])))
        m.update(eval_batch(torch.tensor([[5, 5, 5, 5], [1, 2, 3, 4]])))
    assert ur.compute() == pytest.approx(np.mean([3 / 8, 1 / 8, 4 / 8]))
    h = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    assert ppl.compute() == pytest.approx(np.mean([np.exp(h) / 8, 1 / 8, 4 / 8]))
    depth2 = torch.tensor([[[0, 1], [0, 1], [1, 0]]])  # residual codes: a tuple is one token
    assert symbols(depth2)[0].unique().numel() == 2


def test_code_cosine_raw_and_usage_weighted():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    raw = CodeCosine(False)
    raw.update(eval_batch(torch.tensor([[0, 1]]), table=table))
    assert raw.compute() == pytest.approx((0 + -1 + 0) * 2 / 6)
    used = CodeCosine(True)
    codes = torch.tensor([[0, 0, 0, 1]])
    used.update(eval_batch(codes, z_hat=table[codes]))
    assert used.compute() == pytest.approx(0.0)  # only codes 0 and 1 used: orthogonal
