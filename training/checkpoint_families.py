"""Random-weight checkpoints of the three LLaVA families the service serves, built offline.

Nothing can be downloaded here, so each family is rebuilt from transformers configs: the same
model class, processor class, special tokens, chat template and image tiling a llava-hf Hub
checkpoint ships, at a tiny size with random weights. ``save_pretrained`` writes them exactly
as a Hub checkpoint is laid out, so ``AutoModelForImageTextToText.from_pretrained`` and
``AutoProcessor.from_pretrained`` load them through the same code paths as the real ones.

``shape="7b"`` gives the published 7B shapes (configs only: build them on the ``meta`` device
or straight on a GPU); ``shape="tiny"`` is what tests and CPU runs use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from training import synthetic

FAMILIES = ("llava", "llava_next", "llava_onevision")
SHAPES = ("tiny", "7b")

# Bump when anything here changes what a cached checkpoint contains (tokenizer corpus, special
# tokens, processor settings, the way weights are drawn): it is part of the cache key.
RECIPE_VERSION = "1"
META_FILE = "snap2caption_checkpoint.json"

TOKENIZER_VOCAB = 1024
# The base LLMs' context lengths (Llama-2: 4096; Mistral-7B-v0.2 and Qwen2-7B: 32768).
CONTEXT_LENGTH = {"llava": 4096, "llava_next": 32768, "llava_onevision": 32768}
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"

# Special tokens in id order: BpeTrainer gives them ids 0..n-1, so the ids are known before the
# tokenizer is trained and a config can be written without one. The order mirrors the real
# vocabularies (Llama's <unk>=0 <s>=1 </s>=2; Qwen2's <|endoftext|> < <|im_start|> < <|im_end|>),
# with the tokens the llava-hf conversion appended (<image>, then <pad> or <video>) after them.
SPECIAL_TOKENS = {
    "llava": ["<unk>", "<s>", "</s>", IMAGE_TOKEN, "<pad>"],
    "llava_next": ["<unk>", "<s>", "</s>", IMAGE_TOKEN, "<pad>"],
    "llava_onevision": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN, VIDEO_TOKEN],
}
# Which special token plays which role (None: the family has none, as Qwen2 has no bos).
TOKEN_ROLES = {
    "llava": {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"},
    "llava_next": {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"},
    "llava_onevision": {"bos": None, "eos": "<|im_end|>", "unk": None, "pad": "<|endoftext|>"},
}

# --- chat templates -------------------------------------------------------------------------
# Verbatim copies of what the llava-hf checkpoints ship (chat_template.json), quirks included, so
# a prompt rendered here is the prompt the real checkpoint was converted and evaluated with.

# llava-hf/llava-1.5-7b-hf: "USER: <image>\n<prompt> ASSISTANT:". Same string as the
# transformers tests (tests/models/llava/test_processing_llava.py) and OpenVINO GenAI's table of
# known chat_template.json files; assistant text is inside {% generation %} for assistant masks.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-v1.6-mistral-7b-hf: "[INST] <image>\n<prompt> [/INST]", Mistral-Instruct's
# format; [INST] and [/INST] are plain text for this tokenizer. The user turn already ends with
# [/INST], so add_generation_prompt adds nothing. The Hub file once had '<\\s>' (a JSON escaping
# slip) where '</s>' belongs; this is the corrected one the checkpoint ships now.
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# llava-hf/llava-onevision-qwen2-7b-ov-hf (and -0.5b-ov-hf): Qwen2 ChatML with the role and the
# media on one line, "<|im_start|>user <image>\n<prompt><|im_end|><|im_start|>assistant\n". As
# shipped there is no newline after <|im_end|> (transformers tests/models/llava_onevision,
# vLLM's offline_inference example for this checkpoint), and an assistant turn opens with
# "assistant \n" where the generation prompt ends "assistant\n".
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CHAT_TEMPLATES = {
    "llava": LLAVA_TEMPLATE,
    "llava_next": LLAVA_NEXT_TEMPLATE,
    "llava_onevision": LLAVA_ONEVISION_TEMPLATE,
}

# --- shapes ---------------------------------------------------------------------------------
# Tiny: 32 px base image in 8 px patches (16 patch tokens), grids up to 2x2 tiles for the anyres
# families, so a batch of odd aspect ratios exercises the tiling in a few hundred tokens.
TINY = {
    "image_size": 32,
    "patch_size": 8,
    "vision_hidden": 32,
    "vision_layers": 2,  # vision_feature_layer=-2 needs a layer before the last
    "vision_heads": 2,
    "text_hidden": 64,
    "text_layers": 2,
    "text_heads": 4,
    "text_kv_heads": 2,  # grouped-query attention, as Mistral-7B and Qwen2-7B use
    "max_positions": 4096,  # RoPE has no position table: this costs nothing
}
TINY_PINPOINTS = {
    # LLaVA-1.6's five grids (1x2, 2x1, 2x2, 3x1, 1x3 tiles of 336) cut to those of at most 2x2.
    "llava_next": [[32, 64], [64, 32], [64, 64]],
    # OneVision's anyres_max_9 grid (every 1..6 x 1..6 tiles of 384) cut to 1..2 x 1..2.
    "llava_onevision": [[32, 32], [32, 64], [64, 32], [64, 64]],
}

# Published shapes. Sources: the config classes' documented defaults in transformers 5.24
# (LlavaConfig/LlavaNextConfig vision defaults = CLIP ViT-L/14-336; LlavaOnevisionConfig vision
# defaults = SigLIP so400m-patch14-384 with its last layer dropped, 26 of 27, and the 36-grid
# anyres_max_9 pinpoints), the conversion scripts convert_llava_next_weights_to_hf.py and
# convert_llava_onevision_weights_to_hf.py (vocab = base vocab + <image> (+ <pad>/<video>), padded
# to a multiple of 64: 32000 -> 32064, Qwen2's 152064 -> 152128), and the base LLMs' configs:
# Llama-2-7B (4096/32 layers/32 heads/11008, 4096 positions, rms eps 1e-5),
# Mistral-7B-Instruct-v0.2 (4096/32/32 heads, 8 KV heads/14336, rope_theta 1e6, no sliding window,
# rms eps 1e-5), Qwen2-7B-Instruct (3584/28/28 heads, 4 KV heads/18944, rope_theta 1e6, rms eps 1e-6).
CLIP_L14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
SIGLIP_SO400M_384 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "vision_use_head": False,
}
LLAMA2_7B = {
    "vocab_size": 32064,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
MISTRAL_7B_V02 = {
    "vocab_size": 32064,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "sliding_window": None,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
}
QWEN2_7B = {
    "vocab_size": 152128,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
}
LLAVA_NEXT_PINPOINTS_7B = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
ONEVISION_PINPOINTS_7B = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]

# The Hub checkpoints' image statistics: OpenAI CLIP's for CLIP towers, SigLIP's 0.5/0.5.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]


def _check(family: str, shape: str = "tiny") -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def special_token_ids(family: str) -> dict[str, int | None]:
    """bos/eos/pad/unk/image(/video) ids, fixed by SPECIAL_TOKENS' order (see there)."""
    _check(family)
    index = {tok: i for i, tok in enumerate(SPECIAL_TOKENS[family])}
    ids = {role: (index[tok] if tok else None) for role, tok in TOKEN_ROLES[family].items()}
    ids["image"] = index[IMAGE_TOKEN]
    if VIDEO_TOKEN in index:
        ids["video"] = index[VIDEO_TOKEN]
    return ids


