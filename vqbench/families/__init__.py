"""The family contract: everything the core asks of a task family, and how families are found.

A family is one folder, `vqbench/families/<name>/` (a package), that owns its task-file sections,
data, encoder/decoder, fidelity metrics and a README. It subclasses `Family`, decorates the class
with `@register_family("<name>")`, and registers its metrics with `vqbench.metrics.register_metric`.
The core (tasks, train loop, runner, leaderboard, cli) names no family: it reads the class below.

Folders are discovered, not listed: every package under `vqbench/families/` and under each folder
of $VQBENCH_FAMILY_PATH (os.pathsep-separated, for families kept outside the package; each becomes
`vqbench.families.<name>` too) is imported on first use. A family that fails to import is an error
naming its folder, never a silent skip.

Variable-length items (speech utterances, protein chains) never meet a padding token: training
batches are fixed-length crops, and eval batches hold items of one exact length each
(`batches_by_length`), so a (batch, tokens, dim) tensor is all real tokens and every code counted
by a metric is a code of real data. The Quantizer contract stays (batch, tokens, dim).
"""
from __future__ import annotations

import abc
import fnmatch
import importlib
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

FAMILY_PATH_ENV = "VQBENCH_FAMILY_PATH"  # extra folders holding family packages
_FAMILIES: dict[str, type[Family]] = {}
_imported: set[str] = set()  # family packages already imported


class DataError(RuntimeError):
    """Data a task needs is missing or unusable. str() is one line naming the path or source,
    the setting and the fix; the job fails with it, nothing else is lost."""


class DataRootError(DataError, FileNotFoundError):
    """A user data folder (full tier) is missing, empty or not given."""


@dataclass
class Batch:
    """One eval batch: items of one exact length (no padding) and what metrics may need beside x."""
    x: Tensor  # model input, (batch, ...); every element is real data
    ids: list[str] | None = None  # item ids, one per row (per-item and pairwise metrics)
    side: dict[str, Any] = field(default_factory=dict)  # per-item side information, e.g. per-residue labels


@dataclass
class EvalBatch:
    """What an `inputs="eval"` metric's update() receives: the batch and everything made from it
    (of a hierarchical model: its last, finest level)."""
    batch: Batch
    x_hat: Tensor  # reconstruction from decode(codes), same shape as batch.x
    z: Tensor  # encoder latents (batch, tokens, dim)
    z_hat: Tensor  # decode(codes) (batch, tokens, dim)
    codes: Tensor  # (batch, tokens) or (batch, tokens, depth)
    code_vectors: Tensor  # the decode table: row i is the vector of joint code i (see vqbench.ops.code_index)


Quantize = Callable[[int, Tensor], Tensor]  # (level, latents) -> the vectors the model goes on with


@dataclass
class Setup:
    """What a family builds for one job; the shared train loop and evaluation use nothing else.

    A task with `quantizer.levels` (several quantizer instances) gets a hierarchical model: its
    encoder is called as encoder(x, quantize) and returns the latents of every level, coarsest
    first, having called quantize(level, latents) for each in that order (a later level may be
    conditioned on what quantize returned for an earlier one, as VQ-VAE-2's bottom is on its top);
    its decoder takes the list of quantized latents. The harness supplies quantize: the submitted
    quantizer's z_q in training, the decoded codes at scoring.
    """
    encoder: nn.Module  # x -> latents (batch, tokens, dim); hierarchical: (x, quantize) -> [latents per level]
    decoder: nn.Module  # (batch, tokens, dim) -> x_hat, same shape as x; hierarchical: [per level] -> x_hat
    train_batches: Iterator[Tensor]  # endless, seeded stream of training inputs x (fixed length)
    eval_batches: Callable[[], Iterable[Tensor | Batch]]  # a fresh pass over the fixed eval set
    reconstruction_loss: Callable[[Tensor, Tensor], Tensor]  # (x_hat, x) -> scalar
    metric_context: dict[str, Any] = field(default_factory=dict)  # what its metrics' factories read
    levels: int = 1  # quantizer instances the model calls; above 1 the encoder and decoder are hierarchical

    def encode(self, x: Tensor, quantize: Quantize) -> tuple[list[Tensor], list[Tensor]]:
        """([latents per level], [what quantize returned per level]), one path for both kinds of model."""
        returned: list[Tensor] = []

        def record(level: int, z: Tensor) -> Tensor:
            if level != len(returned):
                raise RuntimeError(f"the model quantized level {level} after {len(returned)} level(s): levels "
                                   "are quantized once each, coarsest first")
            returned.append(quantize(level, z))
            return returned[-1]

        latents = [self.encoder(x)] if self.levels == 1 else list(self.encoder(x, record))
        if self.levels == 1:
            record(0, latents[0])
        if len(latents) != self.levels or len(returned) != self.levels:
            raise RuntimeError(f"the model returned {len(latents)} latents and quantized {len(returned)} levels "
                               f"of {self.levels}")
        return latents, returned

    def decode(self, quantized: list[Tensor]) -> Tensor:
        return self.decoder(quantized[0]) if self.levels == 1 else self.decoder(quantized)


