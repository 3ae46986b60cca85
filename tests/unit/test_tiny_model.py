"""The tiny-model builder: byte-identical rebuilds, and the token ids its tokenizers give on each stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.tiny_kontext import COMPLETE_MARKER, build_tiny_kontext, is_complete, transformers_major

SAME_ON_BOTH_STACKS = {
    # prompt: (CLIP ids, T5 ids), identical under transformers 4.52.4 and 5.x
    "add a red hat": ([0, 515, 131, 663, 592, 1], [3, 97, 14, 19, 10, 1]),
    "Make the sky BLUE, please!": (
        [0, 619, 697, 688, 533, 25, 160, 610, 130, 166, 139, 3, 1],
        [4, 2, 18, 38, 4, 57, 5, 53, 29, 4, 2, 26, 47, 18, 20, 5, 2, 1]),
    "give it 3 more trees and 42 stars": (
        [0, 576, 146, 169, 39, 622, 168, 655, 138, 167, 518, 41, 37, 692, 130, 164, 167, 1],
        [8, 4, 34, 25, 65, 4, 16, 72, 30, 62, 20, 48, 19, 70, 83, 4, 55, 75, 20, 1]),
    "猫狗 on the roof": ([0, 328, 470, 210, 328, 468, 493, 627, 697, 164, 158, 626, 1],
                         [4, 2, 4, 23, 4, 57, 5, 4, 22, 58, 58, 86, 1]),
    "cafe\u0301 and café": (  # decomposed and composed é: both stacks normalise to NFC
        [0, 539, 140, 256, 207, 518, 539, 140, 256, 207, 1], [36, 18, 86, 2, 48, 19, 36, 18, 86, 2, 1]),
    "  two  spaces\tand a tab\n": (
        [0, 168, 174, 159, 166, 633, 134, 138, 167, 518, 131, 168, 130, 133, 1],
        [30, 21, 58, 27, 106, 51, 5, 20, 48, 19, 97, 30, 18, 107, 1]),
}

CLIP_BY_MAJOR = {
    # v4 loads the slow CLIPTokenizer (the class real checkpoints name), which cleans prompts with ftfy
    # (a requirement): quotes uncurled, ligatures split, mojibake repaired, control characters dropped.
    # v5's tokenizers-backed CLIPTokenizer does none of that. T5 ids agree on both for all of these.
    "it’s a “vintage” photo": {
        4: [0, 146, 169, 14, 167, 131, 5, 172, 608, 130, 142, 139, 5, 160, 602, 701, 1],
        5: [0, 146, 169, 318, 446, 497, 167, 131, 318, 446, 503, 172, 608, 130, 142, 139, 318, 446, 505, 160, 602, 701,
            1]},
    "ﬁre": {4: [0, 573, 1], 5: [0, 344, 212, 448, 164, 139, 1]},
    "cafÃ©": {4: [0, 539, 140, 256, 207, 1], 5: [0, 539, 140, 256, 195, 254, 207, 1]},
    "ctrl\x07char": {4: [0, 134, 702, 152, 548, 165, 1], 5: [0, 134, 702, 153, 393, 548, 165, 1]},
}
T5_OF_DIFFERING = {"it’s a “vintage” photo": [4, 34, 25, 2, 20, 97, 4, 2, 79, 31, 18, 32, 5, 2, 26, 92, 24, 1],
                   "ﬁre": [11, 1], "cafÃ©": [36, 18, 86, 2, 1], "ctrl\x07char": [36, 25, 22, 39, 78, 75, 1]}


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dir: Path) -> tuple:
    """The tokenizers as the engine gets them: from the saved model, through FluxKontextPipeline."""
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(tiny_model_dir, transformer=None, vae=None, text_encoder=None,
                                               text_encoder_2=None)
    return pipe.tokenizer, pipe.tokenizer_2


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_a_rebuild_writes_the_same_bytes(golden_model_dir: Path, tmp_path: Path) -> None:
    rebuilt = _files(build_tiny_kontext(tmp_path / "again"))
    assert "text_encoder/model.safetensors" in rebuilt and "tokenizer_2/tokenizer.json" in rebuilt
    assert rebuilt == _files(golden_model_dir), "rebuild differs (or KONTEXT_TINY_MODEL_DIR holds an older build)"


def test_the_fast_build_differs_only_where_it_says_and_is_not_taken_for_the_golden_one(
        golden_model_dir: Path, tiny_model_dir: Path) -> None:
    """The tests that pin no bytes run the fast build: it must be the same pipeline (classes, tokenizers, 8x VAE
    arithmetic) with only the VAE's mid-block attention, its encoder's resnets (one of its decoder's per block) and
    the second attention head gone, and a fixed folder holding one build must not be reused as the other."""
    golden, fast = _files(golden_model_dir), _files(tiny_model_dir)
    assert golden.keys() == fast.keys()
    differing = sorted(name for name in golden if golden[name] != fast[name])
    assert differing == [COMPLETE_MARKER, "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                         "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    vae = json.loads(fast["vae/config.json"])
    transformer = json.loads(fast["transformer/config.json"])
    assert vae["mid_block_add_attention"] is False and json.loads(golden["vae/config.json"])["mid_block_add_attention"]
    assert vae["block_out_channels"] == json.loads(golden["vae/config.json"])["block_out_channels"]
    assert (vae["layers_per_block"], json.loads(golden["vae/config.json"])["layers_per_block"]) == (0, 1)
    assert transformer["num_attention_heads"] == 1
    assert is_complete(tiny_model_dir, fast=True) and not is_complete(tiny_model_dir)
    assert is_complete(golden_model_dir) and not is_complete(golden_model_dir, fast=True)


def test_a_build_by_another_transformers_major_counts_as_missing(tmp_path: Path) -> None:
    """transformers 4 would load 5's CLIP weights as random ones (5 drops the text_model. key prefix)."""
    marker = tmp_path / COMPLETE_MARKER
    assert not is_complete(tmp_path)
    marker.write_text(json.dumps({"seed": 0, "transformers": transformers_major() + 1}))
    assert not is_complete(tmp_path)
    marker.write_text(json.dumps({"seed": 0, "transformers": transformers_major()}))
    assert is_complete(tmp_path)


def test_a_bench_given_a_complete_build_of_either_kind_measures_it_as_it_is(tiny_model_dir: Path) -> None:
    """The bench scripts' ``--model`` and the GPU proof's ``--tiny-model``: the suite hands them the fast build, which
    they once rebuilt in place as the golden one (so the rest of that test worker's session ran the slower model)."""
    from tools.bench import tiny_model

    before = _files(tiny_model_dir)
    assert tiny_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert _files(tiny_model_dir) == before and is_complete(tiny_model_dir, fast=True)


@pytest.mark.parametrize("older", [{"transformers": transformers_major() + 1}, {"fast": True}],
                         ids=["another transformers major", "an older fast revision"])
def test_an_outdated_tiny_build_is_rebuilt_as_the_same_kind(older: dict, tmp_path: Path) -> None:
    from tools.bench import tiny_model

    built = build_tiny_kontext(tmp_path / "tiny", fast=True)
    marker = built / COMPLETE_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), **older}))
    assert not is_complete(built, fast=True) and not is_complete(built, fast=None)
    assert tiny_model(str(built)) == str(built) and is_complete(built, fast=True)
    assert json.loads((built / "vae" / "config.json").read_text())["layers_per_block"] == 0


