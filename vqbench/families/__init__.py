"""Task families: each turns a task spec into data, an encoder/decoder and fidelity metrics.

A family is a class registered with `@register_family(name)` that declares
  Data, Model       dataclasses validating the task YAML's `data:` and `model:` sections
  metrics           names of the fidelity metrics it can report (see vqbench.metrics.METRICS)
  primary_metric    the one the leaderboard overview summarises
  build(task, seed, device) -> Setup
The training loop (vqbench.train) is shared; a family only says what goes around the quantizer.
"""
from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

_FAMILIES: dict[str, type] = {}
_BUILTIN = ("synthetic", "image", "audio", "protein")  # modules under vqbench/families/


@dataclass
class Setup:
    encoder: nn.Module  # x -> latents (batch, tokens, dim)
    decoder: nn.Module  # (batch, tokens, dim) -> x_hat, same shape as x
    train_batches: Iterator[Tensor]  # endless, seeded stream of training inputs x
    eval_batches: Callable[[], Iterable[Tensor]]  # a fresh pass over the fixed eval set
    reconstruction_loss: Callable[[Tensor, Tensor], Tensor]  # (x_hat, x) -> scalar
    fidelity_metrics: dict[str, object]  # name -> streaming metric with update(x_hat, x), compute()


def register_family(name: str):
    def wrap(cls):
        cls.name = name
        _FAMILIES[name] = cls
        return cls
    return wrap


def _import_builtins() -> None:
    for module in _BUILTIN:
        try:
            importlib.import_module(f"vqbench.families.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"vqbench.families.{module}":
                raise


def list_families(pattern: str = "*") -> list[str]:
    _import_builtins()
    return sorted(n for n in _FAMILIES if fnmatch.fnmatch(n, pattern))


def get_family(name: str):
    _import_builtins()
    return _FAMILIES[name]


def endless(make_batch: Callable[[torch.Generator], Tensor], seed: int) -> Iterator[Tensor]:
    """An infinite seeded stream: the same seed gives the same batches in the same order."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield make_batch(gen)
