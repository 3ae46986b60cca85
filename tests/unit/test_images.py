"""Input images: base64 decoding, format and size limits, atomic writes."""

import base64
from pathlib import Path

import pytest

from kontext.errors import InvalidRequest, PayloadTooLarge
from kontext.media.images import decode_base64_image, remove_stale_temp_files, write_atomic
from tests.fakes import png_bytes

LIMITS = {"field": "image_b64", "max_bytes": 1_000_000, "max_pixels": 512 * 512}


def test_png_jpeg_and_data_uri_are_accepted() -> None:
    png = png_bytes()
    assert decode_base64_image(base64.b64encode(png).decode(), **LIMITS) == png
    jpeg = png_bytes(fmt="JPEG")
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    assert decode_base64_image(uri, **LIMITS) == jpeg


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("not base64 !!", InvalidRequest, "not valid base64"),
        (base64.b64encode(b"plain text, not an image").decode(), InvalidRequest, "not a PNG, JPEG or WebP"),
        (base64.b64encode(png_bytes(fmt="GIF")).decode(), InvalidRequest, "GIF is not accepted"),
        (base64.b64encode(png_bytes((600, 600))).decode(), PayloadTooLarge, "over the limit"),
        (base64.b64encode(b"\0" * 2_000_000).decode(), PayloadTooLarge, "larger than"),
        (base64.b64encode(png_bytes()[:40]).decode(), InvalidRequest, "not a PNG"),
    ],
)
def test_bad_images_name_the_field(text: str, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        decode_base64_image(text, **LIMITS)
    assert message in info.value.message and info.value.message.startswith("image_b64")


def test_decompression_bomb_header_is_refused_without_decoding() -> None:
    # A PNG header claiming 100k x 100k pixels: refused from the header alone.
    bomb = png_bytes((1, 1))
    bomb = bomb[:16] + (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big") + bomb[24:]
    with pytest.raises((InvalidRequest, PayloadTooLarge)):
        decode_base64_image(base64.b64encode(bomb).decode(), **LIMITS)


def test_atomic_write_and_stale_temp_cleanup(tmp_path: Path) -> None:
    target = tmp_path / "edits" / "edit-1.png"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["edit-1.png"]
    (target.parent / ".edit-2.png.abc.tmp").write_bytes(b"half")
    assert remove_stale_temp_files(target.parent) == 1
    assert [p.name for p in target.parent.iterdir()] == ["edit-1.png"]
