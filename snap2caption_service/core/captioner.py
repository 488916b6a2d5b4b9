"""The captioning core: load a LLaVA checkpoint (+ LoRA), caption a batch of images.

Any checkpoint of the families in SUPPORTED_MODEL_TYPES loads through transformers' auto
classes, is prompted in its own chat format (prompting.ChatFormat) and, by default, answers
under the answer grammar (answer_grammar.py), so every answer parses.

Plain Python with no BentoML dependency: the service, the CLI, the benchmarks and the
evaluation scripts all call ``Captioner.caption_batch``. torch and transformers are
imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from snap2caption_service.core.answer_agreement import reconcile
from snap2caption_service.core.answer_grammar import AnswerConstraint, answer_token_bound
from snap2caption_service.core.contracts import Candidate
from snap2caption_service.core.plain_background import border_colour, drop_contradicted_background
from snap2caption_service.core.platforms import DEFAULT_PLATFORM
from snap2caption_service.core.prompting import ChatFormat, MissingChatTemplate, parse_output
from snap2caption_service.core.scene_heads import SURE_OF_OBJECT, SceneHeads, TokenSelection, drop_unsure_background
from snap2caption_service.core.settings import GenerationSettings
from snap2caption_service.core.versions import ADAPTER_META, demo_version, model_version

log = logging.getLogger(__name__)

# peft's name for "no adapter" in a mixed batch: the row runs on the merged champion alone.
NO_ADAPTER = "__base__"

# Sampled candidates use these temperatures in turn; the greedy candidate is always first.
SAMPLE_TEMPERATURES = (0.7, 0.9, 1.1, 1.3)


@dataclass
class CaptionJob:
    image: object  # PIL.Image, RGB
    tone: str = "casual"
    audience: str = "personal"
    num_hashtags: int = 8
    num_candidates: int = 1
    platform: str = DEFAULT_PLATFORM
    adapter: str | None = None  # a creator adapter loaded into the model (core/creator_adapters.py); None: the champion


@dataclass
class BatchStats:
    """What one model call did, for metrics."""

    batch_size: int = 0
    adapter_rows: int = 0  # rows answered by a creator adapter
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


class CheckpointRefused(ValueError):
    """A model this service will not serve as configured: retrying cannot help, so start-up fails."""


class UnsafeCheckpoint(CheckpointRefused):
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


# transformers model_types served: LLaVA-1.5 / LLaVA-Interleave, LLaVA-NeXT (1.6), LLaVA-OneVision.
SUPPORTED_MODEL_TYPES = ("llava", "llava_next", "llava_onevision")


class UnsupportedCheckpoint(CheckpointRefused):
    """A checkpoint this service cannot serve faithfully: refused at start-up, never half-loaded."""


class AdapterBaseMismatch(CheckpointRefused):
    """A LoRA adapter loaded on a base model other than the one it was trained on."""


def checkpoint_model_type(model_ref: str) -> str:
    """The checkpoint's ``model_type``, read from its config.json alone (no weights, no code)."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(model_ref)
    return str(config.get("model_type", ""))


def require_supported(model_ref: str) -> str:
    model_type = checkpoint_model_type(model_ref)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedCheckpoint(
            f"{model_ref} is a {model_type or 'untyped'!r} model; Snap2Caption serves the LLaVA families "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (model_type in config.json)"
        )
    return model_type


def base_identity(model) -> dict:
    """What identifies a base model to its adapters: architecture, shapes and a fingerprint of
    its token embeddings (rounded to bf16, so the same checkpoint loaded in fp32 on a CPU or in
    bf16 on a GPU gives the same identity). Computed before any adapter is merged."""
    import hashlib

    import torch

    config = model.config
    text = config.text_config
    vision = config.vision_config
    rows = model.get_input_embeddings().weight[:16].detach().to("cpu", torch.bfloat16).float()
    return {
        "model_type": config.model_type,
        "text_model_type": text.model_type,
        "vision_model_type": vision.model_type,
        "shape": [text.hidden_size, text.num_hidden_layers, text.vocab_size, vision.hidden_size],
        "embedding_sha256": hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16],
    }


def check_adapter_base(adapter_dir: str, model_ref: str, identity: dict) -> None:
    """Refuse an adapter trained on another base, naming both. An adapter saved before bases
    were recorded (no ``base_identity``) is not checked."""
    import json

    meta_path = Path(adapter_dir) / ADAPTER_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    trained_on = meta.get("base_identity")
    if not trained_on:
        log.info("adapter %s does not record its base model: not checked against %s", adapter_dir, model_ref)
        return
    if trained_on != identity:
        raise AdapterBaseMismatch(
            f"adapter {adapter_dir} was trained on {meta.get('base_model') or 'another model'} "
            f"({trained_on['model_type']}, {trained_on['text_model_type']} {trained_on['shape']}, "
            f"embeddings {trained_on['embedding_sha256']}) but the base model being loaded is {model_ref} "
            f"({identity['model_type']}, {identity['text_model_type']} {identity['shape']}, "
            f"embeddings {identity['embedding_sha256']}): serve it on its own base, or train one on this base"
        )