# --- tokenizer ------------------------------------------------------------------------------


def tokenizer_corpus() -> list[str]:
    """What the tokenizer learns merges from: every target the generator writes, plus prompts.

    Fixed lines, not the service's prompt module, so a prompt wording change does not rebuild
    every cached checkpoint. The chat-template scaffolding is included so role markers ("USER:",
    "[INST]", "assistant") are a few tokens each, as they are in the real vocabularies.
    """
    lines = synthetic.corpus_lines()
    lines += [
        f"Write an Instagram caption for this photo in a {tone} tone for a {audience} audience, "
        "then up to 5 hashtags and alt text, one line each."
        for tone in synthetic.TONES
        for audience in synthetic.AUDIENCES
    ]
    lines += ["USER: ASSISTANT:", "[INST] [/INST]", "user\nassistant\n", "Caption:", "Hashtags:", "Alt text:"]
    return lines


def train_byte_level_bpe(lines: list[str], special_tokens: list[str], vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``lines``, the special tokens first
    (ids 0..n-1). Byte-level, so any text (an unseen tone, an emoji) still encodes. The demo
    model's tokenizer and each family's come from here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def train_tokenizer(family: str, vocab_size: int = TOKENIZER_VOCAB):
    """Byte-level BPE with the family's own special tokens."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    _check(family)
    specials = SPECIAL_TOKENS[family]
    roles = TOKEN_ROLES[family]
    tok = train_byte_level_bpe(tokenizer_corpus(), specials, vocab_size)
    if roles["bos"]:
        # Llama and Mistral tokenizers prepend <s>; Qwen2's prepends nothing.
        bos = roles["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, specials.index(bos))]
        )
    extra = {"image_token": IMAGE_TOKEN}
    if VIDEO_TOKEN in specials:
        extra["video_token"] = VIDEO_TOKEN
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=roles["bos"],
        eos_token=roles["eos"],
        pad_token=roles["pad"],
        unk_token=roles["unk"],
        extra_special_tokens=extra,
        padding_side="left",  # batched generation: every prompt ends where generation starts
        model_max_length=CONTEXT_LENGTH[family],  # the real one: the 7b shape shares this tokenizer
    )
    # The special-token ids are baked into the config before training; make sure they held.
    moved = [t for i, t in enumerate(specials) if hf.convert_tokens_to_ids(t) != i]
    if moved:
        raise RuntimeError(f"special tokens {moved} did not get ids 0..{len(specials) - 1} in SPECIAL_TOKENS order")
    return hf


# --- processor ------------------------------------------------------------------------------


def _image_processor_classes() -> dict[str, type]:
    """The classes AutoProcessor would load for each family: the torchvision backend when
    torchvision is installed, else the PIL one (both save the same fields), so the processor
    built here is the one a reload of the saved folder gives."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import CLIPImageProcessor, LlavaNextImageProcessor, LlavaOnevisionImageProcessor

        return {
            "llava": CLIPImageProcessor,
            "llava_next": LlavaNextImageProcessor,
            "llava_onevision": LlavaOnevisionImageProcessor,
        }
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    return {
        "llava": CLIPImageProcessorPil,
        "llava_next": LlavaNextImageProcessorPil,
        "llava_onevision": LlavaOnevisionImageProcessorPil,
    }


def _image_processor(family: str, shape: str = "tiny"):
    """The family's Hub image processor settings, scaled to the shape."""
    cls = _image_processor_classes()[family]
    size = _vision_shape(family, shape)["image_size"]
    if family == "llava":  # CLIP: shortest edge to the tower's size, then a centre crop
        return cls(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )
    pinpoints = _pinpoints(family, shape)
    if family == "llava_next":  # CLIP tiles: the whole image plus the best-fitting grid of crops
        return cls(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_grid_pinpoints=pinpoints,
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )
    # SigLIP tiles: square resize, no crop.
    return cls(
        size={"height": size, "width": size},
        image_grid_pinpoints=pinpoints,
        image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
    )


def processor_for(family: str, shape: str = "tiny"):
    """The family's processor alone (the tokenizer trained here), e.g. to go with a 7b model
    built from model_config on a GPU."""
    return build_processor(family, train_tokenizer(family), shape)


def _pinpoints(family: str, shape: str) -> list[list[int]]:
    if shape == "tiny":
        return TINY_PINPOINTS[family]
    return LLAVA_NEXT_PINPOINTS_7B if family == "llava_next" else ONEVISION_PINPOINTS_7B


def build_processor(family: str, tokenizer, shape: str = "tiny"):
    """The family's processor with the settings its Hub processor_config.json has."""
    from transformers import LlavaNextProcessor, LlavaOnevisionProcessor, LlavaProcessor

    _check(family, shape)
    image_processor = _image_processor(family, shape)
    vision = _vision_shape(family, shape)
    template = CHAT_TEMPLATES[family]
    if family == "llava":
        return LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=vision["patch_size"],
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
            chat_template=template,
        )
    if family == "llava_next":
        return LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=vision["patch_size"],
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=template,
        )
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=_video_processor(vision["image_size"]),
        # Tokens per tile: SigLIP has no CLS, so the "full" strategy keeps every patch.
        num_image_tokens=(vision["image_size"] // vision["patch_size"]) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=template,
    )