class Family:
    """Base class of a task family. Subclasses set the class attributes and implement build()."""

    name: ClassVar[str]  # set by @register_family
    label: ClassVar[str] = ""  # leaderboard column label; default: the name
    Data: ClassVar[type]  # dataclass validating a task file's `data:` section
    Model: ClassVar[type]  # dataclass validating its `model:` section
    metrics: ClassVar[tuple[str, ...]]  # fidelity metrics it can report (registered metric specs)
    primary_metric: ClassVar[str]  # the headline the leaderboard overview shows and sorts by
    sources: ClassVar[tuple] = ()  # downloadable data and weights (vqbench.families.sources.Source)
    takes_data_root: ClassVar[bool] = False  # full tier reads a user folder: `--data <name>=PATH`
    hierarchical: ClassVar[bool] = False  # its models can take several quantizer levels (task quantizer.levels)
    legacy_data_root: ClassVar[bool] = False  # the family the deprecated `--data-root PATH` configures

    @classmethod
    def check(cls, task) -> None:
        """Cross-section rules of a resolved task; raise vqbench.schema.ConfigError naming the field."""

    @classmethod
    def provides(cls, task) -> frozenset[str]:
        """What a job of this task offers a quantizer to act through; a submission whose `needs` are
        not all here is not applicable to it (vqbench.runner.not_applicable). Known names:
        `trainable_encoder` (the encoder has parameters the quantizer's gradient reaches)."""
        return frozenset({"trainable_encoder"})

    @classmethod
    def prepare(cls, task) -> None:
        """Derived data a job reads (parsed files, rendered corpora, split tables) written to the cache
        by harness code before the confined stages start: they see every file system read-only. Runs
        after the family's sources are fetched; raise DataError if the data is unusable (the job fails
        with that message). Default: nothing to prepare."""

    @classmethod
    @abc.abstractmethod
    def build(cls, task, seed: int, device: torch.device) -> Setup:
        """Data, encoder/decoder, loss and metric context for one job (seeded by `seed`); every family
        implements it (register_family refuses one that does not)."""


def register_family(name: str):
    def wrap(cls):
        from vqbench.metrics import METRICS
        where = f"{cls.__module__}.{cls.__qualname__}"
        missing = [a for a in ("Data", "Model", "metrics", "primary_metric") if not hasattr(cls, a)]
        if issubclass(cls, Family) and getattr(cls.build, "__isabstractmethod__", False):
            missing.append("build()")
        if missing or not issubclass(cls, Family):
            raise TypeError(f"{where}: a family subclasses vqbench.families.Family, sets Data, Model, metrics "
                            f"and primary_metric and implements build() (missing: {', '.join(missing) or 'the base class'})")
        unknown = [m for m in (*cls.metrics, cls.primary_metric) if m not in METRICS]
        if unknown:
            raise TypeError(f"{where}: metric(s) {', '.join(unknown)} are not registered; call "
                            "vqbench.metrics.register_metric before the class")
        if name in _FAMILIES and _FAMILIES[name].__module__ != cls.__module__:
            raise TypeError(f"{where}: family {name!r} is already registered by {_FAMILIES[name].__module__}")
        cls.name = name
        cls.label = cls.label or name
        _FAMILIES[name] = cls
        return cls
    return wrap


def family_folders() -> list[Path]:
    """Where family packages are looked for: the built-in folder, then $VQBENCH_FAMILY_PATH."""
    extra = [Path(p).resolve() for p in os.environ.get(FAMILY_PATH_ENV, "").split(os.pathsep) if p]
    return [Path(__file__).parent, *extra]


def _extend_package_path() -> None:
    """Folders of $VQBENCH_FAMILY_PATH join this package's search path, so an outside family is
    `vqbench.families.<name>` like a built-in one: its task objects unpickle in any worker that has
    the variable (the runner forwards it to Ray workers)."""
    for folder in family_folders()[1:]:
        if str(folder) not in __path__:
            __path__.append(str(folder))


_extend_package_path()