def load_checkpoint(model_ref: str, torch_dtype="auto"):
    """(model, processor) of a supported checkpoint, every weight accounted for.

    Loaded through the auto classes, so each family gets its own model and processor classes;
    a checkpoint whose weights do not match its architecture (missing, unexpected or
    mis-shaped tensors) is refused rather than served with random or ignored weights.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    require_supported(model_ref)
    require_safetensors(model_ref)
    model, info = AutoModelForImageTextToText.from_pretrained(
        model_ref, dtype=torch_dtype, use_safetensors=True, output_loading_info=True
    )
    problems = {k: sorted(map(str, v))[:5] for k, v in info.items() if k != "error_msgs" and v}
    if problems:
        raise UnsupportedCheckpoint(f"{model_ref} does not load cleanly as {type(model).__name__}: {problems}")
    processor = AutoProcessor.from_pretrained(model_ref)
    return model, processor


def load_merged(model_ref: str, adapter_ref: str = "", torch_dtype="auto"):
    """(model, processor) of a LLaVA checkpoint, with a LoRA adapter merged in if given, in eval mode.

    Merged once at load: serving then runs plain matmuls, no adapter overhead per token.
    Safetensors weights only (``UnsafeCheckpoint`` for a pickle-only checkpoint or adapter);
    an adapter trained on another base is refused (``AdapterBaseMismatch``).
    """
    adapter_dir = safetensors_adapter(adapter_ref) if adapter_ref else ""
    model, processor = load_checkpoint(model_ref, torch_dtype)
    if adapter_dir:
        from peft import PeftModel

        check_adapter_base(adapter_dir, model_ref, base_identity(model))
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval(), processor


class _ChosenTokenLogProbs:
    """Logits processor that adds up each row's chosen-token log-probabilities as generate runs.

    Stacking every step's logits to score afterwards costs rows x steps x vocab floats (GBs at
    batch 32 with a 152k vocabulary); this keeps one step's log-softmax, to look up the token
    the next step shows was chosen, and one float per row and step. It runs before the grammar
    mask and the per-row temperature, so candidates are scored under the model itself (as
    decoded, repetition penalty included) on one scale, constrained or not.
    """

    def __init__(self):
        self._last = None  # [rows, vocab] log-softmax of the previous step
        self.per_step: list = []  # [rows] log-prob of each step's chosen token

    def _take(self, chosen) -> None:
        if self._last is not None:
            self.per_step.append(self._last.gather(1, chosen.view(-1, 1).to(self._last.device)).squeeze(1))

    def __call__(self, input_ids, scores):
        import torch

        self._take(input_ids[:, -1])
        self._last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens):
        """[rows, steps] log-probs, once generate has returned its final tokens."""
        import torch

        self._take(last_tokens)
        self._last = None
        return torch.stack(self.per_step, dim=1)


class _PerRowTemperature:
    """Logits processor dividing each row by its own temperature, so candidates sampled
    at different temperatures share one generate call instead of one call each."""

    def __init__(self, temperatures):
        self.temperatures = temperatures  # tensor [rows, 1]

    def __call__(self, input_ids, scores):
        return scores / self.temperatures.to(scores.dtype)


def _eos_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer: the generation config's (a list for some checkpoints,
    e.g. ChatML's <|im_end|> and <|endoftext|>) and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


class Captioner:
    def __init__(self, model, processor, version: str, generation: GenerationSettings | None = None):
        self.model = model
        self.processor = processor
        self.version = version
        self.generation = generation or GenerationSettings()
        # The peft wrapper holding creator adapters (core/creator_adapters.py), None while no creator
        # adapter is loaded: then generate runs on the plain model, without peft's per-layer cost.
        self.peft_model = None
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # batched decoding needs prompts right-aligned
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        try:
            self.chat = ChatFormat(processor)
        except MissingChatTemplate as exc:
            raise UnsupportedCheckpoint(str(exc)) from exc
        self.eos_ids = _eos_ids(model, tok)
        # The vision tower's own classifier heads, where the checkpoint ships them (the demo model).
        self.scene_heads: SceneHeads | None = None
        vocab = model.get_output_embeddings().weight.shape[0]
        self.constraint = (
            AnswerConstraint(tok, max(vocab, len(tok)), self.eos_ids) if self.generation.constrained else None
        )

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
        """Load a supported LLaVA checkpoint (local folder or hub id), merging a LoRA adapter if given.

        ``version``: the model's known version; without it the folders are content-hashed,
        which reads every weight file once (seconds for a 7B checkpoint, at every cold start).
        """
        t0 = time.perf_counter()
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        model, processor = load_merged(model_ref, adapter_ref, torch_dtype)
        model.to(device)
        version = version or model_version(model_ref, adapter_ref)
        log.info(
            "loaded %s (%s) on %s (%s) in %.1fs",
            version,
            model.config.model_type,
            device,
            torch_dtype,
            time.perf_counter() - t0,
        )
        captioner = cls(model, processor, version, generation)
        if Path(model_ref).is_dir():
            captioner.scene_heads = SceneHeads.load(model_ref)
        return captioner

    def describe(self) -> dict:
        """What /info says about this model (contracts.ModelDescription, less the service's settings)."""
        # Scene heads ship only with the demo model (training/build_demo.py), whatever its folder is called.
        demo = self.version.startswith(demo_version("")) or self.scene_heads is not None
        if demo and self.scene_heads is not None:
            labels = self.scene_heads.labels
            # Models built before generator version 7 knew plain and gradient backgrounds only.
            on = (
                ", on plain, gradient, textured or photo backgrounds" if "photo" in labels.get("background", ()) else ""
            )
            knows = (
                f"Only pictures of simple coloured shapes ({', '.join(s + 's' for s in labels['shape'])} in "
                f"{', '.join(labels['color'])}{on}): it is a small model trained here, so that everything "
                "runs offline. Photos of anything else come back flagged."
            )
        elif demo:
            knows = "Only pictures of simple coloured shapes: it is a small model trained here, for trying things out."
        else:
            knows = "Photos in general: a LLaVA vision-language checkpoint."
        return {
            "model_version": self.version,
            "model_type": self.model.config.model_type,
            "demo": demo,
            "knows": knows,
            "confidence_source": "the vision tower's scene heads (class probabilities)"
            if self.scene_heads is not None
            else "the answer's mean token probability",
        }

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _adapter_names(self, adapters: list[str | None]) -> list[str] | None:
        """peft's ``adapter_names`` for a batch, or None for the plain model. Once adapters are
        loaded, every batch names them, champion-only ones too: the wrapped layers would otherwise
        apply peft's active adapter to every row."""
        if self.peft_model is None:
            if any(adapters):
                raise RuntimeError(f"creator adapters {sorted(set(filter(None, adapters)))} are not loaded")
            return None
        return [a or NO_ADAPTER for a in adapters]

    def _generate(self, images, prompts, num_hashtags: list[int], temperatures=None, seed: int = 0, adapters=None):
        """One generate call, each row with its adapter (None: the champion); returns (texts, mean token log-probs, generated token count, the
        processed pixel values, which the scene heads read rather than process the images again)."""
        import torch
        from transformers import LogitsProcessorList

        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tok = self.processor.tokenizer
        scorer = _ChosenTokenLogProbs()
        processors = [scorer]
        max_new_tokens = self.generation.max_new_tokens
        if self.constraint is not None:
            processors.append(self.constraint.mask(num_hashtags))
            # Every field is capped in tokens, so this budget always holds a complete answer.
            max_new_tokens = answer_token_bound(max(num_hashtags))
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            repetition_penalty=self.generation.repetition_penalty,
            return_dict_in_generate=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=self.eos_ids,
        )
        adapter_names = self._adapter_names(adapters or [None] * len(prompts))
        model = self.model if adapter_names is None else self.peft_model
        if adapter_names is not None:
            kwargs["adapter_names"] = adapter_names
        if temperatures is None:
            kwargs["do_sample"] = False
        else:
            torch.manual_seed(seed)
            temps = torch.tensor(temperatures, dtype=torch.float32).unsqueeze(1).to(self.device)
            processors.append(_PerRowTemperature(temps))
            kwargs.update(do_sample=True, temperature=1.0, top_p=self.generation.top_p)
        with torch.inference_mode():
            out = model.generate(**inputs, **kwargs, logits_processor=LogitsProcessorList(processors))
            prompt_len = inputs["input_ids"].shape[1]
            new_tokens = out.sequences[:, prompt_len:]
            logprobs = scorer.finish(new_tokens[:, -1]).to(new_tokens.device)
        # Count tokens up to and including the first end-of-answer; padding after it does not count.
        is_eos = torch.isin(new_tokens, torch.tensor(self.eos_ids, device=new_tokens.device))
        after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
        valid = ~after_eos
        mean_lp = (logprobs * valid).sum(1) / valid.sum(1).clamp(min=1)
        texts = tok.batch_decode(new_tokens, skip_special_tokens=True)
        return texts, mean_lp.tolist(), int(valid.sum()), inputs.get("pixel_values")

    def caption_batch(self, jobs: list[CaptionJob], stats: BatchStats | None = None) -> list[list[Candidate]]:
        """Candidates for each job, best first. One greedy call for all jobs, and one sampled
        call for every extra candidate of every job, whatever the batch mix."""
        t0 = time.perf_counter()
        prompts = [self.chat.prompt(j.tone, j.audience, j.num_hashtags, j.platform) for j in jobs]
        images = [j.image for j in jobs]
        adapters = [j.adapter for j in jobs]
        texts, scores, ntok, pixels = self._generate(images, prompts, [j.num_hashtags for j in jobs], adapters=adapters)
        per_job: list[list[Candidate]] = [
            [self._candidate(t, s, j.num_hashtags)] for t, s, j in zip(texts, scores, jobs)
        ]
        rows = [
            (i, SAMPLE_TEMPERATURES[k % len(SAMPLE_TEMPERATURES)])
            for i, j in enumerate(jobs)
            for k in range(j.num_candidates - 1)
        ]
        if rows:
            s_texts, s_scores, s_tok, _ = self._generate(
                [images[i] for i, _ in rows],
                [prompts[i] for i, _ in rows],
                [jobs[i].num_hashtags for i, _ in rows],
                temperatures=[t for _, t in rows],
                seed=self.generation.seed,
                adapters=[adapters[i] for i, _ in rows],
            )
            ntok += s_tok
            for (i, _), t, s in zip(rows, s_texts, s_scores):
                per_job[i].append(self._candidate(t, s, jobs[i].num_hashtags))
        self._check_answers(images, pixels, per_job)
        for cands in per_job:
            # An answer that agreed with itself beats a likelier one that had to be corrected.
            cands.sort(key=lambda c: (not c.corrections, c.score), reverse=True)
        if stats is not None:
            stats.batch_size = len(jobs)
            stats.adapter_rows = sum(a is not None for a in adapters)
            stats.generated_tokens = ntok
            stats.seconds = time.perf_counter() - t0
        return per_job

    def _check_answers(self, images, pixels, per_job: list[list[Candidate]]) -> None:
        """How far to trust each answer, 0..1, and each answer made to name the same objects in
        caption, hashtags and alt text (core/answer_agreement.py), with what was corrected.

        With scene heads, confidence is the vision tower's own class probabilities for the
        picture (low for a picture with no object it knows, whatever the text says); the same
        reading settles which colour a contradicted object keeps, overrules the main object's
        colour or shape where the tower is sure of it (SURE_OF_OBJECT), and the alt text loses a
        background the tower is unsure of (scene_heads.drop_unsure_background) or the picture's
        border contradicts (plain_background.drop_contradicted_background). Without heads:
        the answer's mean token probability, exp(score), the one signal every checkpoint has
        (weaker: a model can be fluent and wrong)."""
        import math

        readings = borders = None
        if self.scene_heads is not None and pixels is not None:
            readings = self.scene_heads.read(vision_tower(self.model), pixels, TokenSelection.of(self.model.config))
            borders = [border_colour(image) for image in images]
        # A model with heads names its objects from their labels, main object first (the demo
        # model): then the first object of caption and alt text must be the same one.
        labels = self.scene_heads.labels if self.scene_heads is not None else {}
        palette, things = frozenset(labels.get("color", ())), frozenset(labels.get("shape", ()))
        for i, cands in enumerate(per_job):
            reading = readings[i] if readings is not None else None
            for c in cands:
                value = reading.confidence if reading is not None else math.exp(c.score)
                c.confidence = round(min(1.0, max(0.0, value)), 4)
                if reading is not None:
                    c.alt_text = drop_unsure_background(c.alt_text, reading)
                    c.alt_text = drop_contradicted_background(c.alt_text, borders[i])
                c.caption, c.hashtags, c.alt_text, settled = reconcile(
                    c.caption,
                    c.hashtags,
                    c.alt_text,
                    (reading.color, reading.shape) if reading is not None else None,
                    palette,
                    things,
                    reading.sure_parts(SURE_OF_OBJECT) if reading is not None else (None, None),
                )
                c.corrections = [d.sentence() for d in settled]

    def _candidate(self, text: str, score: float, num_hashtags: int) -> Candidate:
        answer = parse_output(text, num_hashtags, alt_text_max_chars=self.generation.alt_text_max_chars)
        return Candidate(**answer.model_dump(), score=round(float(score), 4))


def vision_tower(model):
    """The vision tower inside a LLaVA model (transformers 4.x and 5.x layouts), peft's wrapper
    (a creator adapter in training) unwrapped."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    inner = getattr(model, "model", model)
    return getattr(inner, "vision_tower", None) or model.vision_tower