def _video_processor(size: int):
    """OneVision's processor has a video slot, filled as on the Hub (SigLIP statistics, the base
    tile size). transformers 5.24 implements it with torchvision only, and the processor neither
    builds nor loads (AutoProcessor) without it, even for images alone."""
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        raise ImportError("LLaVA-OneVision's processor needs torchvision (its video processor) in transformers 5.x")
    from transformers import LlavaOnevisionVideoProcessor

    return LlavaOnevisionVideoProcessor(
        size={"height": size, "width": size}, image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD
    )


# --- model config ---------------------------------------------------------------------------


def _vision_shape(family: str, shape: str) -> dict:
    if shape == "7b":
        return SIGLIP_SO400M_384 if family == "llava_onevision" else CLIP_L14_336
    t = TINY
    common = {
        "hidden_size": t["vision_hidden"],
        "intermediate_size": t["vision_hidden"] * 4,
        "num_hidden_layers": t["vision_layers"],
        "num_attention_heads": t["vision_heads"],
        "image_size": t["image_size"],
        "patch_size": t["patch_size"],
    }
    if family == "llava_onevision":
        return {**common, "vision_use_head": False}
    return {**common, "projection_dim": t["vision_hidden"]}


def _text_shape(family: str, shape: str) -> dict:
    if shape == "7b":
        return {"llava": LLAMA2_7B, "llava_next": MISTRAL_7B_V02, "llava_onevision": QWEN2_7B}[family]
    t = TINY
    text = {
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": t["text_hidden"],
        "intermediate_size": t["text_hidden"] * 3,
        "num_hidden_layers": t["text_layers"],
        "num_attention_heads": t["text_heads"],
        "num_key_value_heads": t["text_heads"] if family == "llava" else t["text_kv_heads"],
        "max_position_embeddings": t["max_positions"],
    }
    if family == "llava_next":
        text["sliding_window"] = None
    return text


