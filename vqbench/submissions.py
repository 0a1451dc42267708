"""Submissions: `submissions/<name>/submission.yaml` plus the quantizer's code, content-hashed.

A submission's hash covers every file in its folder (dotfiles too; tool caches aside) and a harness
adapter it names as entrypoint (vqbench.adapters), so editing its code, its params or a file it
reads makes its old results stale (they are kept on disk but never mixed into the leaderboard).
"""
from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.machinery
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from vqbench.contract import Quantizer
from vqbench.paths import project_root
from vqbench.schema import ConfigError, did_you_mean, from_dict

SUBMISSION_FILE = "submission.yaml"
KNOWN_NEEDS = {"trainable_encoder"}  # what Family.provides() may offer
# Caches that tools write beside code and that cannot change what the code does. Everything else
# counts, dotfiles included: a hidden helper module or weights file changes behaviour too.
IGNORED = ("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".ipynb_checkpoints", ".mypy_cache", ".ruff_cache")


@dataclass
class SubmissionMeta:
    name: str  # folder name; also the results folder and the CLI's --submission
    display_name: str  # shown in the leaderboard
    entrypoint: str  # "module:Class"; module is a .py file in the folder, or an importable module
    description: str = ""  # one line for the leaderboard
    authors: list[str] = field(default_factory=list)
    paper: str = ""  # URL of the paper the quantizer implements
    code: str = ""  # URL of the reference implementation
    license: str = ""  # SPDX id of the license of the code at `code` (NOASSERTION if it has none)
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the class
    # optional extra packages: import names, each optionally pinned ("vector_quantize_pytorch==1.32.0").
    # A pin is part of this file and so of the submission hash: results of another version are stale.
    requires: list[str] = field(default_factory=list)
    # what a task must offer for the method to differ from plain VQ, e.g. [trainable_encoder] for a
    # method that only changes the encoder's gradient; tasks without it are "n/a", not run or ranked
    needs: list[str] = field(default_factory=list)

    def validate(self) -> None:
        # The name becomes a folder under results/ and a code span on the leaderboard: plain characters only.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.name):
            raise ConfigError(None, "name", f"{self.name!r} is not a plain name",
                              "use letters, digits, '_', '-', '.' (at most 64), starting with a letter or digit")
        if unknown := [n for n in self.needs if n not in KNOWN_NEEDS]:
            raise ConfigError(None, "needs", f"{', '.join(map(repr, unknown))} is not something a task can offer",
                              f"use some of: {', '.join(sorted(KNOWN_NEEDS))}")
        if ":" not in self.entrypoint or not all(self.entrypoint.split(":", 1)):
            raise ConfigError(None, "entrypoint", f"{self.entrypoint!r} is not 'module:Class'",
                              "write e.g. 'entrypoint: quantizer:MyQuantizer' for quantizer.py")


@dataclass
class Submission:
    meta: SubmissionMeta
    folder: Path

    @property
    def name(self) -> str:
        return self.meta.name

    @cached_property
    def hash(self) -> str:
        digest = folder_hash(self.folder)
        if adapter := self.harness_entrypoint_file():
            # An adapter shipped with the harness is this submission's code too: editing it stales the
            # results (a third-party package is covered by its pin in `requires` instead).
            digest = hashlib.sha256(f"{digest}\0{adapter.name}\0".encode() + adapter.read_bytes()).hexdigest()[:16]
        return digest

    def harness_entrypoint_file(self) -> Path | None:
        """The source file of an entrypoint module that lives in the vqbench package, e.g. vqbench.adapters."""
        module_name = self.meta.entrypoint.split(":", 1)[0]
        if (self.folder / (module_name.replace(".", "/") + ".py")).exists() or not module_name.startswith("vqbench."):
            return None
        spec = importlib.util.find_spec(module_name)
        return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None

    def missing_requirements(self) -> list[str]:
        """The `requires` entries not satisfied here: not importable, or installed at another version."""
        missing = []
        for spec in self.meta.requires:
            module, _, pin = spec.partition("==")
            if importlib.util.find_spec(module) is None or (pin and installed_version(module) != pin):
                missing.append(spec)
        return missing

    def package_versions(self) -> dict[str, str | None]:
        """Installed version of every required package, by distribution name (for provenance)."""
        versions = {}
        for spec in self.meta.requires:
            module = spec.partition("==")[0]
            versions[distribution_name(module)] = installed_version(module)
        return versions

    def quantizer_class(self) -> type[Quantizer]:
        file = self.folder / SUBMISSION_FILE
        missing = self.missing_requirements()
        if missing:
            raise ConfigError(file, "requires", f"package(s) not installed: {', '.join(missing)}",
                              f"pip install {' '.join(missing)}")
        module_name, class_name = self.meta.entrypoint.split(":", 1)
        module_file = self.folder / (module_name.replace(".", "/") + ".py")
        try:
            if module_file.exists():
                # The folder is a package of its own (`from .layers import X` works), under a private
                # name per submission: two submissions may both ship quantizer.py.
                module = importlib.import_module(f"{self.package_name()}.{module_name}")
            else:
                module = importlib.import_module(module_name)
        except Exception as e:
            raise ConfigError(file, "entrypoint", f"importing {module_name!r} failed: {type(e).__name__}: {e}",
                              f"fix the error in {module_file if module_file.exists() else module_name}") from e
        cls = getattr(module, class_name, None)
        if cls is None:
            names = [n for n in dir(module) if not n.startswith("_")]
            raise ConfigError(file, "entrypoint", f"module {module_name!r} has no class {class_name!r}",
                              f"{did_you_mean(class_name, names)}name a class defined in {module_name}")
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise ConfigError(file, "entrypoint", f"{class_name} is not a subclass of vqbench.Quantizer",
                              "derive it from vqbench.Quantizer and implement forward() and decode()")
        return cls

    def package_name(self) -> str:
        """Register the folder as a package (its own __init__.py runs, if it has one) and return its name."""
        name = "vqbench_submission_" + re.sub(r"\W", "_", self.name) + "_" + self.hash[:8]
        if name not in sys.modules:
            init = self.folder / "__init__.py"
            spec = (importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(self.folder)])
                    if init.exists() else importlib.machinery.ModuleSpec(name, None, is_package=True))
            spec.submodule_search_locations = [str(self.folder)]
            package = importlib.util.module_from_spec(spec)
            sys.modules[name] = package
            try:
                if init.exists():
                    spec.loader.exec_module(package)
            except BaseException:
                del sys.modules[name]
                raise
        return name

    def build(self, dim: int, codebook_size: int) -> Quantizer:
        try:
            return self.quantizer_class()(dim, codebook_size, **self.meta.params)
        except TypeError as e:
            raise ConfigError(self.folder / SUBMISSION_FILE, "params", str(e),
                              "pass only keyword arguments the class's __init__ accepts") from e


