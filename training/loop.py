"""The one training loop: demo-model pretraining and every LoRA fine-tune go through it.

Written out nanoGPT-style so a reader sees each step: batch, forward, loss (answer tokens
only), backward, clip, optimizer step, schedule, log.

Under torchrun (WORLD_SIZE > 1) the same loop runs data-parallel (DDP): every process draws
the same global batch from the same seeded order and trains on its own slice of it, so the
global batch, the schedule and the loss curve do not depend on the number of processes.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from snap2caption_service.core.contracts import ANSWER_LABELS
from snap2caption_service.core.platforms import DEFAULT_PLATFORM
from snap2caption_service.core.prompting import ChatFormat, format_target, split_target

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TrainExample:
    image: object  # PIL.Image
    tone: str
    audience: str
    target: str  # "Caption: ...\nHashtags: ...\nAlt text: ..."
    num_hashtags: int | None = None  # what the prompt asked for; None: as many as the target has
    platform: str = DEFAULT_PLATFORM
    # False: the target's hashtags are read (teacher-forced) but not learned. A feedback record whose
    # creator edited only the caption carries the hashtags the ranker served, not ones the model
    # wrote or the creator chose: learning them teaches the model the ranker's fill rules.
    learn_hashtags: bool = True
    # The caption the creator was shown, when ``target``'s caption is their edit of it. The edit is
    # what the fine-tune is there to learn; the rest of the answer is what the creator kept, which
    # ``kl_to_base`` holds to what the base writes after the shown caption (TrainConfig.kl_to_base).
    shown_caption: str | None = None

    def shown_target(self) -> str:
        """The answer as the creator was shown it: ``target`` with the shown caption."""
        if self.shown_caption is None:
            return self.target
        _, hashtags, alt_text = split_target(self.target)
        return format_target(self.shown_caption, list(hashtags), alt_text)


def kept_positions(shown: list[int], edited: list[int]) -> dict[int, int]:
    """{i: k}: answer token ``edited[i]`` is the creator's kept ``shown[k]`` (a token-level diff);
    tokens of ``edited`` not in the map are the edit."""
    import difflib

    matcher = difflib.SequenceMatcher(None, shown, edited, autojunk=False)
    return {b + n: a + n for a, b, size in matcher.get_matching_blocks() for n in range(size)}


def hashtag_value_span(answer_text: str, target: str) -> tuple[int, int]:
    """Character range of the hashtags (the second answer line's value) within ``answer_text``."""
    at = answer_text.find(target)
    if at < 0:
        raise ValueError("the chat template changed the answer: its hashtags cannot be located")
    caption_line, tags_line = target.split("\n")[:2]
    start = at + len(caption_line) + 1 + len(ANSWER_LABELS[1]) + 1
    return start, at + len(caption_line) + 1 + len(tags_line)


def encode_answer(tok, answer_text: str, example: TrainExample) -> tuple[list[int], list[int]]:
    """(token ids, labels) of the answer: labels are the ids, but for the hashtags' when the
    example does not learn them (``learn_hashtags``)."""
    if example.learn_hashtags:
        ids = tok(answer_text, add_special_tokens=False)["input_ids"]
        return ids, list(ids)
    if not tok.is_fast:
        raise ValueError("masking hashtags needs a fast tokenizer (character offsets)")
    enc = tok(answer_text, add_special_tokens=False, return_offsets_mapping=True)
    start, end = hashtag_value_span(answer_text, example.target)
    ids = enc["input_ids"]
    labels = [
        IGNORE_INDEX if s < end and e > start else i for i, (s, e) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return ids, labels


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 25
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0  # 0: only at the end
    time_budget_s: float | None = None  # stop early (and say so) when training would overrun
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; master weights stay fp32)
    # torch.compile the forward (dynamic shapes: batches differ in length). Pays ~30 s of
    # compiling up front; worth it for the demo decoder's long run, where fusing the many small
    # elementwise ops (norms, rotary, casts) that dominate a small model's step saves the most.
    compile: bool = False
    # Batches of examples of about the same length (as transformers' group_by_length): a batch pads
    # to its longest example, and the demo decoder's random batches were 11% padding.
    group_by_length: bool = False
    # Weight of KL(adapter || base) on the answer tokens a creator kept, each against the base's
    # prediction of it after the answer as shown (kl_to_base; the base is the model with its LoRA
    # switched off, the reference of RLHF's KL penalty). Without it, creator adapters trained on 80
    # edits lost 4-9 points of colour+shape on new pictures: the kept words are right already, so
    # cross-entropy barely holds the model to them. 0: plain cross-entropy. Needs a peft model.
    kl_to_base: float = 0.0


def autocast_dtype(precision: str, device_type: str):
    """The autocast dtype for a precision setting; None means plain fp32.

    auto picks bf16 where the hardware does it natively (CUDA with bf16, CPUs with
    AVX512-BF16/AMX): on this project's 2-core CI machine that halves demo-model training time.
    """
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def _missing_eos(ids: list[int], eos: int) -> list[int]:
    """The EOS an answer still needs: none when the chat template already closes its turn with it."""
    return [] if ids and ids[-1] == eos else [eos]


class EncodedDataset:
    """Tokenized prompt+answer ids, answer-only labels and image tensors, built once up front.

    Prompts and answers come from the checkpoint's ChatFormat, the same function serving uses.
    Image tensors are kept per example: LLaVA-NeXT and OneVision tile each photo into as many
    patches as its aspect ratio needs, so examples differ in size and a batch pads them
    (``image_sizes`` tells the model which patches are real). Pre-encoding keeps the processor
    (PIL resize, normalisation) out of the timed loop.
    """

    def __init__(self, processor, examples: Sequence[TrainExample], progress: bool = True):
        from tqdm import tqdm

        tok = processor.tokenizer
        chat = ChatFormat(processor)
        eos = tok.eos_token_id
        self.input_ids: list[list[int]] = []
        self.labels: list[list[int]] = []
        # Edited examples only (None: the answer is as shown, every answer token kept in place):
        # the answer as shown and, per position of input_ids, the position of it that predicts
        # the same kept token (-1: none). See shown_of / anchors_of.
        self.shown_ids: list[list[int] | None] = []
        self.anchors: list[list[int] | None] = []
        self.prompt_lens: list[int] = []
        self.images: list[dict] = []  # per example: pixel_values (+ image_sizes, ...) without the batch dim
        chunk = 256
        bar = tqdm(total=len(examples), desc="encode", unit="ex", disable=not progress)
        for start in range(0, len(examples), chunk):
            part = examples[start : start + chunk]
            pairs = [chat.example(e.tone, e.audience, e.target, e.num_hashtags, e.platform) for e in part]
            shown = [
                chat.example(e.tone, e.audience, e.shown_target(), e.num_hashtags, e.platform)[1]
                if e.shown_caption
                else None
                for e in part
            ]
            enc = processor(
                text=[p for p, _ in pairs], images=[e.image for e in part], return_tensors="pt", padding=True
            )
            image_keys = [k for k in enc if k not in ("input_ids", "attention_mask")]
            rows = zip(enc["input_ids"], enc["attention_mask"], pairs, shown, part, strict=True)
            for row, (ids, mask, (_, answer_text), shown_text, example) in enumerate(rows):
                prompt_ids = ids[mask.bool()].tolist()  # drop the batch padding, wherever it sits
                answer, labels = encode_answer(tok, answer_text, example)
                tail = _missing_eos(answer, eos)
                answer += tail
                labels += tail
                self.input_ids.append(prompt_ids + answer)
                self.labels.append([IGNORE_INDEX] * len(prompt_ids) + labels)
                self.prompt_lens.append(len(prompt_ids))
                self.shown_ids.append(None)
                self.anchors.append(None)
                if shown_text:
                    shown_answer = tok(shown_text, add_special_tokens=False)["input_ids"]
                    shown_answer += _missing_eos(shown_answer, eos)
                    self.shown_ids[-1] = prompt_ids + shown_answer
                    # Position p predicts token p + 1: answer token i sits at len(prompt) + i.
                    kept = kept_positions(shown_answer, answer)
                    at = len(prompt_ids) - 1
                    self.anchors[-1] = (
                        [-1] * at + [at + kept[i] if i in kept else -1 for i in range(len(answer))] + [-1]
                    )
                self.images.append({k: enc[k][row] for k in image_keys})
            bar.update(len(part))
        bar.close()
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos

    def __len__(self) -> int:
        return len(self.input_ids)

    def _stack_images(self, idx: Sequence[int]) -> dict:
        import torch

        out = {}
        for key in self.images[idx[0]]:
            parts = [self.images[i][key] for i in idx]
            longest = max(p.shape[0] for p in parts) if parts[0].dim() else 0
            if parts[0].dim() and any(p.shape[0] != longest for p in parts):
                # Tiles padded with zeros; the model reads only the first image_sizes-many.
                parts = [torch.cat([p, p.new_zeros((longest - p.shape[0], *p.shape[1:]))]) for p in parts]
            out[key] = torch.stack(parts)
        return out

    def batch(self, idx: Sequence[int]) -> dict:
        import torch

        width = max(len(self.input_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(self.input_ids[i])
            ids[row, :n] = torch.tensor(self.input_ids[i])
            labels[row, :n] = torch.tensor(self.labels[i])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, **self._stack_images(idx)}

    def shown_of(self, i: int) -> list[int]:
        """Example ``i``'s prompt and answer as the creator was shown it."""
        return self.shown_ids[i] if self.shown_ids[i] is not None else self.input_ids[i]

    def anchors_of(self, i: int) -> list[int]:
        """Per position of ``input_ids[i]``, the position of ``shown_of(i)`` predicting the same kept
        answer token, -1 where none (the prompt, the last position, a creator's edit)."""
        if self.anchors[i] is not None:
            return self.anchors[i]
        n, at = len(self.input_ids[i]), self.prompt_lens[i] - 1
        return [-1] * at + list(range(at, n - 1)) + [-1]

    def shown_batch(self, idx: Sequence[int]) -> tuple[dict, object]:
        """The answers as shown (input ids, attention mask) and the anchors (batch(idx)'s width):
        what ``kl_to_base`` runs the base on."""
        import torch

        shown = [self.shown_of(i) for i in idx]
        width = max(len(s) for s in shown)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        anchors = torch.full((len(idx), max(len(self.input_ids[i]) for i in idx)), -1, dtype=torch.long)
        for row, (i, seq) in enumerate(zip(idx, shown, strict=True)):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            anchors[row, : len(self.input_ids[i])] = torch.tensor(self.anchors_of(i))
        return {"input_ids": ids, "attention_mask": mask}, anchors


GROUP_BATCHES = 50  # batches per length group: enough to sort, few enough to stay a shuffle


def grouped_by_length(order: list[int], lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[int]:
    """``order`` (already shuffled) cut into groups of GROUP_BATCHES batches, each group sorted by
    length into batches whose order is shuffled again: every example once, each batch of
    neighbours in length. A short last batch goes last, so the batches a caller cuts from the
    front every batch_size examples are these ones."""
    out: list[int] = []
    size = batch_size * GROUP_BATCHES
    for start in range(0, len(order), size):
        group = sorted(order[start : start + size], key=lambda i: lengths[i])
        batches = [group[b : b + batch_size] for b in range(0, len(group), batch_size)]
        short = batches.pop() if len(batches[-1]) < batch_size else []
        rng.shuffle(batches)
        out.extend(i for batch in [*batches, short] for i in batch)
    return out


def batch_order(
    n_examples: int, batch_size: int, rng: random.Random, lengths: Sequence[int] | None = None
) -> Iterator[list[int]]:
    """The batches ``train`` draws, without end: each epoch a fresh shuffle (grouped by length
    when ``lengths`` are given), a short remainder carried into the next epoch."""
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            fresh = list(range(n_examples))
            rng.shuffle(fresh)
            if lengths is not None:
                # The last epoch's leftover goes into the grouping, so batches stay aligned.
                fresh, order = grouped_by_length(order + fresh, lengths, batch_size, rng), []
            order.extend(fresh)
        idx, order = order[:batch_size], order[batch_size:]
        yield idx


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """torchrun's RANK/WORLD_SIZE; starts the process group on first use (gloo on CPU, nccl on GPU)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if not torch.cuda.is_available():
            # Each process would otherwise start one thread per core: 2 processes on 2 cores
            # would run 4 busy threads and spend the time switching between them.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return Distributed(dist.get_rank(), dist.get_world_size())


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    samples_per_s: float
    wall_s: float
    stopped_early: bool
    losses: list[float]


def train(
    model,
    data: EncodedDataset,
    cfg: TrainConfig,
    on_log: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    dist_info: Distributed | None = None,
) -> TrainResult:
    """Train every parameter with requires_grad (all of them, or a LoRA adapter's)."""
    import torch
    from tqdm import tqdm

    ddp = dist_info or Distributed()
    torch.manual_seed(cfg.seed)
    lengths = [len(ids) for ids in data.input_ids] if cfg.group_by_length else None
    batches = batch_order(len(data), cfg.batch_size, random.Random(cfg.seed), lengths)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    start_step = _maybe_resume(model, opt, cfg)
    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(cfg.precision, device.type)
    model.train()
    forward = model
    if ddp.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        forward = torch.compile(forward, dynamic=True)

    losses: list[float] = []
    t0 = time.perf_counter()
    seen = 0
    stopped_early = False
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", disable=not (progress and ddp.is_main))
    step = start_step
    for step in range(start_step, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        step_loss = 0.0
        for _ in range(cfg.grad_accum):
            idx = next(batches)
            local = idx[ddp.rank :: ddp.world_size]
            batch = {k: v.to(device) for k, v in data.batch(local).items()}
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = forward(**batch)
                loss = out.loss
                if cfg.kl_to_base:
                    shown, anchors = data.shown_batch(local)
                    shown = {**batch, **{k: v.to(device) for k, v in shown.items()}}
                    loss = loss + cfg.kl_to_base * kl_to_base(
                        model, forward, shown, batch["labels"], out.logits, anchors.to(device)
                    )
            loss = loss / cfg.grad_accum
            loss.backward()  # under DDP this also averages the gradients across processes
            step_loss += loss.item()
            seen += len(idx)
        if ddp.world_size > 1:
            step_loss = _mean_across_processes(step_loss)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss)

        elapsed = time.perf_counter() - t0
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            stats = {"loss": step_loss, "lr": lr_at(step, cfg), "samples_per_s": seen / elapsed}
            bar.set_postfix(loss=f"{step_loss:.3f}", sps=f"{seen / elapsed:.1f}")
            if on_log:
                on_log(step + 1, stats)
        bar.update(1)
        if cfg.checkpoint_dir and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and ddp.is_main:
            _save_checkpoint(model, opt, step + 1, cfg)
        if cfg.time_budget_s:
            over = elapsed > cfg.time_budget_s
            if ddp.world_size > 1:  # every process must stop at the same step, or the next all-reduce hangs
                over = _mean_across_processes(float(over)) > 0
            if over:
                stopped_early = True
                break
    bar.close()
    model.eval()
    wall = time.perf_counter() - t0
    done = step + 1
    if cfg.checkpoint_dir and ddp.is_main:
        _save_checkpoint(model, opt, done, cfg)
    return TrainResult(
        done, losses[-1] if losses else float("nan"), seen / max(wall, 1e-9), wall, stopped_early, losses
    )


def kl_to_base(model, forward, shown: dict, labels, logits, anchors):
    """Mean KL(adapter || base) over the answer tokens the creator kept, each against the base's
    prediction of that token after the answer as shown (``anchors``: EncodedDataset.shown_batch),
    where the base's own argmax is that token.

    The edit's tokens are left to cross-entropy: there the model is meant to move away from its
    base. After an edit, the base is asked what it would write at the same place of the shown
    answer, not in a context it never saw."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), model.disable_adapter():
        base_logits = forward(**{k: v for k, v in shown.items() if k != "labels"}).logits
    targets = labels[:, 1:]
    rows, cols = torch.nonzero((anchors[:, :-1] >= 0) & (targets != IGNORE_INDEX), as_tuple=True)
    base_logp = F.log_softmax(base_logits[rows, anchors[rows, cols]].float(), dim=-1)
    agree = base_logp.argmax(-1) == targets[rows, cols]
    if not agree.any():
        return logits.new_zeros(())
    logp = F.log_softmax(logits[rows[agree], cols[agree]].float(), dim=-1)
    return (logp.exp() * (logp - base_logp[agree])).sum(-1).mean()


def _mean_across_processes(value: float) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _checkpoint_path(cfg: TrainConfig) -> Path:
    return Path(cfg.checkpoint_dir or ".") / "last.pt"


def _trainable_state(model) -> dict:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def _save_checkpoint(model, opt, step: int, cfg: TrainConfig) -> None:
    import torch

    path = _checkpoint_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": _trainable_state(model), "optimizer": opt.state_dict()}, tmp)
    os.replace(tmp, path)  # a crash mid-write must not destroy the previous checkpoint


def _maybe_resume(model, opt, cfg: TrainConfig) -> int:
    import torch

    if not cfg.checkpoint_dir or not _checkpoint_path(cfg).exists():
        return 0
    state = torch.load(_checkpoint_path(cfg), map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"], strict=False)
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])
