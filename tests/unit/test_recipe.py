"""The recipes: kontext-v1 and reference-v1 preprocessing, pipeline arguments, seeding, PNG bytes; the registry."""

from __future__ import annotations

import hashlib
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


def _two_halves() -> Image.Image:
    """40x20, red on the left, blue on the right: a rotation shows (a one-colour image's would not)."""
    image = Image.new("RGB", (40, 20), (220, 0, 0))
    image.paste((0, 0, 220), (20, 0, 40, 20))
    return image


def _red(pixel: tuple[int, ...]) -> bool:
    return pixel[0] > 150 and pixel[2] < 80


def _blue(pixel: tuple[int, ...]) -> bool:
    return pixel[2] > 150 and pixel[0] < 80


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise: the left half comes on top
    out = recipe.preprocess(_encode(_two_halves(), "JPEG", exif=exif.tobytes()), max_pixels=10_000)
    assert out.size == (20, 40)
    assert _red(out.getpixel((10, 5))) and _blue(out.getpixel((10, 35)))  # turned clockwise, not mirrored or back


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
    exif = Image.Exif()
    exif[0x0112] = 6
    out = reference.preprocess(_encode(_two_halves(), "JPEG", exif=exif.tobytes()), max_pixels=10_000)
    assert out.size == (40, 20) and _red(out.getpixel((5, 10))) and _blue(out.getpixel((35, 10)))  # as stored


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


# -- PNG bytes and the auditor's stack ---------------------------------------------------------

PINNED_PNG_SHA256 = "89323998ddb4525ff68e8d20b4ac1a6c0bcf423bea9b2a272034748dbdb065c4"
"""Both recipes' PNG of ``_fixed_image()``, written by classic zlib (1.2.11, 1.2.13 and 1.3.1 agree: the
auditor's Ubuntu 22.04 has 1.2.11) with Pillow's PNG filters."""


def _fixed_image() -> Image.Image:
    """1024x1024, built from bytes (no PIL drawing or resampling): noise, a ramp, a pattern and a flat band."""
    size, band = 1024, 256
    noise = hashlib.shake_256(b"kontext png golden").digest(size * band * 3)
    ramp = bytes(v for x in range(size) for v in (x // 4, 255 - x // 4, x * 7 % 256)) * band
    pattern = bytes(v for y in range(band) for x in range(size) for v in ((x ^ y) & 255, (x + 2 * y) & 255, y))
    flat = bytes((200, 30, 90)) * (size * band)
    return Image.frombytes("RGB", (size, size), noise + ramp + pattern + flat)


@pytest.mark.parametrize("recipe_id", ["reference-v1", "kontext-v1"])
def test_the_png_bytes_of_a_fixed_image_are_pinned(recipe_id: str) -> None:
    """The audit compares PNG bytes: a Pillow or deflate library that writes other bytes for the same pixels
    fails here, naming the library in use."""
    from PIL import features

    from kontext.engine.environment import png_deflate

    got = hashlib.sha256(get_recipe(recipe_id).encode_png(_fixed_image())).hexdigest()
    assert got == PINNED_PNG_SHA256, (
        f"{recipe_id}: the PNG of the fixed image moved ({got[:16]}…): written by {png_deflate()} (Pillow "
        f"{Image.__version__}, built against zlib-ng {features.version_feature('zlib_ng')}); pinned with classic "
        "zlib, as the auditor's Ubuntu 22.04 zlib 1.2.11 writes it")


@pytest.mark.parametrize("runtime, built_with_ng, system, library", [
    ("1.2.13", "2.3.3", "Linux", "zlib"),        # Pillow's Linux wheel: zlib-ng headers, the host's libz writes
    ("1.2.11", None, "Linux", "zlib"),           # the auditor's Ubuntu 22.04
    ("1.3.1", None, "Linux", "zlib"),            # classic, not 1.2.11: the same bytes (§8), no warning
    ("1.3.1.zlib-ng", None, "Linux", "zlib-ng"),  # Fedora 40+: zlib-ng as the system's libz.so.1
    ("1.3.1.zlib-ng", "2.2.4", "Darwin", "zlib-ng"),  # Pillow's macOS wheel bundles it
    ("1.3.1", "2.2.4", "Windows", "zlib-ng"),    # bundled, whatever it calls itself
])
def test_which_library_writes_the_png(runtime: str, built_with_ng: str | None, system: str, library: str) -> None:
    from kontext.engine.environment import deflate_library

    assert deflate_library(runtime, built_with_ng, system) == library


def test_reference_warns_only_where_zlib_ng_writes_the_png_naming_both_stacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from kontext.engine import environment
    from kontext.engine.recipes.reference_v1 import png_warnings

    assert png_warnings(environment.PngDeflate("zlib", "1.3.1"), "3.12.3") == []
    (said,) = png_warnings(environment.PngDeflate("zlib-ng", "1.3.1.zlib-ng"), "3.12.3")
    assert "zlib-ng 1.3.1.zlib-ng (Python 3.12.3)" in said and "zlib 1.2.11 (Ubuntu 22.04, Python 3.10)" in said
    here = [w for w in reference.stack_warnings("cpu", "float32/attn=native") if w.startswith("PNG deflate")]
    assert bool(here) == (environment.png_deflate().library == "zlib-ng")
    monkeypatch.setattr(environment, "png_deflate", lambda: environment.PngDeflate("zlib-ng", "2.2.4"))
    assert [w for w in reference.stack_warnings("cuda:0", "bfloat16/attn=native") if "zlib-ng 2.2.4" in w]


def test_preparing_an_input_leaves_the_process_warning_filters_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread prepares a job while others decode: a filter set for one call is the whole process's, and
    another thread's exit would drop it mid-decode. PIL's bomb warning is still a refusal."""
    import warnings

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the process-wide warning filters were changed")

    monkeypatch.setattr(warnings, "catch_warnings", forbidden)
    monkeypatch.setattr(warnings, "simplefilter", forbidden)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns between 1000 and 2000 pixels, refuses above
    for each in (recipe, reference):
        assert each.preprocess(_encode(Image.new("RGB", (30, 30))), max_pixels=10**9).size == (30, 30)
        for side in (40, 50):
            with pytest.raises(ValueError, match="decompression bomb"):
                each.preprocess(_encode(Image.new("RGB", (side, side))), max_pixels=10**9)