def distribution_name(module: str) -> str:
    """The installed distribution that provides import name `module` (the name itself if none does)."""
    return (metadata.packages_distributions().get(module) or [module])[0]


def installed_version(module: str) -> str | None:
    try:
        return metadata.version(distribution_name(module))
    except metadata.PackageNotFoundError:
        return None


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in IGNORED):
            continue
        digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def load_submission(folder: Path | str) -> Submission:
    folder = Path(folder)
    file = folder / SUBMISSION_FILE
    if not file.exists():
        raise ConfigError(file, "<file>", "no submission.yaml", f"create {file} (see docs/submitting.md)")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(file, "<file>", f"not valid YAML: {e}", "fix the YAML syntax") from None
    meta = from_dict(SubmissionMeta, data, file)
    if meta.name != folder.name:
        raise ConfigError(file, "name", f"{meta.name!r} differs from its folder name {folder.name!r}",
                          f"set 'name: {folder.name}' or rename the folder")
    return Submission(meta, folder)


def submissions_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "submissions"


def list_submissions(pattern: str = "*", root: Path | None = None) -> list[str]:
    base = submissions_dir(root)
    names = sorted(p.name for p in base.iterdir() if (p / SUBMISSION_FILE).exists()) if base.exists() else []
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def submission_folder(name_or_path: str, root: Path | None = None) -> Path:
    """The folder of a registered name (`simvq`) or a path to a submission folder; ConfigError if
    there is none (its submission.yaml is not read here)."""
    path = Path(name_or_path)
    if path.is_dir() and (path / SUBMISSION_FILE).exists():
        return path
    folder = submissions_dir(root) / name_or_path
    if not folder.is_dir():
        known = list_submissions(root=root)
        raise ConfigError(None, "--submission", f"no submission named {name_or_path!r}",
                          f"{did_you_mean(name_or_path, known)}known: {', '.join(known) or '(none)'}")
    return folder


def get_submission(name_or_path: str, root: Path | None = None) -> Submission:
    """A registered name (`simvq`) or a path to a submission folder."""
    return load_submission(submission_folder(name_or_path, root))