def model_config(family: str, shape: str = "tiny", vocab_size: int | None = None):
    """The family's LlavaConfig / LlavaNextConfig / LlavaOnevisionConfig, no weights.

    Token ids are the local tokenizer's (see SPECIAL_TOKENS), for both shapes.
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaNextConfig,
        LlavaOnevisionConfig,
        MistralConfig,
        Qwen2Config,
        SiglipVisionConfig,
    )

    _check(family, shape)
    ids = special_token_ids(family)
    text = dict(_text_shape(family, shape))
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    token_ids = {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
    vision = _vision_shape(family, shape)
    if family == "llava":
        return LlavaConfig(
            vision_config=CLIPVisionConfig(**vision),
            text_config=LlamaConfig(**text, **token_ids, tie_word_embeddings=False),
            image_token_index=ids["image"],
            projector_hidden_act="gelu",
            vision_feature_layer=-2,  # the penultimate CLIP layer, as LLaVA-1.5 was trained
            vision_feature_select_strategy="default",  # drop CLS
            image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
            tie_word_embeddings=False,
        )
    if family == "llava_next":
        return LlavaNextConfig(
            vision_config=CLIPVisionConfig(**vision),
            text_config=MistralConfig(**text, **token_ids, tie_word_embeddings=False),
            image_token_index=ids["image"],
            projector_hidden_act="gelu",
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            image_grid_pinpoints=_pinpoints(family, shape),
            image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
            tie_word_embeddings=False,
        )
    return LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**vision),
        text_config=Qwen2Config(**text, **token_ids, tie_word_embeddings=False),
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        projector_hidden_act="gelu",
        vision_feature_layer=-1,  # SigLIP's last kept layer (the real tower's 27th was dropped)
        vision_feature_select_strategy="full",  # no CLS to drop
        image_grid_pinpoints=_pinpoints(family, shape),
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )


# --- build ----------------------------------------------------------------------------------


def build_random(family: str, shape: str = "tiny", seed: int = 0, vocab_size: int | None = None):
    """(model, processor) with random weights, in eval mode. Allocates the whole model: use
    model_config for the 7b shape unless the memory is there."""
    import torch
    from transformers import AutoModelForImageTextToText

    _check(family, shape)
    tokenizer = train_tokenizer(family)
    processor = build_processor(family, tokenizer, shape)
    cfg = model_config(family, shape, vocab_size=vocab_size or (len(tokenizer) if shape == "tiny" else None))
    if cfg.text_config.vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {cfg.text_config.vocab_size} < the tokenizer's {len(tokenizer)} tokens")
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(cfg)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
        cfg.text_config.bos_token_id,
        cfg.text_config.eos_token_id,
        cfg.text_config.pad_token_id,
    )
    return model.eval(), processor


# --- cache ----------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """Where checkpoints are kept: $SNAP2CAPTION_CACHE/checkpoints, as infra/python_env.sh keys
    its venvs under $SNAP2CAPTION_CACHE (default ~/.cache/snap2caption)."""
    base = os.environ.get("SNAP2CAPTION_CACHE") or str(Path.home() / ".cache" / "snap2caption")
    return Path(base) / "checkpoints"


def recipe_key(family: str) -> str:
    """Hash of everything that decides the tiny checkpoint's bytes."""
    _check(family)
    cfg = model_config(family, "tiny").to_dict()
    cfg.pop("transformers_version", None)  # a newer transformers loads the same checkpoint
    blob = json.dumps(
        {
            "recipe": RECIPE_VERSION,
            "family": family,
            "config": cfg,
            "tiny": TINY,
            "pinpoints": TINY_PINPOINTS.get(family),
            "image_stats": [CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD],
            "template": CHAT_TEMPLATES[family],
            "special_tokens": SPECIAL_TOKENS[family],
            "context": CONTEXT_LENGTH[family],
            "corpus": hashlib.sha256("\n".join(tokenizer_corpus()).encode()).hexdigest(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def is_built(path: Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def ensure_random_checkpoint(family: str, cache_root: Path | str | None = None) -> Path:
    """The tiny random checkpoint's folder (config, safetensors, processor), built on first use.

    cache_root replaces default_cache_root(); the folder is <cache_root>/<family>-<recipe key>.
    """
    import fcntl

    target = Path(cache_root or default_cache_root()) / f"{family}-{recipe_key(family)}"
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time per checkpoint: parallel test workers wait for the first instead of
    # writing the same folder beside it.
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_built(target):
            _build_into(target, family)
    return target


def _build_into(target: Path, family: str) -> None:
    tmp = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model, processor = build_random(family)
        model.save_pretrained(tmp)  # safetensors: transformers 5 writes nothing else
        processor.save_pretrained(tmp)
        meta = {"family": family, "shape": "tiny", "recipe": RECIPE_VERSION, "key": recipe_key(family)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(target, ignore_errors=True)  # a folder without META_FILE is an unfinished leftover
        # Rename last, so a killed build never leaves a folder that looks finished.
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
