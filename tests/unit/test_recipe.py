"""The kontext-v1 recipe: preprocessing, the resolution rule, pipeline arguments, PNG bytes."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from kontext.engine import recipe
from kontext.engine.recipe import EditParams

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
    assert recipe.output_size(size, params) == expected


def test_pipeline_kwargs_are_the_recipe() -> None:
    image = Image.new("RGB", (512, 512))
    kwargs = recipe.pipeline_kwargs(image, PARAMS)
    assert kwargs["max_area"] == 1024**2 and (kwargs["width"], kwargs["height"]) == (512, 512)
    assert kwargs["generator"].device.type == "cpu" and kwargs["generator"].initial_seed() == 1
    assert kwargs["_auto_resize"] is True and kwargs["guidance_scale"] == 2.5


def test_png_encoding_is_byte_identical_across_processes() -> None:
    image = Image.new("RGB", (32, 32))
    image.putdata([(x * 8 % 256, y * 8 % 256, 99) for y in range(32) for x in range(32)])
    here = recipe.encode_png(image)
    assert recipe.encode_png(image) == here
    code = (
        "import sys; from PIL import Image; from kontext.engine import recipe; "
        "im = Image.new('RGB', (32, 32)); "
        "im.putdata([(x * 8 % 256, y * 8 % 256, 99) for y in range(32) for x in range(32)]); "
        "sys.stdout.buffer.write(recipe.encode_png(im))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert there == here
    assert b"tIME" not in here and b"tEXt" not in here
