"""Backbone chains from PDB and mmCIF files (biopython's Bio.PDB parsers), cached by content hash.

A chain here is a run of standard amino acids that all have N, CA and C (O kept where present),
from the first model of a file. Chain breaks (a residue missing those atoms, a non-standard
residue, or a C(i)-N(i+1) distance above BREAK_ANGSTROM, i.e. unmodelled residues) split a chain
into segments; every segment of at least `min_length` residues is one item. Splitting keeps each
item a continuous polymer, so its torsions and neighbour distances are real geometry, never a
jump across a gap.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqbench.cache import read_verified, write_verified
from vqbench.paths import cache_home

BREAK_ANGSTROM = 2.0  # a peptide C-N bond is 1.33 A; anything above 2 A is a gap in the model
STANDARD = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
            "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL")
ONE_LETTER = dict(zip(STANDARD, "ARNDCQEGHILKMFPSTWYV"))
STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")
PARSER_VERSION = 1  # bump when parsing changes: names the cache


@dataclass
class Chain:
    id: str  # "<file name>:<chain id>", with "/<segment>" when a break split the chain
    sequence: str  # one letter per residue
    coords: np.ndarray  # (length, 4, 3) float32: N, CA, C, O in Angstrom; O is NaN where absent
    bfactors: np.ndarray  # (length,) float32, B-factor of each CA

    def __len__(self) -> int:
        return len(self.sequence)


class MalformedStructure(ValueError):
    """A file biopython could not read as a structure (or that holds no model)."""


def is_structure_file(path: Path) -> bool:
    return path.name.lower().endswith(STRUCTURE_SUFFIXES)


def _text(path: Path) -> str:
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def parse_structure(path: Path, min_length: int = 50) -> list[Chain]:
    """Chains of the first model with >= min_length residues; MalformedStructure if unreadable."""
    from Bio.PDB import MMCIFParser, PDBParser
    name = path.name.lower()
    cif = ".cif" in name or ".mmcif" in name
    parser = MMCIFParser(QUIET=True) if cif else PDBParser(QUIET=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = parser.get_structure(path.name, io.StringIO(_text(path)))
    except Exception as e:  # biopython raises ValueError, KeyError, PDBConstructionException...
        raise MalformedStructure(f"{path}: {type(e).__name__}: {e}") from None
    models = list(structure)
    if not models:
        raise MalformedStructure(f"{path}: no model (not a PDB/mmCIF coordinate file?)")
    out = []
    for chain in models[0]:
        out += _segments(chain, path.name, min_length)
    return out


def _segments(chain, file_name: str, min_length: int) -> list[Chain]:
    runs, run = [], []
    for res in chain:
        usable = res.id[0] == " " and res.get_resname() in ONE_LETTER and all(a in res for a in ("N", "CA", "C"))
        if not usable:  # a gap in the polymer (water and ligands only ever follow it)
            runs, run = runs + [run], []
            continue
        if run and np.linalg.norm(run[-1]["C"].coord - res["N"].coord) > BREAK_ANGSTROM:
            runs, run = runs + [run], []
        run.append(res)
    runs = [r for r in runs + [run] if len(r) >= min_length]
    out = []
    for k, residues in enumerate(runs):
        coords = np.full((len(residues), 4, 3), np.nan, dtype=np.float32)
        for i, res in enumerate(residues):
            for j, atom in enumerate(("N", "CA", "C", "O")):
                if atom in res:
                    coords[i, j] = res[atom].coord
        suffix = f"/{k}" if len(runs) > 1 else ""
        out.append(Chain(f"{file_name}:{chain.id}{suffix}", "".join(ONE_LETTER[r.get_resname()] for r in residues),
                         coords, np.array([r["CA"].bfactor for r in residues], dtype=np.float32)))
    return out


def _cache_path(digest: str, min_length: int) -> Path:
    return cache_home() / "protein" / "chains" / f"{digest}-min{min_length}-v{PARSER_VERSION}.pkl"


def load_chains(path: Path, min_length: int = 50, name: str | None = None) -> list[Chain]:
    """parse_structure, cached under $VQBENCH_HOME/protein/chains by the file's sha256 (a renamed
    copy is not parsed twice; an edited file is). Chain ids start with `name` (default: the file's
    name)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    cached = _cache_path(digest, min_length)
    if (data := read_verified(cached)) is not None:
        chains = pickle.loads(data)
    else:
        chains = parse_structure(path, min_length)
        write_verified(cached, pickle.dumps(chains))
    for c in chains:
        c.id = f"{name or path.name}:{c.id.rsplit(':', 1)[1]}"
    return chains


def load_files(files: list[tuple[str, Path]], min_length: int = 50) -> list[Chain]:
    """Chains of many (name, path) files; a malformed file is skipped with a warning naming it."""
    chains = []
    for name, path in files:
        try:
            chains += load_chains(path, min_length, name)
        except MalformedStructure as e:
            warnings.warn(f"skipping malformed structure file {e}", stacklevel=2)
    return chains
