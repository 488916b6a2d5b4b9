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
# 9: the demo model's tower is the hybrid (DEMO_ARCHITECTURE); captions name size and place.
# 8: 8x8 patches again (64 image tokens).
# 5: images squeezed to a square, not centre-cropped.
# 4: the tokenizer learns the prompts with platform and hashtag count.
# 3: the processor carries LLaVA-1.5's chat template (prompts come from prompting.ChatFormat).
ARCHITECTURE_VERSION = "9"

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
    # "clip": LLaVA-1.5's tower kind (a ViT), the default. "focalnet": a tower of focal
    # modulation (depthwise convolutions and gates, no attention) that transformers' LLaVA loads
    # too. Issue 15: trained on the same scenes, it reads shape on the held-out vector set far
    # better than the CLIP tower (55% against 31%), still far from a plain CNN (98%), which LLaVA
    # cannot load (docs/notes/demo-model.md, session 14; benchmarks/vision_towers.py). A
    # FocalNet tower has two stages: a stem of stride patch_size/2, then one 2x downsampling,
    # so it ends on the same (image_size/patch_size)^2 tokens; vision_layers is blocks per stage.
    vision_kind: str = "clip"
    # "hybrid" (DPT-Hybrid's tower, ViT-Hybrid's design): a BiT ResNet (7x7 stride-2 stem,
    # max-pool, then bottleneck stages at 1/4, 1/8 and 1/16 of the picture) whose last map,
    # projected to vision_hidden, feeds vision_layers ViT layers with a CLS token. Its stride
    # is 16, so it takes image_size 128 and patch_size 16 for the same 64 image tokens
    # (HYBRID_ARCHITECTURE). The only tower LLaVA loads that reads shape on pictures the
    # generator never drew: 97.7% of the held-out vector set's shapes, 88% of the photo set's,
    # against 31% / 25% for the CLIP tower (docs/notes/demo-model.md, session 16). What it
    # has that the others lack: two 3x3 convolutions at each of 32x32 and 16x16 before the
    # 8x8 grid (session 15).
    vision_conv_depths: tuple[int, ...] = (2, 2, 1)  # bottleneck blocks per BiT stage (hybrid only)
    vision_conv_widths: tuple[int, ...] = (128, 192, 256)  # each stage's output channels (hybrid only)
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
        # CLIP's CLS token is one more output token, dropped by the "default" strategy; a
        # FocalNet tower has none, so LLaVA reads all its tokens ("full").
        vision_feature_select_strategy=feature_strategy(arch),
        num_additional_image_tokens=1 if feature_strategy(arch) == "default" else 0,
        # A LLaVA-1.5 architecture, so LLaVA-1.5's conversation format: one prompt path for every model.
        chat_template=LLAVA_TEMPLATE,
    )


VISION_KINDS = ("clip", "focalnet", "hybrid")
# BiT's stem strides 4 and each later stage 2: three stages make a stride-16 tower.
HYBRID_STRIDE = 16
HYBRID_ARCHITECTURE = DemoArchitecture(
    vision_kind="hybrid", image_size=128, patch_size=HYBRID_STRIDE, vision_layers=1
)  # 64 tokens, one ViT layer
# What `snap2caption demo-model` builds: the tower that reads shapes on pictures the generator
# never drew (issue 15). DemoArchitecture()'s own defaults stay the CLIP tower, so the keys of
# models built before stay what they were.
DEMO_ARCHITECTURE = HYBRID_ARCHITECTURE


def feature_strategy(arch: DemoArchitecture) -> str:
    """LLaVA's vision_feature_select_strategy for the tower: drop a CLS token (CLIP's, the hybrid's
    ViT's), keep every token of a tower without one (FocalNet)."""
    return "full" if arch.vision_kind == "focalnet" else "default"


def vision_config(arch: DemoArchitecture):
    from transformers import BitConfig, CLIPVisionConfig, DPTConfig, FocalNetConfig

    if arch.vision_kind == "clip":
        return CLIPVisionConfig(
            hidden_size=arch.vision_hidden,
            intermediate_size=arch.vision_hidden * 4,
            num_hidden_layers=arch.vision_layers,
            num_attention_heads=arch.vision_heads,
            image_size=arch.image_size,
            patch_size=arch.patch_size,
            projection_dim=arch.vision_hidden,
        )
    if arch.vision_kind == "focalnet":
        if arch.patch_size % 2 or arch.vision_hidden % 2:
            raise ValueError("a FocalNet demo tower needs an even patch_size and vision_hidden")
        return FocalNetConfig(
            image_size=arch.image_size,
            patch_size=arch.patch_size // 2,
            embed_dim=arch.vision_hidden // 2,
            depths=[arch.vision_layers, arch.vision_layers],
            focal_levels=[2, 2],
            focal_windows=[3, 3],
            # An overlapping convolutional stem (7x7, stride patch_size/2) rather than ViT-like
            # non-overlapping patches: 2.5 points more own-scene shape at the same cost (session 14).
            use_conv_embed=True,
            # LLaVA's projector reads the tower's width from vision_config.hidden_size, which
            # FocalNetConfig does not define (SwinConfig does): the width of the last stage.
            hidden_size=arch.vision_hidden,
        )
    if arch.vision_kind == "hybrid":
        if arch.patch_size != HYBRID_STRIDE or len(arch.vision_conv_depths) != 3 or len(arch.vision_conv_widths) != 3:
            raise ValueError(
                f"a hybrid demo tower has three BiT stages and stride {HYBRID_STRIDE}: patch_size={HYBRID_STRIDE}, "
                "three vision_conv_depths and vision_conv_widths (HYBRID_ARCHITECTURE)"
            )
        grid = arch.image_size // HYBRID_STRIDE
        bit = BitConfig(
            layer_type="bottleneck",
            embedding_size=arch.vision_conv_widths[0] // 4,
            hidden_sizes=list(arch.vision_conv_widths),
            depths=list(arch.vision_conv_depths),
            # GroupNorm over 16 groups: the bottlenecks' narrowest layer (a quarter of the first
            # stage's width) must split evenly; BiT's default 32 assumes a full-size ResNet.
            num_groups=16,
            global_padding="SAME",
            hidden_act="gelu",
            out_features=["stage1", "stage2", "stage3"],
        )
        return DPTConfig(
            is_hybrid=True,
            backbone_config=bit,
            backbone_featmap_shape=[1, arch.vision_conv_widths[-1], grid, grid],
            hidden_size=arch.vision_hidden,
            intermediate_size=arch.vision_hidden * 4,
            num_hidden_layers=arch.vision_layers,
            num_attention_heads=arch.vision_heads,
            image_size=arch.image_size,
            patch_size=HYBRID_STRIDE,
            hidden_act="gelu",
            # Only DPT's depth-estimation neck reads these (LLaVA builds DPTModel, which has none):
            # sized to this tower rather than left at the full-size defaults.
            neck_hidden_sizes=[arch.vision_hidden // 2, *[arch.vision_hidden] * 3],
            reassemble_factors=[1, 1, 1, 1],
        )
    raise ValueError(f"unknown vision_kind {arch.vision_kind!r}; expected one of {VISION_KINDS}")


def build_model(arch: DemoArchitecture, tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = vision_config(arch)
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
        vision_feature_select_strategy=feature_strategy(arch),
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