def test_a_folder_holding_anything_else_is_never_replaced(tmp_path: Path) -> None:
    """A real model given as ``--model`` is measured as it is; a folder of other files is refused, not emptied."""
    from tools.bench import tiny_model

    real = tmp_path / "FLUX.1-Kontext-dev"
    real.mkdir()
    (real / "model_index.json").write_text("{}")
    (real / "weights.safetensors").write_bytes(b"weights")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    assert tiny_model(str(real)) == str(real)
    with pytest.raises(FileExistsError, match="not a tiny Kontext build: not replacing them"):
        tiny_model(str(notes))
    with pytest.raises(FileExistsError):
        build_tiny_kontext(real)
    assert (real / "weights.safetensors").read_bytes() == b"weights" and (notes / "todo.txt").read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["FLUX.1-Kontext-dev", "notes"]  # no staging left


@pytest.mark.parametrize("prompt", SAME_ON_BOTH_STACKS)
def test_token_ids_are_the_same_on_both_stacks(tokenizers: tuple, prompt: str) -> None:
    clip, t5 = tokenizers
    assert (clip(prompt).input_ids, t5(prompt).input_ids) == SAME_ON_BOTH_STACKS[prompt]


@pytest.mark.parametrize("prompt", CLIP_BY_MAJOR)
def test_clip_ids_differ_between_transformers_4_and_5_where_ftfy_cleans(tokenizers: tuple, prompt: str) -> None:
    assert tokenizers[0](prompt).input_ids == CLIP_BY_MAJOR[prompt][transformers_major()]
    assert tokenizers[1](prompt).input_ids == T5_OF_DIFFERING[prompt]
