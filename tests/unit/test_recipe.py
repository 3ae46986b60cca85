"""The recipes: kontext-v1 and reference-v1 preprocessing, pipeline arguments, seeding, PNG bytes; the registry."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from kontext.engine.recipes import RECIPES, EditParams, get_recipe
from kontext.engine.recipes.kontext_v1 import output_size

recipe = get_recipe("kontext-v1")
reference = get_recipe("reference-v1")

PARAMS = EditParams(prompt="p", seed=1, guidance_scale=2.5, num_inference_steps=2, width=None, height=None)


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_rgb_and_transparency_on_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    out = recipe.preprocess(_encode(rgba), max_pixels=10_000)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)
    grey = recipe.preprocess(_encode(Image.new("L", (8, 8), 77)), max_pixels=10_000)
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = recipe.preprocess(_encode(image, "JPEG", exif=exif.tobytes()), max_pixels=10_000)
    assert out.size == (20, 40)


def test_long_side_over_1024_is_downscaled_with_aspect_kept() -> None:
    out = recipe.preprocess(_encode(Image.new("RGB", (2048, 1000))), max_pixels=10_000_000)
    assert out.size == (1024, 500)
    same = recipe.preprocess(_encode(Image.new("RGB", (1024, 300))), max_pixels=10_000_000)
    assert same.size == (1024, 300)


@pytest.mark.parametrize("data, words", [
    (b"not an image", "not a readable image"),
    (_encode(Image.new("RGB", (64, 64)))[:60], "not a readable image"),
    (_encode(Image.new("RGB", (200, 200))), "over the limit"),
])
def test_bad_inputs_raise_value_error(data: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        recipe.preprocess(data, max_pixels=100 * 100)


@pytest.mark.parametrize("size, requested, expected", [
    ((512, 512), None, (1024, 1024)),       # a small square input comes out at ~1 MP
    ((768, 512), None, (1248, 832)),        # the aspect ratio is kept
    ((1024, 500), None, (1456, 704)),
    ((512, 512), (64, 64), (64, 64)),       # explicit width/height are exact
    ((512, 512), (768, 512), (768, 512)),
])
def test_output_size_rule(size, requested, expected) -> None:
    width, height = requested or (None, None)
    params = EditParams(prompt="p", seed=1, guidance_scale=2.5, num_inference_steps=2, width=width, height=height)
    assert output_size(size, params) == expected


def test_pipeline_kwargs_are_the_recipe() -> None:
    image = Image.new("RGB", (512, 512))
    kwargs = recipe.pipeline_kwargs(image, PARAMS, recipe.seed(PARAMS.seed, "cuda"))
    assert kwargs["max_area"] == 1024**2 and (kwargs["width"], kwargs["height"]) == (512, 512)
    assert kwargs["generator"].device.type == "cpu" and kwargs["generator"].initial_seed() == 1
    assert kwargs["_auto_resize"] is True and kwargs["guidance_scale"] == 2.5


def test_png_encoding_is_byte_identical_across_processes() -> None:
    image = Image.new("RGB", (32, 32))
    image.putdata([(x * 8 % 256, y * 8 % 256, 99) for y in range(32) for x in range(32)])
    here = recipe.encode_png(image)
    assert recipe.encode_png(image) == here
    code = (
        "import sys; from PIL import Image; from kontext.engine.recipes import get_recipe; "
        "im = Image.new('RGB', (32, 32)); "
        "im.putdata([(x * 8 % 256, y * 8 % 256, 99) for y in range(32) for x in range(32)]); "
        "sys.stdout.buffer.write(get_recipe('kontext-v1').encode_png(im))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert there == here
    assert b"tIME" not in here and b"tEXt" not in here


# -- reference-v1: the subnet's reference miner ------------------------------------------------


def test_reference_drops_alpha_instead_of_compositing() -> None:
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert reference.preprocess(_encode(rgba), max_pixels=10_000).getpixel((0, 0)) == (10, 20, 30)
    palette = Image.new("P", (8, 8), 3)
    palette.putpalette([0, 0, 0, 9, 9, 9, 50, 60, 70, 1, 2, 3] + [0] * 756)
    palette.info["transparency"] = 3
    out = reference.preprocess(_encode(palette), max_pixels=10_000)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (1, 2, 3)  # kontext-v1 would give white here
    assert recipe.preprocess(_encode(palette), max_pixels=10_000).getpixel((0, 0)) == (255, 255, 255)


def test_reference_ignores_exif_orientation() -> None:
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    assert reference.preprocess(_encode(image, "JPEG", exif=exif.tobytes()), max_pixels=10_000).size == (40, 20)


def test_reference_keeps_rgb_images_as_they_are_and_converts_the_rest() -> None:
    for mode, colour in (("L", 77), ("LA", (77, 128)), ("CMYK", (0, 0, 0, 0))):
        out = reference.preprocess(_encode(Image.new(mode, (8, 8), colour), "JPEG" if mode == "CMYK" else "PNG"),
                                   max_pixels=10_000)
        assert out.mode == "RGB"
    rgb = reference.preprocess(_encode(Image.new("RGB", (8, 8), (1, 2, 3))), max_pixels=10_000)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (1, 2, 3)


def test_reference_downscale_truncates_where_kontext_v1_rounds() -> None:
    data = _encode(Image.new("RGB", (2049, 1000)))
    assert reference.preprocess(data, max_pixels=10_000_000).size == (1024, 499)  # int(1000 * 1024 / 2049)
    assert recipe.preprocess(data, max_pixels=10_000_000).size == (1024, 500)


def test_reference_call_has_no_size_and_noise_on_the_engine_device() -> None:
    params = EditParams(prompt="p", seed=5, guidance_scale=4.0, num_inference_steps=10, width=1024, height=1024)
    kwargs = reference.pipeline_kwargs(Image.new("RGB", (64, 32)), params, reference.seed(5, "cpu"))
    assert set(kwargs) == {"prompt", "image", "generator", "guidance_scale", "num_inference_steps", "output_type"}
    assert kwargs["generator"].device.type == "cpu" and kwargs["generator"].initial_seed() == 5
    assert reference.honours_size is False and recipe.honours_size is True


def test_reference_seeds_globally_like_the_reference_and_takes_seeds_past_numpys_range() -> None:
    import random

    import numpy as np
    import torch

    reference.seed(123, "cpu")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    reference.seed(123, "cpu")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    generator = reference.seed(2**40 + 7, "cpu")  # np.random.seed itself would raise here
    assert generator.initial_seed() == 2**40 + 7


def test_reference_png_is_pils_default_save() -> None:
    image = Image.new("RGB", (32, 16))
    image.putdata([(x * 8 % 256, y * 16 % 256, 7) for y in range(16) for x in range(32)])
    assert reference.encode_png(image) == _encode(image)  # image.save(..., "PNG") with no arguments


def test_registry() -> None:
    assert set(RECIPES) == {"reference-v1", "kontext-v1"}
    with pytest.raises(ValueError, match="known: reference-v1, kontext-v1"):
        get_recipe("fancy-v9")


@pytest.mark.parametrize("profile, warned", [
    ("bfloat16/attn=native", False),
    ("float16/attn=native", True),
    ("bfloat16/attn=flash", True),
    ("bfloat16/attn=native/compile=regional", True),
    ("bfloat16/attn=native/fbc=0.08", True),
])
def test_reference_warns_when_the_engine_options_differ_from_the_auditors_on_a_gpu(profile: str, warned: bool) -> None:
    """A miner on reference-v1 with a speed option on would fail every audited job, silently."""
    said = [warning for warning in reference.stack_warnings("cuda:0", profile) if warning.startswith("engine profile")]
    assert bool(said) is warned
    if warned:
        assert profile in said[0] and "bfloat16/attn=native" in said[0]
    assert not [w for w in reference.stack_warnings("cpu", profile) if w.startswith("engine profile")]  # no audit on CPU
    assert get_recipe("kontext-v1").stack_warnings("cuda:0", profile) == []
