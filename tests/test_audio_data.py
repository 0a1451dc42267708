"""The audio family's data: the LibriTTS-style folder source, the espeak-ng corpus (deterministic,
disjoint train/eval sentences and voices), the real-speech eval cut, crops and eval batches."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import soundfile
import torch

from vqbench.families import DataRootError, get_family
from vqbench.families.audio import data, espeak
from vqbench.families.audio.sources import SOURCES
from vqbench.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_wav(path, seconds: float, rate: int, freq: float = 220.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def libritts(root, rate=24000):
    """<root>/<split>/<speaker>/<chapter>/<utt>.wav, with one corrupt file in the test split."""
    for split, n in (("train-clean-100", 3), ("test-clean", 2)):
        for i in range(n):
            write_wav(root / split / f"{100 + i}" / "5" / f"{100 + i}_5_{i:06d}.wav", 0.5 + 0.25 * i, rate, 200 + 30 * i)
    (root / "test-clean" / "999" / "5" / "999_5_000000.wav").parent.mkdir(parents=True)
    (root / "test-clean" / "999" / "5" / "999_5_000000.wav").write_bytes(b"RIFF\x00\x00not audio")
    return root


def test_folder_loader_resamples_trims_and_skips_a_corrupt_file(tmp_path):
    root = libritts(tmp_path / "LibriTTS", rate=22050)
    files = data.audio_files(root, "test-clean")
    assert len(files) == 3
    with pytest.warns(UserWarning, match=r"skipping .*999_5_000000\.wav"):
        items = data.folder_utterances(files, root, 16000, hop=320)
    assert [k for k, _ in items] == ["test-clean/100/5/100_5_000000.wav", "test-clean/101/5/101_5_000001.wav"]
    assert [len(x) for _, x in items] == [8000 // 320 * 320, 12000 // 320 * 320]  # resampled, whole tokens
    assert items[0][1].dtype == np.float32 and abs(np.abs(items[0][1]).max() - 0.3) < 0.02


def test_missing_or_empty_root_names_path_setting_and_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("VQBENCH_DATA_AUDIO", raising=False)
    with pytest.raises(DataRootError, match=r"data\.root.*--data audio=<root>"):
        data.resolve_root(None)
    with pytest.raises(DataRootError, match=rf"{tmp_path}/nope/test-clean does not exist.*openslr\.org/60"):
        data.audio_files(tmp_path / "nope", "test-clean", "tasks/audio/libritts.yaml")
    (tmp_path / "empty" / "test-clean").mkdir(parents=True)
    with pytest.raises(DataRootError, match=r"holds no \.wav/\.flac files"):
        data.audio_files(tmp_path / "empty", "test-clean")


def test_full_tier_builds_from_a_folder(tmp_path, monkeypatch):
    root = libritts(tmp_path / "LibriTTS")
    monkeypatch.setenv("VQBENCH_DATA_AUDIO", str(root))
    task = get_task("audio/libritts@codebook_size=4096")
    task = dataclasses.replace(task, model=dataclasses.replace(task.model, channels=4, gan_weight=0.0),
                               train=dataclasses.replace(task.train, batch_size=2),
                               quantizer=dataclasses.replace(task.quantizer, dim=4))
    with pytest.warns(UserWarning, match="999_5_000000"):
        setup = get_family("audio").build(task, 0, torch.device("cpu"))
    x = next(setup.train_batches)
    assert x.shape == (2, 1, 24000)
    batches = list(setup.eval_batches())
    assert sorted(i for b in batches for i in b.ids) == ["test-clean/100/5/100_5_000000.wav",
                                                         "test-clean/101/5/101_5_000001.wav"]
    assert setup.metric_context["tokens_per_second"] == 75


def test_sentences_are_seeded_and_disjoint():
    a = data.corpus_items(50, 0, data.TRAIN_VARIANTS)
    assert a == data.corpus_items(50, 0, data.TRAIN_VARIANTS)
    b = data.corpus_items(20, 1, data.EVAL_VARIANTS, exclude={i["text"] for i in a})
    assert not {i["text"] for i in a} & {i["text"] for i in b}
    assert not {i["voice"] for i in a} & {i["voice"] for i in b}  # no voice heard in both
    assert len({i["voice"].split("+")[0] for i in a}) >= 4 and len({i["rate"] for i in a}) == 3
    assert len({len(i["text"].split()) for i in a}) >= 8  # varied lengths


def test_espeak_sources_are_listed():
    assert {s.name for s in get_family("audio").sources} == {s.name for s in SOURCES}
    assert all(len(d) == 64 for s in SOURCES for d in s.members.values())


@pytest.mark.network
def test_synthesis_is_deterministic_and_cached(monkeypatch):
    items = data.corpus_items(3, 7, data.TRAIN_VARIANTS)
    items[1]["voice"] = "en+f2"  # a variant with breath noise: random numbers espeak-ng seeds from the clock
    first = espeak.render(items)
    assert all(w.dtype == np.int16 and len(w) > espeak.SAMPLE_RATE // 2 for w in first)
    key = espeak.spec_key(items)
    cached = espeak.cache_home() / "audio" / f"espeak-{key}.npz"
    assert cached.is_file()
    cached.unlink()  # render again in a fresh process: same bits
    again = espeak.render(items)
    assert espeak.content_hash(first) == espeak.content_hash(again)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


@pytest.mark.network
def test_real_speech_is_cut_at_speaker_turns():
    items = data.real_utterances(16000)
    assert len(items) == 10 and all(k.startswith("real/") for k, _ in items)
    assert math.isclose(sum(len(x) for _, x in items) / 16000, 24.35, abs_tol=0.02)


def test_random_crops_loop_short_utterances_never_pad():
    waves = [np.arange(1, 101, dtype=np.float32)]
    crops = data.random_crops(waves, 3, 250, torch.Generator().manual_seed(0))
    assert crops.shape == (3, 1, 250) and (crops != 0).all()
