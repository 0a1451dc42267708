"""Synthetic collapse probes: no data to download, every number reproducible to the seed.

Data are samples in R^ambient_dim from a Gaussian mixture or a curved low-dimensional manifold,
optionally shifted and scaled away from where codebooks are initialised. Each sample is one
token. The encoder/decoder is the identity (the quantizer sees the data directly) or an MLP of
the task's width and depth. Fidelity is reported as the MSE and as the ratio of that MSE to a
strong k-means optimum of the eval set with as many centres as the task's K: no quantizer with
K codes can do better than the k-means optimum, so the ratio is about >= 1, lower is better.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from vqbench.families import Family, Setup, endless, register_family, to_device
from vqbench.kmeans import cached_kmeans_mse
from vqbench.metrics import MeanSquaredError, register_metric
from vqbench.schema import ConfigError


class DistortionRatio(MeanSquaredError):
    """MSE / the MSE of a strong k-means optimum with the same number of codes (>= 1 up to k-means
    being only near-optimal; lower is better, 1 means the quantizer is as good as k-means)."""

    def __init__(self, reference_mse: float):
        super().__init__()
        self.reference_mse = reference_mse

    def compute(self) -> float:
        return super().compute() / self.reference_mse


def distortion_ratio(ctx) -> DistortionRatio:
    """The reference is computed (once per data and K, then cached) when the metric is built: only in
    the scoring process, which never runs submission code."""
    k = ctx.task.quantizer.codebook_size
    reference = cached_kmeans_mse(ctx.context["eval_set"], k, key=ctx.context["data_key"], n_init=3 if k <= 1024 else 1)
    return DistortionRatio(reference).to(ctx.device)


register_metric("distortion_ratio", False, "MSE / MSE of a strong k-means optimum with K centres (>= ~1)", ".3f",
                label="distortion ratio", factory=distortion_ratio)


@dataclass
class Data:
    kind: Literal["gaussian_mixture", "manifold"] = "gaussian_mixture"
    ambient_dim: int = 16  # dimension of each sample
    intrinsic_dim: int = 4  # manifold: dimension of the curved surface the data lie on
    num_clusters: int = 4096  # gaussian_mixture: components, more than K so every code is useful
    cluster_std: float = 0.1  # gaussian_mixture: spread of each component around its centre
    shift: float = 0.0  # added to every coordinate: moves the data away from the codebook init
    scale: float = 1.0  # multiplies the (unit-variance) data before the shift
    eval_size: int = 16384  # fixed eval samples; should be several times K for utilization
    data_seed: int = 1234  # fixes the distribution and the eval set, shared by all seeds

    def validate(self) -> None:
        if self.kind == "manifold" and self.intrinsic_dim > self.ambient_dim:
            raise ConfigError(None, "intrinsic_dim", f"{self.intrinsic_dim} > ambient_dim {self.ambient_dim}",
                              "give intrinsic_dim <= ambient_dim")
        if self.scale <= 0:
            raise ConfigError(None, "scale", f"{self.scale} is not positive", "give scale > 0")


@dataclass
class Model:
    encoder: Literal["identity", "mlp"] = "mlp"  # identity: the quantizer sees the data itself
    width: int = 128  # mlp hidden units
    depth: int = 2  # mlp hidden layers (0 = one linear map)


class Distribution:
    """The task's data distribution; its parameters depend on data_seed only."""

    def __init__(self, data: Data):
        self.data = data
        gen = torch.Generator().manual_seed(data.data_seed)
        if data.kind == "gaussian_mixture":
            self.centres = torch.randn(data.num_clusters, data.ambient_dim, generator=gen)
        else:  # a fixed random tanh network lifts the intrinsic coordinates into ambient space
            hidden = 4 * data.ambient_dim
            self.w1 = torch.randn(data.intrinsic_dim, hidden, generator=gen) * 1.5
            self.b1 = torch.rand(hidden, generator=gen) * 2 - 1
            self.w2 = torch.randn(hidden, data.ambient_dim, generator=gen) / hidden ** 0.5
        # Standardise once on a large sample so `scale` and `shift` mean what they say.
        raw = self._raw(65536, gen)
        self.mean, self.std = raw.mean(0), raw.std(0).mean()
        self.eval_set = self.sample(data.eval_size, gen)

    def _raw(self, n: int, gen: torch.Generator) -> Tensor:
        d = self.data
        if d.kind == "gaussian_mixture":
            idx = torch.randint(d.num_clusters, (n,), generator=gen)
            return self.centres[idx] + d.cluster_std * torch.randn(n, d.ambient_dim, generator=gen)
        u = torch.rand(n, d.intrinsic_dim, generator=gen) * 2 - 1
        return torch.tanh(u @ self.w1 + self.b1) @ self.w2

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        return (self._raw(n, gen) - self.mean) / self.std * self.data.scale + self.data.shift

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self.data), sort_keys=True).encode()).hexdigest()[:16]


def mlp(d_in: int, d_out: int, width: int, depth: int) -> nn.Module:
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.GELU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, d_out))


class Tokens(nn.Module):
    """Wraps a per-sample map so the quantizer sees (batch, tokens=1, dim)."""

    def __init__(self, net: nn.Module, to_tokens: bool):
        super().__init__()
        self.net, self.to_tokens = net, to_tokens

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).unsqueeze(1) if self.to_tokens else self.net(x.squeeze(1))


@register_family("synthetic")
class Synthetic(Family):
    Data = Data
    Model = Model
    metrics = ("mse", "distortion_ratio")
    primary_metric = "distortion_ratio"

    @classmethod
    def check(cls, task) -> None:
        if task.model.encoder == "identity" and task.data.ambient_dim != task.quantizer.dim:
            raise ConfigError(task.path, "quantizer.dim",
                              f"{task.quantizer.dim} but the identity encoder passes ambient_dim "
                              f"{task.data.ambient_dim} through", "make quantizer.dim equal data.ambient_dim")

    @classmethod
    def provides(cls, task) -> frozenset[str]:
        # an identity encoder has no parameters: a method that only changes the encoder's gradient is plain VQ here
        return frozenset() if task.model.encoder == "identity" else frozenset({"trainable_encoder"})

    @classmethod
    def build(cls, task, seed: int, device: torch.device) -> Setup:
        data, model, dim = task.data, task.model, task.quantizer.dim
        dist = Distribution(data)
        if model.encoder == "identity":
            encoder, decoder = Tokens(nn.Identity(), True), Tokens(nn.Identity(), False)
        else:
            encoder = Tokens(mlp(data.ambient_dim, dim, model.width, model.depth), True)
            decoder = Tokens(mlp(dim, data.ambient_dim, model.width, model.depth), False)
        eval_set = dist.eval_set.to(device)
        batch = task.train.batch_size
        eval_batch = 4096

        def eval_batches():
            return (eval_set[i:i + eval_batch] for i in range(0, len(eval_set), eval_batch))

        return Setup(
            encoder=encoder.to(device),
            decoder=decoder.to(device),
            train_batches=to_device(endless(lambda g: dist.sample(batch, g), seed), device),
            eval_batches=eval_batches,
            reconstruction_loss=nn.functional.mse_loss,
            metric_context={"eval_set": eval_set, "data_key": dist.key},  # for the k-means reference
        )
