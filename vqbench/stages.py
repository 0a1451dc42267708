"""The three processes of a job. Scores are never computed where submission code ran.

1. `train_and_encode` (runs submission code): build the quantizer and the family's setup, train,
   send a snapshot (the quantizer's state, the harness-owned encoder and decoder weights) *before*
   any eval input exists in the process, then encode the eval set and send the codes.
2. `decode_codes` (runs submission code, never forward()): a fresh quantizer loads the snapshot
   and decodes every code tuple (the table, twice in two orders: decode must be pure), or, past
   TABLE_LIMIT tuples, the tuples the eval pass emitted. Nothing forward() saw can reach it, so
   rate is enforced at any depth.
3. `score` (harness only, never imports the submission): rebuild the eval set, load the encoder and
   decoder weights, reconstruct from the decoded vectors and compute every metric. Monkeypatching
   torch or the harness in 1 or 2 cannot reach it.

Everything crosses process boundaries as tensors (torch.save, read back with weights_only=True)
or plain JSON: no pickle of a submission's objects ever reaches a harness process.
"""
from __future__ import annotations

import io
import math
import time
import traceback

import torch
from torch import Tensor

from vqbench.enforce import JobFailure, check_output, check_rate, decode_table, decode_tuples
from vqbench.families import Batch, DataError, EvalBatch, get_family
from vqbench.metrics import (METRICS, CodebookRank, CodeUsage, LatentRank, MetricContext, MetricUnavailable,
                             QuantizationError, build_metrics)
from vqbench.ops import code_index
from vqbench.sandbox import is_out_of_memory, memory_limit_gb, send_blob
from vqbench.schema import ConfigError
from vqbench.train import level_name, seed_everything, train

TABLE_LIMIT = 1 << 20  # code tuples: up to this many, stage 2 decodes them all (the table)
PROGRESS_UPDATES = 100  # step reports per job


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes, what: str):
    """Tensors (and containers of them) only: a payload cannot make the reader run code."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise JobFailure(f"{what} is not plain tensor data ({type(e).__name__}: {str(e)[:200]}): keep the "
                         "quantizer's state in parameters and registered buffers") from None


# The first torch.load in a process spends ~0.25 s initialising dispatch modes; doing it once here,
# at import, means the fork server (which preloads this module) has paid it for every stage.
from_bytes(to_bytes({"warm-up": torch.zeros(1)}), "a warm-up payload")


def failure(e: BaseException, task) -> dict:
    """A job's own fault as the error part of a result (the job's process reports it)."""
    if isinstance(e, (JobFailure, ConfigError, DataError)):
        return {"reason": str(e), "type": type(e).__name__, "traceback": traceback.format_exc(limit=-8)}
    reason = f"{type(e).__name__}: {e}"
    if is_out_of_memory(e):
        reason = f"out of memory: the job passed its limit of {memory_limit_gb(task):g} GB " \
                 f"(resources.memory_gb): {reason}"
    return {"reason": reason, "type": type(e).__name__, "traceback": traceback.format_exc(limit=-12)}


def eval_batches(setup):
    for item in setup.eval_batches():
        yield item if isinstance(item, Batch) else Batch(item)


# ------------------------------------------------------------------ 1. train, snapshot, encode

def build_levels(submission, task, where: str = "") -> tuple[list, list[tuple[int, int]]]:
    """One instance of the submitted quantizer per level of the task (one, unless quantizer.levels),
    built in level order, and the (codebook_size, depth) each declares, checked against its K."""
    quantizers, rates = [], []
    for level, k in enumerate(task.quantizer.level_sizes):
        quantizers.append(submission.build(task.quantizer.dim, k))
        label = f"{where}level {level}: " if len(task.quantizer.level_sizes) > 1 else where
        rates.append(check_rate(quantizers[-1], k, label))
    return quantizers, rates


@torch.no_grad()
def encode(setup, quantizers, task, rates: list[tuple[int, int]]) -> list[list[Tensor]]:
    """The eval set's codes from the trained quantizers in eval mode: per eval batch, one tensor per level."""
    for level, (q, k) in enumerate(zip(quantizers, task.quantizer.level_sizes)):
        where = f"evaluation{level_name(level, len(rates))}: "
        if check_rate(q, k, where) != tuple(rates[level]):
            raise JobFailure(f"{where}codebook_size/depth change with eval(): {tuple(rates[level])} -> "
                             f"{(q.codebook_size, q.depth)}")
    codes = []
    for batch in eval_batches(setup):
        emitted = []

        def quantize(level: int, z: Tensor) -> Tensor:
            size, depth = rates[level]
            out = check_output(quantizers[level](z), z, f"evaluation{level_name(level, len(rates))}", size, depth)
            emitted.append(out.codes.cpu())
            return out.z_q

        setup.encode(batch.x, quantize)
        codes.append(emitted)
    return codes


