"""A tiny, randomly initialised but real FluxKontextPipeline, built fully offline for dev and tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from tools.tiny_tokenizers import build_tokenizers

COMPLETE_MARKER = ".tiny-kontext-complete"
FAST_REVISION = 2
"""The fast build's layout, recorded in the marker: a folder holding an older one is rebuilt (revision 1, recorded as
``true``, kept the VAE's resnets)."""


def build_tiny_kontext(out_dir: Path, seed: int = 0, *, fast: bool = False) -> Path:
    """Write the pipeline with ``save_pretrained`` into ``out_dir`` and return it.

    1 double + 1 single transformer block, tiny CLIP and T5 encoders, a 4-block VAE (so the
    8x resolution arithmetic is the real one). Every module is seeded and in eval mode with
    dropout 0, so the same ``seed`` writes the same weights.

    ``fast``: the same pipeline classes and resolution arithmetic without the costliest pieces on a CPU (the VAE's
    mid-block self-attention over every latent pixel, the resnets of its encoder's blocks and one of its decoder's
    per block, and a second transformer attention head): an edit takes a fifth to a third of the time. Its bytes
    are pinned nowhere; the golden files are recorded on the default build.

    Only a build of this function's is ever replaced: ``FileExistsError`` for a folder that holds anything else (a
    real model, say), which is left as it is.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and recorded_build(out_dir) is None and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} holds files that are not a tiny Kontext build: not replacing them")
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = build_tokenizers()

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, projection_dim=32, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, hidden_act="gelu", attention_dropout=0.0,
    ))
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
        pad_token_id=0, eos_token_id=1, is_encoder_decoder=False,
    ))
    torch.manual_seed(seed + 2)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=1 if fast else 2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4), layers_per_block=0 if fast else 1, norm_num_groups=2,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
        mid_block_add_attention=not fast,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, use_dynamic_shifting=True,
    )
    pipe = FluxKontextPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )
    for module in (text_encoder, text_encoder_2, transformer, vae):
        module.eval()

    staging = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    marker = {"seed": seed, "fast": FAST_REVISION if fast else False, "transformers": transformers_major()}
    (staging / COMPLETE_MARKER).write_text(json.dumps(marker))
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


def is_complete(model_dir: Path, *, fast: Optional[bool] = False) -> bool:
    """Fully written, as the ``fast`` build (of ``FAST_REVISION``) or not (None: either), by the transformers major
    version running now.

    transformers 4 loads a CLIPTextModel saved by 5 with random weights (5 drops the ``text_model.``
    key prefix) and only warns, so another major's build counts as missing and gets rebuilt.
    """
    recorded = recorded_build(model_dir)
    if recorded is None:
        return False
    wanted = (False, FAST_REVISION) if fast is None else (FAST_REVISION if fast else False,)
    return recorded.get("transformers") == transformers_major() and recorded.get("fast", False) in wanted


def recorded_build(model_dir: Path) -> Optional[dict]:
    """What the marker of a build of ``build_tiny_kontext``'s says (seed, fast revision, transformers major); None
    where there is none (no build, or another model)."""
    marker = Path(model_dir) / COMPLETE_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def transformers_major() -> int:
    """The running transformers' major version: 4 and 5 save and tokenize differently."""
    import transformers

    return int(transformers.__version__.split(".")[0])