def _discover() -> None:
    _extend_package_path()
    found: dict[str, Path] = {}
    for base in map(Path, list(__path__)):
        for folder in sorted(base.iterdir()) if base.is_dir() else ():
            if (folder / "__init__.py").is_file() and not folder.name.startswith(("_", ".")):
                if folder.name in found and found[folder.name] != folder:
                    from vqbench.schema import ConfigError
                    raise ConfigError(folder, "family", f"a family named {folder.name!r} already lives in "
                                      f"{found[folder.name]}", "rename the folder (a family name is unique)")
                found[folder.name] = folder
    for name, folder in found.items():
        if name not in _imported:
            _import_family(name, folder)
            _imported.add(name)


def _import_family(name: str, folder: Path) -> None:
    try:
        importlib.import_module(f"{__name__}.{name}")
    except Exception as e:
        from vqbench.schema import ConfigError
        raise ConfigError(folder / "__init__.py", "family", f"the {name!r} family failed to import: "
                          f"{type(e).__name__}: {e}", "install what it needs (pip install -e '.[pinned]') or "
                          "fix the error; every family folder must import") from e


def list_families(pattern: str = "*") -> list[str]:
    _discover()
    return sorted(n for n in _FAMILIES if fnmatch.fnmatch(n, pattern))


def get_family(name: str) -> type[Family]:
    _discover()
    return _FAMILIES[name]


def data_root_env(family: str) -> str:
    """The environment variable `vqbench run --data <family>=PATH` sets (forwarded to Ray workers)."""
    return f"VQBENCH_DATA_{family.upper().replace('-', '_')}"


def resolve_data_root(family: str, configured: str | None, task_path: Path | str | None, how_to_get: str,
                      legacy_env: str | None = None) -> Path:
    """`--data <family>=PATH` (or a legacy variable) wins over the task file's data.root."""
    env = data_root_env(family)
    chosen = os.environ.get(env) or (os.environ.get(legacy_env) if legacy_env else None) or configured
    if not chosen:
        where = f"{task_path}: " if task_path else ""
        raise DataRootError(f"{where}field 'data.root': no data folder given. Fix: {how_to_get}, then pass "
                            f"`--data {family}=<root>`, set {env}=<root> or write data.root in the task file")
    return Path(chosen).expanduser()


def endless(make_batch: Callable[[torch.Generator], Tensor], seed: int) -> Iterator[Tensor]:
    """An infinite seeded stream: the same seed gives the same batches in the same order."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield make_batch(gen)


def to_device(batches: Iterator[Tensor], device: torch.device | str, ahead: int = 2) -> Iterator[Tensor]:
    """`batches` on `device`, in the same order. On CUDA a thread makes up to `ahead` batches in
    advance into pinned memory and each is copied without blocking the host, so the GPU does not
    wait while the CPU samples the next batch (bench/gpu_train.py). The thread starts at the first
    batch asked for: a stage that builds a Setup but never trains starts nothing."""
    device = torch.device(device)
    if device.type != "cuda":
        return (x.to(device) for x in batches)
    return _prefetched(batches, device, ahead)


_END = object()


def _prefetched(batches: Iterator[Tensor], device: torch.device, ahead: int) -> Iterator[Tensor]:
    ready: queue.Queue = queue.Queue(maxsize=ahead)

    def produce() -> None:
        try:
            for x in batches:
                ready.put(x.pin_memory())
            ready.put(_END)
        except BaseException as e:  # handed to the consumer, raised where the batch was asked for
            ready.put(e)

    threading.Thread(target=produce, daemon=True, name="vqbench-prefetch").start()
    while (x := ready.get()) is not _END:
        if isinstance(x, BaseException):
            raise x
        yield x.to(device, non_blocking=True)


def batches_by_length(items: Sequence[tuple[str, Tensor]], max_tokens: int, length_dim: int = 0,
                      side: Callable[[str], dict[str, Any]] | None = None) -> list[Batch]:
    """Eval batches of variable-length items without padding: items of one exact length share a
    batch (up to `max_tokens` tokens), in a fixed order (length, then id). `side(id)` gives an
    item's side information; values that are tensors are stacked, others collected in lists."""
    by_length: dict[int, list[tuple[str, Tensor]]] = {}
    for item_id, x in items:
        by_length.setdefault(int(x.shape[length_dim]), []).append((item_id, x))
    batches = []
    for length in sorted(by_length):
        group = sorted(by_length[length], key=lambda it: it[0])
        per_batch = max(1, max_tokens // max(1, length))
        for i in range(0, len(group), per_batch):
            chunk = group[i:i + per_batch]
            ids = [item_id for item_id, _ in chunk]
            info = [side(item_id) for item_id in ids] if side else []
            merged = {k: (torch.stack([d[k] for d in info]) if isinstance(info[0][k], Tensor) else [d[k] for d in info])
                      for k in (info[0] if info else {})}
            batches.append(Batch(torch.stack([x for _, x in chunk]), ids, merged))
    return batches
