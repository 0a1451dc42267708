"""The task registry: `tasks/<family>/<name>.yaml`, validated, sweep-expanded and content-hashed.

A task id is `<family>/<name>`, plus `@field=value,...` for each point of its `sweep`
(e.g. `synthetic/codebook-scaling@codebook_size=4096`). The hash covers the whole resolved
spec, so any edit makes older results stale; `version` is bumped on changes that move numbers.
"""
from __future__ import annotations

import copy
import fnmatch
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml

from vqbench.families import get_family, list_families
from vqbench.metrics import CODE_METRICS
from vqbench.paths import project_root
from vqbench.schema import ConfigError, did_you_mean, from_dict, to_dict


# Bump when a harness change moves the numbers of unchanged tasks and submissions (the nearest-code
# search, a metric's definition, the k-means reference): every task hash changes, so every
# committed result turns stale and `run` recomputes it. 2: faiss search, metrics normalised by K.
HARNESS_NUMERICS = 2


@dataclass
class QuantizerSpec:
    dim: int  # code dimension the encoder emits and decode() returns
    codebook_size: int  # K: the rate budget is log2(K) bits per token (of the last level, when there are several)
    # Several instances of the submitted quantizer, one per level of a hierarchical model (e.g. VQ-VAE-2's
    # top and bottom), coarsest first: each level's K, the last equal to codebook_size. None: one level.
    levels: list[int] | None = None

    def validate(self) -> None:
        if self.dim < 1:
            raise ConfigError(None, "dim", f"{self.dim} is not positive", "give dim >= 1")
        if self.codebook_size < 2:
            raise ConfigError(None, "codebook_size", f"{self.codebook_size} < 2", "give codebook_size >= 2")
        if self.levels is not None:
            if len(self.levels) < 2 or min(self.levels) < 2:
                raise ConfigError(None, "levels", f"{self.levels} is not a list of two or more sizes >= 2",
                                  "give each level's K, coarsest first, or leave levels out for one level")
            if self.levels[-1] != self.codebook_size:
                raise ConfigError(None, "levels", f"the last level's K {self.levels[-1]} is not codebook_size "
                                  f"{self.codebook_size}", "make codebook_size the last (finest) level's K")

    @property
    def level_sizes(self) -> list[int]:
        """Each level's K: one instance of the submitted quantizer is built per entry."""
        return list(self.levels) if self.levels else [self.codebook_size]


@dataclass
class TrainSpec:
    steps: int  # optimizer steps; the same for every submission
    batch_size: int  # examples per step
    lr: float = 1e-3  # one learning rate for encoder, decoder and quantizer
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # max global grad norm; None disables
    amp: bool = False  # bf16 autocast on CUDA only; CPU runs stay float32 for determinism

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(None, name, f"{getattr(self, name)} is not positive", f"give {name} >= 1")
        if self.lr <= 0:
            raise ConfigError(None, "lr", f"{self.lr} is not positive", "give a learning rate > 0")


@dataclass
class Resources:
    cpus: float = 1.0  # Ray CPUs per job
    gpus: float = 0.0  # Ray GPUs per job when CUDA exists (fractions share a card)
    timeout_s: float = 900.0  # a job running longer is cancelled and recorded as failed
    memory_gb: float | None = None  # memory a job may add on top of torch; None: vqbench.sandbox's default

    def validate(self) -> None:
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ConfigError(None, "memory_gb", f"{self.memory_gb} is not positive", "give memory_gb > 0 or leave it out")


@dataclass
class TaskFile:
    family: str  # one of the registered families
    version: int  # bump on any change that moves numbers
    tier: Literal["lite", "full"]  # lite: 2-core CPU, bundled data, minutes; full: paper scale
    description: str  # one line: what the task probes
    quantizer: QuantizerSpec
    train: TrainSpec
    data: dict[str, Any] = field(default_factory=dict)  # validated by the family's Data config
    model: dict[str, Any] = field(default_factory=dict)  # validated by the family's Model config
    metrics: list[str] | None = None  # family metrics to report; None = all of the family's
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # default seeds of a run
    resources: Resources = field(default_factory=Resources)
    sweep: dict[str, list[Any]] = field(default_factory=dict)  # dotted field -> values, a grid


@dataclass(frozen=True)
class Task:
    id: str
    path: Path
    family: str
    version: int
    tier: str
    description: str
    quantizer: QuantizerSpec
    train: TrainSpec
    data: Any  # the family's Data dataclass
    model: Any  # the family's Model dataclass
    metrics: tuple[str, ...]
    seeds: tuple[int, ...]
    resources: Resources
    sweep_point: tuple[tuple[str, Any], ...] = ()

    def spec(self) -> dict[str, Any]:
        """Everything that determines the numbers, as plain data (what the hash covers)."""
        return {
            "id": self.id, "family": self.family, "version": self.version, "tier": self.tier,
            "quantizer": quantizer_spec(self.quantizer), "train": to_dict(self.train),
            "data": to_dict(self.data), "model": to_dict(self.model), "metrics": list(self.metrics),
            "harness": HARNESS_NUMERICS,
        }

    @cached_property
    def hash(self) -> str:
        blob = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def base_id(self) -> str:
        return self.id.split("@", 1)[0]


def quantizer_spec(spec: QuantizerSpec) -> dict[str, Any]:
    """The quantizer section as hashed: `levels` only where a task has several (single-level tasks keep
    the hash they had before levels existed, so their results stay current)."""
    out = to_dict(spec)
    if out.get("levels") is None:
        out.pop("levels", None)
    return out