def train_and_encode(submission, task, seed: int, emit) -> dict:
    """Stage 1. Returns {"train", "rates": [[codebook_size, depth] per level], "phases", "device"} or
    {"error"}; sends the blobs "snapshot" ({quantizers: [state dict per level], encoder, decoder}) and
    then "codes" (per eval batch, one tensor per level)."""
    phases, clock = {}, time.perf_counter()
    try:
        seed_everything(seed)
        quantizers, rates = build_levels(submission, task)
        device = pick_device()
        setup = get_family(task.family).build(task, seed, device)
        if setup.levels != len(quantizers):
            raise RuntimeError(f"the {task.family} family built a model of {setup.levels} level(s) for a task of "
                               f"{len(quantizers)}")
        for q in quantizers:
            q.to(device)
        phases["setup"], clock = time.perf_counter() - clock, time.perf_counter()
        every = max(1, task.train.steps // PROGRESS_UPDATES)
        log = train(setup, quantizers, task, on_step=lambda s: emit(s + 1) if (s + 1) % every == 0 else None)
        for m in (setup.encoder, setup.decoder, *quantizers):
            m.eval()
        send_blob("snapshot", to_bytes({"quantizers": [q.state_dict() for q in quantizers],
                                        "encoder": setup.encoder.state_dict(), "decoder": setup.decoder.state_dict()}))
        phases["train"], clock = time.perf_counter() - clock, time.perf_counter()
        send_blob("codes", to_bytes(encode(setup, quantizers, task, rates)))
        phases["encode"] = time.perf_counter() - clock
        return {"train": log, "rates": [list(r) for r in rates], "phases": phases, "device": str(device)}
    except Exception as e:  # the submission's fault (or bad data): a failed result, never a crash
        return {"error": failure(e, task)}


# ------------------------------------------------------------------ 2. decode from the snapshot

@torch.no_grad()
def decode(quantizer, k: int, dim: int, codes: list[Tensor], size: int, depth: int, where: str = "") -> dict:
    """{"index": None (the full table) or the sorted joint codes decoded, "vectors": their vectors},
    from a quantizer that loaded the trained state; `codes` are its level's codes of the eval pass."""
    if check_rate(quantizer, k, f"decoding: {where}") != (size, depth):
        raise JobFailure(f"decoding: {where}a quantizer loaded from its trained state declares codebook_size/depth "
                         f"{(quantizer.codebook_size, quantizer.depth)}, training declared {(size, depth)}")
    device = next((t.device for t in (*quantizer.parameters(), *quantizer.buffers())), torch.device("cpu"))
    if size ** depth <= TABLE_LIMIT:
        index, vectors = None, decode_table(quantizer, size, depth, dim, device)
    else:  # too many tuples for a table: the ones the eval pass emitted, each decoded twice
        index = torch.unique(torch.cat([code_index(c, size, depth).flatten() for c in codes]))
        vectors = decode_tuples(quantizer, index.to(device), size, depth, dim)
    return {"index": index, "vectors": vectors.cpu()}


def decode_codes(submission, task, seed: int, quantizer_states: bytes, codes: bytes, rates: list, emit) -> dict:
    """Stage 2. Sends "decoded": per level {"index": the joint code of each row or None (the full
    table), "vectors": (n, dim)}. Returns {} or {"error"}."""
    try:
        seed_everything(seed)
        quantizers, _ = build_levels(submission, task, "decoding: ")
        states = from_bytes(quantizer_states, "the quantizers' state_dicts")
        all_codes = from_bytes(codes, "codes")
        decoded = []
        for level, (q, state, k) in enumerate(zip(quantizers, states, task.quantizer.level_sizes)):
            q.load_state_dict(state)
            q.to(pick_device()).eval()
            size, depth = rates[level]
            decoded.append(decode(q, k, task.quantizer.dim, [batch[level] for batch in all_codes], size, depth,
                                  f"level {level}: " if len(rates) > 1 else ""))
        send_blob("decoded", to_bytes(decoded))
        return {}
    except Exception as e:
        return {"error": failure(e, task)}


# ------------------------------------------------------------------ 3. score, harness only

def lookup(codes: Tensor, index: Tensor | None, vectors: Tensor, size: int, depth: int) -> Tensor:
    joint = code_index(codes, size, depth)
    if index is None:
        return vectors[joint]
    return vectors[torch.searchsorted(index, joint)]  # every joint code of the eval pass is in index


@torch.no_grad()
def score(task, seed: int, weights: bytes, codes: bytes, decoded: bytes, rates: list, emit) -> dict:
    """Stage 3, in a process that never imported the submission: {"metrics", "unavailable", "levels",
    "phases"}; "levels" has each level's tokens per item and, for a hierarchical model, its code usage."""
    try:
        clock = time.perf_counter()
        device = pick_device()
        state = from_bytes(weights, "the model weights")
        all_codes, out = from_bytes(codes, "codes"), from_bytes(decoded, "decoded vectors")
        setup = get_family(task.family).build(task, seed, device)
        setup.encoder.load_state_dict(state["encoder"])
        setup.decoder.load_state_dict(state["decoder"])
        fidelity = build_metrics(task.metrics, MetricContext(task, device, setup.metric_context))
        reference_s, clock = time.perf_counter() - clock, time.perf_counter()
        metrics, unavailable, levels = evaluate(setup, task, fidelity, all_codes, out, [tuple(r) for r in rates])
        return {"metrics": metrics, "unavailable": unavailable, "levels": levels,
                "phases": {"reference": reference_s, "metrics": time.perf_counter() - clock}}
    except Exception as e:
        return {"error": failure(e, task)}


@torch.no_grad()
def evaluate(setup, task, fidelity: dict, all_codes: list, decoded: list[dict], rates: list[tuple[int, int]]
             ) -> tuple[dict, dict, list[dict]]:
    """Every metric of the eval set, reconstructed from the decoded vectors of its codes: the
    metrics, {metric: reason} for those that could not be computed, and per level its tokens per item
    (and, with several levels, its own code usage). With several levels the code metrics count the
    codebook entries of all levels together (utilization = used entries / the sum of the levels' K)."""
    for module in (setup.encoder, setup.decoder):
        module.eval()
    levels, dim = len(rates), task.quantizer.dim
    if not (type(all_codes) is list and type(decoded) is list and len(decoded) == levels):
        raise JobFailure("evaluation: the codes or decoded vectors sent back are not one entry per level")
    # normalized by the task's K, not by the size^depth codes the quantizer declares (<= K)
    usages = [CodeUsage(size, depth, k) for (size, depth), k in zip(rates, task.quantizer.level_sizes)]
    latent_rank, code_rank, qerr = LatentRank(dim), CodebookRank(dim), QuantizationError(dim)
    tokens: list[int] = [0] * levels
    seen, stream = 0, eval_batches(setup)  # streamed: a full-tier eval set does not fit in memory at once
    for batch in stream:
        if seen == len(all_codes):
            raise JobFailure(f"evaluation: {len(all_codes)} batches of codes for {seen + 1 + sum(1 for _ in stream)} "
                             "eval batches")
        batch_codes, seen = all_codes[seen], seen + 1
        if type(batch_codes) is not list or len(batch_codes) != levels:
            raise JobFailure("evaluation: the codes sent back do not match the eval batches")

        def quantize(level: int, z: Tensor) -> Tensor:
            codes = batch_codes[level]
            if type(codes) is not Tensor or codes.dtype != torch.int64 or tuple(codes.shape[:2]) != tuple(z.shape[:2]):
                raise JobFailure("evaluation: the codes sent back do not match the eval batches")
            index, vectors = decoded[level]["index"], decoded[level]["vectors"]
            return lookup(codes.to(vectors.device), index, vectors, *rates[level]).to(z.device).to(z.dtype)

        latents, quantized = setup.encode(batch.x, quantize)
        x_hat = setup.decode(quantized)
        for level, (z, z_hat) in enumerate(zip(latents, quantized)):
            usages[level].update(batch_codes[level])
            tokens[level] = max(tokens[level], z.shape[1])
            latent_rank.update(z.float().cpu())
            code_rank.update(z_hat.float().cpu())  # the used code vectors, each as often as it is used
            qerr.update(z.float().cpu(), z_hat.float().cpu())
        last = decoded[-1]
        for name in task.metrics:  # only what the task asks for: rFID is not free
            if METRICS[name].inputs == "eval":
                fidelity[name].update(EvalBatch(batch, x_hat.float(), latents[-1], quantized[-1], batch_codes[-1],
                                                last["vectors"] if last["index"] is None else None))
            else:
                fidelity[name].update(x_hat.float(), batch.x)
    if seen != len(all_codes):
        raise JobFailure(f"evaluation: {len(all_codes)} batches of codes for {seen} eval batches")
    metrics = dict(CodeUsage.combined(usages))
    metrics["codebook_rank"] = code_rank.compute()
    metrics["latent_rank"] = latent_rank.compute()
    metrics["quantization_error"] = qerr.compute()
    per_level = [{"tokens_per_item": t, **(usage.compute() if levels > 1 else {})} for t, usage in zip(tokens, usages)]
    return (*finish(metrics, fidelity, task), per_level)


def finish(metrics: dict, fidelity: dict, task) -> tuple[dict, dict]:
    """Fidelity metrics' compute(); a metric that could not be set up is recorded with its reason."""
    unavailable = {}
    for name in task.metrics:
        try:
            value = fidelity[name].compute()
        except MetricUnavailable as e:  # missing weights: say so, never substitute a number
            metrics[name], unavailable[name] = None, str(e)
            continue
        metrics.update(value if isinstance(value, dict) else {name: value})
    for name, value in list(metrics.items()):
        if value == math.inf and METRICS[name].higher_is_better:  # e.g. PSNR of an exact reconstruction
            metrics[name], unavailable[name] = None, "infinite: the reconstruction is exact"
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise JobFailure(f"non-finite metrics at evaluation: {', '.join(bad)}")
    return metrics, unavailable
