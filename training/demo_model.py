"""Assemble the embedded demo model: a small but real LlavaForConditionalGeneration (LLaVA-1.5).

A CLIP-style vision tower and a Llama-style decoder come from transformers configs, the
tokenizer is trained here with ``tokenizers``; the result saves and loads with
``save_pretrained``/``from_pretrained`` like any LLaVA checkpoint on the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass

from snap2caption_service.core.contracts import ANSWER_LABELS, MAX_HASHTAGS, MIN_HASHTAGS
from snap2caption_service.core.platforms import PLATFORM_NAMES
from snap2caption_service.core.prompting import IMAGE_TOKEN, instruction
from training import synthetic
from training.checkpoint_families import LLAVA_TEMPLATE, train_byte_level_bpe

# Bump when the architecture, tokenizer recipe or prompt format changes: the demo-model cache is keyed by it.
# 8: 8x8 patches again (64 image tokens).
# 5: images squeezed to a square, not centre-cropped.
# 4: the tokenizer learns the prompts with platform and hashtag count.
# 3: the processor carries LLaVA-1.5's chat template (prompts come from prompting.ChatFormat).
ARCHITECTURE_VERSION = "8"

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN]


@dataclass(frozen=True)
class DemoArchitecture:
    image_size: int = 64
    # 8x8 patches, 64 image tokens: on these scenes the tower reads shape right in 98.5% of them,
    # against 94% with 16x16 patches (16 tokens), whose captions were right in 86% against 93%.
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    vocab_size: int = 1024
    max_positions: int = 512


def train_tokenizer(vocab_size: int):
    """Byte-level BPE over every prompt and target the generator can write.

    Byte-level so that any creator text (an unseen tone, an emoji) still encodes.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    lines = synthetic.corpus_lines()
    lines += [
        instruction(t, a, k, p)
        for t in synthetic.TONES
        for a in synthetic.AUDIENCES
        for k in range(MIN_HASHTAGS, MAX_HASHTAGS + 1)
        for p in PLATFORM_NAMES
    ]
    lines += ["USER: ASSISTANT:", *ANSWER_LABELS]
    tok = train_byte_level_bpe(lines, SPECIAL_TOKENS, vocab_size)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=512,
    )
    return hf


def build_processor(arch: DemoArchitecture, tokenizer):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    # Squeezed to a square rather than centre-cropped (CLIP's default): a crop of a tall or wide
    # picture can cut off the very object the caption is about. Training stretches some scenes so
    # that a squeezed shape still reads as itself (synthetic._camera).
    image_processor = CLIPImageProcessorPil(
        size={"height": arch.image_size, "width": arch.image_size},
        do_center_crop=False,
        crop_size={"height": arch.image_size, "width": arch.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=arch.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        # A LLaVA-1.5 architecture, so LLaVA-1.5's conversation format: one prompt path for every model.
        chat_template=LLAVA_TEMPLATE,
    )


def build_model(arch: DemoArchitecture, tokenizer, seed: int = 0):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=arch.vision_hidden * 4,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        projection_dim=arch.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_hidden * 3,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_heads,
        max_position_embeddings=arch.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(arch.image_size // arch.patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_untrained(arch: DemoArchitecture | None = None, seed: int = 0):
    """Random-weight model + processor: what training starts from, and what fast tests use."""
    arch = arch or DemoArchitecture()
    tokenizer = train_tokenizer(arch.vocab_size)
    return build_model(arch, tokenizer, seed), build_processor(arch, tokenizer)