def _set_dotted(tree: dict, dotted: str, value: Any, path: Path) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {} if part not in node else node[part]
            if not isinstance(node[part], dict):
                raise ConfigError(path, f"sweep.{dotted}", f"'{part}' is not a mapping", "sweep a nested field")
        node = node[part]
    node[leaf] = value


def _format_value(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else str(v)


def _read_top(path: Path, tasks_root: Path) -> tuple[dict, TaskFile]:
    """The raw mapping and its validated top level; the family must exist and own the folder."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(path, "<file>", f"not valid YAML: {e}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "<top level>", "expected a mapping", "see docs/tasks.md for the schema")
    top = from_dict(TaskFile, raw, path)
    families = list_families()
    if top.family not in families:
        raise ConfigError(path, "family", f"unknown family {top.family!r}",
                          f"{did_you_mean(top.family, families)}use one of {', '.join(families)} (a family is a "
                          "folder under vqbench/families/ or $VQBENCH_FAMILY_PATH)")
    folder = path.relative_to(tasks_root).parts[0]
    if folder != top.family:
        raise ConfigError(path, "family", f"{top.family!r} but the file lives in tasks/{folder}/",
                          f"move the file to tasks/{top.family}/ or fix 'family'")
    for key, values in top.sweep.items():
        if not values:
            raise ConfigError(path, f"sweep.{key}", "empty list", "give at least one value")
        if key.split(".")[0] not in ("quantizer", "train", "data", "model"):
            raise ConfigError(path, f"sweep.{key}", "can only sweep quantizer.*, train.*, data.* or model.*",
                              "write the key as e.g. quantizer.codebook_size")
    return raw, top


def _checked_metrics(resolved: TaskFile, family, path: Path) -> list[str]:
    metrics = resolved.metrics if resolved.metrics is not None else list(family.metrics)
    for i, name in enumerate(metrics):
        if name not in family.metrics:
            raise ConfigError(path, f"metrics[{i}]", f"unknown metric {name!r} for family {family.name!r}",
                              f"{did_you_mean(name, family.metrics)}use any of {', '.join(family.metrics)} "
                              f"(codebook metrics {', '.join(CODE_METRICS)} are always reported)")
    return metrics


def load_task_file(path: Path, tasks_root: Path) -> list[Task]:
    """Parse one YAML file into its tasks (one per sweep point)."""
    raw, top = _read_top(path, tasks_root)
    base_id = path.relative_to(tasks_root).with_suffix("").as_posix()
    family = get_family(top.family)
    keys = list(top.sweep)
    tasks = []
    for combo in itertools.product(*(top.sweep[k] for k in keys)) if keys else [()]:
        point = dict(zip(keys, combo))
        tree = copy.deepcopy(raw)
        tree.pop("sweep", None)
        for key, value in point.items():
            _set_dotted(tree, key, value, path)
        resolved = from_dict(TaskFile, tree, path)
        suffix = ",".join(f"{k.split('.')[-1]}={_format_value(v)}" for k, v in point.items())
        task = Task(
            id=f"{base_id}@{suffix}" if suffix else base_id,
            path=path, family=resolved.family, version=resolved.version, tier=resolved.tier,
            description=resolved.description, quantizer=resolved.quantizer, train=resolved.train,
            data=from_dict(family.Data, resolved.data, path, "data"),
            model=from_dict(family.Model, resolved.model, path, "model"),
            metrics=tuple(_checked_metrics(resolved, family, path)), seeds=tuple(resolved.seeds),
            resources=resolved.resources, sweep_point=tuple(point.items()),
        )
        if task.quantizer.levels and not family.hierarchical:
            raise ConfigError(path, "quantizer.levels", f"the {family.name} family's models quantize one level",
                              "leave quantizer.levels out, or use a family whose model takes several levels "
                              "(image with model.hierarchy: vqvae2)")
        family.check(task)
        tasks.append(task)
    return tasks


def tasks_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "tasks"


def load_registry(root: Path | None = None) -> dict[str, Task]:
    base = tasks_dir(root)
    registry: dict[str, Task] = {}
    for path in sorted(base.rglob("*.yaml")):
        for task in load_task_file(path, base):
            if task.id in registry:
                raise ConfigError(path, "<file>", f"task id {task.id!r} also defined by {registry[task.id].path}",
                                  "rename one of the files")
            registry[task.id] = task
    return registry


def list_tasks(pattern: str | list[str] = "*", tier: str | None = None, root: Path | None = None) -> list[Task]:
    """Tasks whose id matches a glob (or any of a list of globs); `synthetic/*` includes every sweep
    point of every file, and a base id like `synthetic/code-dim` selects all its points."""
    registry = load_registry(root)
    globs = [pattern] if isinstance(pattern, str) else pattern
    chosen = [t for t in registry.values()
              if any(fnmatch.fnmatch(t.id, g) or fnmatch.fnmatch(t.base_id, g) for g in globs)
              and (tier is None or t.tier == tier)]
    return sorted(chosen, key=lambda t: (t.base_id, [str(type(v)) for _, v in t.sweep_point], [v for _, v in t.sweep_point]))


def get_task(task_id: str, root: Path | None = None) -> Task:
    registry = load_registry(root)
    if task_id not in registry:
        raise ConfigError(None, "task", f"no task {task_id!r}",
                          f"{did_you_mean(task_id, registry)}list them with `vqbench tasks list`")
    return registry[task_id]


def not_applicable(submission, task) -> str | None:
    """Why `task` cannot tell `submission` apart from plain VQ (its `needs` that the task's family
    does not provide for it), or None. Such pairs are neither run nor ranked."""
    missing = [n for n in submission.meta.needs if n not in get_family(task.family).provides(task)]
    return f"needs {', '.join(missing)}, which {task.id} does not offer" if missing else None
