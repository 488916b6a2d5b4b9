"""The captioning core: load a LLaVA checkpoint (+ LoRA), caption a batch of images.

Plain Python with no BentoML dependency: the service, the CLI, the benchmarks and the
evaluation scripts all call ``Captioner.caption_batch``. torch and transformers are
imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from snap2caption_service.core.contracts import Candidate
from snap2caption_service.core.prompting import build_prompt, parse_output
from snap2caption_service.core.settings import GenerationSettings
from snap2caption_service.core.versions import model_version

log = logging.getLogger(__name__)

# Sampled candidates use these temperatures in turn; the greedy candidate is always first.
SAMPLE_TEMPERATURES = (0.7, 0.9, 1.1, 1.3)


@dataclass
class CaptionJob:
    image: object  # PIL.Image, RGB
    tone: str = "casual"
    audience: str = "personal"
    num_hashtags: int = 8
    num_candidates: int = 1


@dataclass
class BatchStats:
    """What one model call did, for metrics."""

    batch_size: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }[dtype]


# Weights are read from safetensors only: a pickle (pytorch_model.bin, adapter_model.bin) can
# run arbitrary code when loaded, and checkpoints come from registries and buckets.
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
SAFE_ADAPTER = "adapter_model.safetensors"


class UnsafeCheckpoint(ValueError):
    """A checkpoint or adapter whose weights are only in pickle form: refused, never unpickled."""


def _pickles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.bin") if p.is_file())


def require_safetensors(model_ref: str) -> None:
    """Refuse, with the reason, a local checkpoint folder without safetensors weights. A hub id is
    left to ``from_pretrained(use_safetensors=True)``, which refuses it there."""
    folder = Path(model_ref)
    if folder.is_dir() and not any((folder / name).is_file() for name in SAFE_WEIGHTS):
        found = _pickles(folder)
        raise UnsafeCheckpoint(
            f"{model_ref} has no safetensors weights ({' or '.join(SAFE_WEIGHTS)})"
            + (f", only {', '.join(found)} (pickle, which can run code when loaded)" if found else "")
            + ": only safetensors are loaded. Re-save it with save_pretrained(..., safe_serialization=True)."
        )


def safetensors_adapter(adapter_ref: str) -> str:
    """The folder of a PEFT adapter whose weights are ``adapter_model.safetensors``.

    peft picks whichever weights file is there (pickle included) and has no switch to refuse a
    pickle, so the choice is made here. A hub id is resolved to its cached files, downloading
    the safetensors file and the config only.
    """
    folder = Path(adapter_ref)
    if not folder.is_dir():
        from transformers.utils import cached_file

        weights = cached_file(adapter_ref, SAFE_ADAPTER, _raise_exceptions_for_missing_entries=False)
        if weights is None:
            raise UnsafeCheckpoint(
                f"adapter {adapter_ref} has no {SAFE_ADAPTER}: only safetensors adapters are loaded."
            )
        cached_file(adapter_ref, "adapter_config.json")
        return str(Path(weights).parent)
    if not (folder / SAFE_ADAPTER).is_file():
        found = _pickles(folder)
        raise UnsafeCheckpoint(
            f"adapter {adapter_ref} has no {SAFE_ADAPTER}"
            + (f", only {', '.join(found)} (pickle, which can run code when loaded)" if found else "")
            + ": only safetensors adapters are loaded. Re-save it with save_pretrained(..., safe_serialization=True)."
        )
    return str(folder)


def load_merged(model_ref: str, adapter_ref: str = "", torch_dtype="auto"):
    """(model, processor) of a LLaVA checkpoint, with a LoRA adapter merged in if given, in eval mode.

    Merged once at load: serving then runs plain matmuls, no adapter overhead per token.
    Safetensors weights only (``UnsafeCheckpoint`` for a pickle-only checkpoint or adapter).
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    require_safetensors(model_ref)
    adapter_dir = safetensors_adapter(adapter_ref) if adapter_ref else ""
    model = LlavaForConditionalGeneration.from_pretrained(model_ref, dtype=torch_dtype, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(model_ref)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval(), processor


class _PerRowTemperature:
    """Logits processor dividing each row by its own temperature, so candidates sampled
    at different temperatures share one generate call instead of one call each."""

    def __init__(self, temperatures):
        self.temperatures = temperatures  # tensor [rows, 1]

    def __call__(self, input_ids, scores):
        return scores / self.temperatures.to(scores.dtype)


class Captioner:
    def __init__(self, model, processor, version: str, generation: GenerationSettings | None = None):
        self.model = model
        self.processor = processor
        self.version = version
        self.generation = generation or GenerationSettings()
        self.processor.tokenizer.padding_side = "left"  # batched decoding needs prompts right-aligned
        if self.processor.tokenizer.pad_token is None:
            self.processor.tokenizer.pad_token = self.processor.tokenizer.eos_token

    @classmethod
    def load(
        cls,
        model_ref: str,
        adapter_ref: str = "",
        device: str = "auto",
        dtype: str = "auto",
        generation: GenerationSettings | None = None,
        version: str | None = None,
    ) -> Captioner:
        """Load any LLaVA checkpoint (local folder or hub id), merging a LoRA adapter if given.

        ``version``: the model's known version; without it the folders are content-hashed,
        which reads every weight file once (seconds for a 7B checkpoint, at every cold start).
        """
        t0 = time.perf_counter()
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        model, processor = load_merged(model_ref, adapter_ref, torch_dtype)
        model.to(device)
        version = version or model_version(model_ref, adapter_ref)
        log.info("loaded %s on %s (%s) in %.1fs", version, device, torch_dtype, time.perf_counter() - t0)
        return cls(model, processor, version, generation)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _generate(self, images, prompts, temperatures=None, seed: int = 0):
        """One generate call; returns (texts, mean token log-probs, generated token count)."""
        import torch

        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tok = self.processor.tokenizer
        kwargs = dict(
            max_new_tokens=self.generation.max_new_tokens,
            repetition_penalty=self.generation.repetition_penalty,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        if temperatures is None:
            kwargs["do_sample"] = False
        else:
            from transformers import LogitsProcessorList

            torch.manual_seed(seed)
            temps = torch.tensor(temperatures, dtype=torch.float32).unsqueeze(1).to(self.device)
            kwargs.update(
                do_sample=True,
                temperature=1.0,
                top_p=self.generation.top_p,
                logits_processor=LogitsProcessorList([_PerRowTemperature(temps)]),
            )
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        new_tokens = out.sequences[:, prompt_len:]
        # Score under the model itself (raw logits), not the tempered sampling distribution,
        # so greedy and sampled candidates are ranked on one scale.
        logits = torch.stack(out.logits, dim=1).float()  # [rows, steps, vocab]
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        # Count tokens up to and including the first EOS; padding after it does not count.
        is_eos = new_tokens == tok.eos_token_id
        after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
        valid = ~after_eos
        mean_lp = (logprobs * valid).sum(1) / valid.sum(1).clamp(min=1)
        texts = tok.batch_decode(new_tokens, skip_special_tokens=True)
        return texts, mean_lp.tolist(), int(valid.sum())

    def caption_batch(self, jobs: list[CaptionJob], stats: BatchStats | None = None) -> list[list[Candidate]]:
        """Candidates for each job, best first. One greedy call for all jobs, and one sampled
        call for every extra candidate of every job, whatever the batch mix."""
        t0 = time.perf_counter()
        prompts = [build_prompt(j.tone, j.audience) for j in jobs]
        images = [j.image for j in jobs]
        texts, scores, ntok = self._generate(images, prompts)
        per_job: list[list[Candidate]] = [
            [self._candidate(t, s, j.num_hashtags)] for t, s, j in zip(texts, scores, jobs)
        ]
        rows = [
            (i, SAMPLE_TEMPERATURES[k % len(SAMPLE_TEMPERATURES)])
            for i, j in enumerate(jobs)
            for k in range(j.num_candidates - 1)
        ]
        if rows:
            s_texts, s_scores, s_tok = self._generate(
                [images[i] for i, _ in rows],
                [prompts[i] for i, _ in rows],
                temperatures=[t for _, t in rows],
                seed=self.generation.seed,
            )
            ntok += s_tok
            for (i, _), t, s in zip(rows, s_texts, s_scores):
                per_job[i].append(self._candidate(t, s, jobs[i].num_hashtags))
        for cands in per_job:
            cands.sort(key=lambda c: c.score, reverse=True)
        if stats is not None:
            stats.batch_size = len(jobs)
            stats.generated_tokens = ntok
            stats.seconds = time.perf_counter() - t0
        return per_job

    @staticmethod
    def _candidate(text: str, score: float, num_hashtags: int) -> Candidate:
        parsed = parse_output(text, num_hashtags)
        return Candidate(
            caption=parsed.caption, hashtags=parsed.hashtags, alt_text=parsed.alt_text, score=round(float(score), 4)
        )
