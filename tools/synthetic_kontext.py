"""FLUX.1-Kontext-dev's architecture with seeded random weights, built in place on the device (no download)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import torch

LATENT_CHANNELS = 16
"""The FLUX VAE's latent channels; the transformer sees them packed 2x2, so 64 input channels."""
COMPONENTS = ("transformer", "text_encoder_2", "text_encoder", "vae")


@dataclass(frozen=True)
class Scale:
    """The depths and widths that differ between the real model and the quick CPU copy; the rest is shared."""

    name: str
    double_blocks: int
    single_blocks: int
    heads: int
    head_dim: int
    rope_axes: tuple[int, int, int]
    """Splits ``head_dim`` between the rotary position axes (id, row, column)."""
    t5_width: int
    """T5's d_model, which is also the transformer's joint attention width."""
    t5_ff: int
    t5_heads: int
    t5_kv: int
    t5_layers: int
    t5_vocab: int
    clip_width: int
    """CLIP's hidden size, which is also the transformer's pooled projection width."""
    clip_ff: int
    clip_heads: int
    clip_layers: int
    clip_vocab: int
    vae_channels: tuple[int, int, int, int]
    vae_layers_per_block: int
    vae_groups: int


FULL = Scale(
    name="full", double_blocks=19, single_blocks=38, heads=24, head_dim=128, rope_axes=(16, 56, 56),
    t5_width=4096, t5_ff=10240, t5_heads=64, t5_kv=64, t5_layers=24, t5_vocab=32128,
    clip_width=768, clip_ff=3072, clip_heads=12, clip_layers=12, clip_vocab=49408,
    vae_channels=(128, 256, 512, 512), vae_layers_per_block=2, vae_groups=32,
)
"""FLUX.1-Kontext-dev: its transformer, T5-XXL and CLIP-L encoders and the FLUX VAE."""
QUICK = Scale(
    name="quick", double_blocks=1, single_blocks=2, heads=2, head_dim=16, rope_axes=(4, 6, 6),
    t5_width=32, t5_ff=64, t5_heads=4, t5_kv=8, t5_layers=2, t5_vocab=256,
    clip_width=32, clip_ff=64, clip_heads=4, clip_layers=2, clip_vocab=1024,
    vae_channels=(8, 8, 16, 16), vae_layers_per_block=1, vae_groups=4,
)
"""A few narrow layers of the same family: a 64 px, 2-step edit takes about a second on 2 CPU cores."""


def build_modules(scale: Scale, dtype: "torch.dtype", device: str, seed: int = 0) -> dict[str, Any]:
    """The four weighted components, created directly on ``device`` in ``dtype``.

    Nothing is made in fp32 on the host first (the full model would need 67 GB of RAM), and
    ``device="meta"`` allocates nothing at all. Each component is seeded on its own, so the
    same seed gives the same weights on the same hardware.
    """
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    makers: dict[str, Callable[[], Any]] = {
        "transformer": lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=scale.double_blocks,
            num_single_layers=scale.single_blocks, attention_head_dim=scale.head_dim,
            num_attention_heads=scale.heads, joint_attention_dim=scale.t5_width,
            pooled_projection_dim=scale.clip_width, guidance_embeds=True, axes_dims_rope=scale.rope_axes,
        ),
        "text_encoder_2": lambda: T5EncoderModel(T5Config(
            vocab_size=scale.t5_vocab, d_model=scale.t5_width, d_kv=scale.t5_kv, d_ff=scale.t5_ff,
            num_layers=scale.t5_layers, num_heads=scale.t5_heads, relative_attention_num_buckets=32,
            dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
            is_encoder_decoder=False,
        )),
        # bos/eos/pad ids are those of the tiny tokenizers' CLIP tokenizer (tools/tiny_tokenizers.py): the pooled output is read at its eos
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(
            vocab_size=scale.clip_vocab, hidden_size=scale.clip_width, intermediate_size=scale.clip_ff,
            num_attention_heads=scale.clip_heads, num_hidden_layers=scale.clip_layers, max_position_embeddings=77,
            projection_dim=scale.clip_width, hidden_act="quick_gelu", attention_dropout=0.0,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )),
        "vae": lambda: AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=scale.vae_channels, layers_per_block=scale.vae_layers_per_block,
            norm_num_groups=scale.vae_groups, use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=0.1159, scaling_factor=0.3611, sample_size=1024,
        ),
    }
    modules: dict[str, Any] = {}
    with _creating(dtype, device):
        for offset, name in enumerate(COMPONENTS):
            torch.manual_seed(seed + offset)
            modules[name] = makers[name]().eval()
    return modules


def build_synthetic_kontext(scale: Scale, dtype: "torch.dtype", device: str, seed: int = 0) -> Any:
    """A FluxKontextPipeline of ``scale`` on ``device``, with the tiny tokenizers (tools/tiny_tokenizers.py), built in process.

    The tokenizers' vocabularies are tiny; random weights don't care, as long as every id has a row.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline

    from tools.tiny_tokenizers import build_tokenizers

    tokenizer, tokenizer_2 = build_tokenizers()
    if len(tokenizer) > scale.clip_vocab or len(tokenizer_2) > scale.t5_vocab:
        raise ValueError(f"tokenizer ids ({len(tokenizer)}, {len(tokenizer_2)}) exceed the {scale.name} "
                         f"embeddings ({scale.clip_vocab}, {scale.t5_vocab})")
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, use_dynamic_shifting=True,
    )
    return FluxKontextPipeline(scheduler=scheduler, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                               **build_modules(scale, dtype, device, seed))


def parameter_counts(scale: Scale) -> dict[str, int]:
    """Parameters per component, counted on the meta device (no memory, a fraction of a second)."""
    import torch

    modules = build_modules(scale, torch.bfloat16, "meta")
    return {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}


FULL_PARAMETERS = 16_870_599_139
"""``sum(parameter_counts(FULL).values())``, kept as a number so that a refusal can be said before diffusers is
imported (~10 s on a small CPU); test_synthetic_kontext checks it against the count."""


def weight_bytes(scale: Scale, dtype: "torch.dtype") -> int:
    """What the weights of ``scale`` take in ``dtype``."""
    return sum(parameter_counts(scale).values()) * dtype.itemsize


@contextlib.contextmanager
def _creating(dtype: "torch.dtype", device: str) -> Iterator[None]:
    """New tensors default to ``dtype`` on ``device`` inside; the process default dtype is restored after."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)
