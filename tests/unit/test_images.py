"""Input images: base64 decoding, format and size limits, atomic writes."""

import base64
from pathlib import Path

import pytest

from kontext.errors import InvalidRequest, PayloadTooLarge
from kontext.http.errors import answer
from kontext.media.files import remove_stale_temp_files, write_atomic
from kontext.media.images import decode_base64_image
from tests.fakes import png_bytes

LIMITS = {"field": "image_b64", "max_bytes": 1_000_000, "max_pixels": 512 * 512}


def test_png_jpeg_and_data_uri_are_accepted() -> None:
    png = png_bytes()
    assert decode_base64_image(base64.b64encode(png).decode(), **LIMITS) == png
    jpeg = png_bytes(fmt="JPEG")
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    assert decode_base64_image(uri, **LIMITS) == jpeg


def test_what_the_reference_miner_opens_from_a_phone_is_accepted_too() -> None:
    """Phones write multi-picture JPEGs (MPO: the first picture is an ordinary JPEG) and tools wrap base64 at
    76 columns; the reference miner opens both (PIL, a lenient b64decode), so they were 400s only here."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    first, second = Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (40, 30), (10, 200, 10))
    first.save(buffer, format="MPO", save_all=True, append_images=[second])
    mpo = buffer.getvalue()
    with Image.open(io.BytesIO(mpo)) as opened:
        assert opened.format == "MPO"
    assert decode_base64_image(base64.b64encode(mpo).decode(), **LIMITS) == mpo
    png = png_bytes()
    wrapped = base64.encodebytes(png).decode()  # a newline every 76 characters
    assert "\n" in wrapped.strip() and decode_base64_image(wrapped, **LIMITS) == png


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


def _claiming(width: int, height: int) -> bytes:
    """A valid PNG whose IHDR claims ``width`` x ``height`` (the CRC recomputed, so PIL reads the header)."""
    import struct
    import zlib

    png = png_bytes((1, 1))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


@pytest.mark.parametrize("side, bomb", [
    (100_000, True),   # 10^10 pixels: PIL refuses the header outright (DecompressionBombError)
    (10_000, True),    # 10^8 pixels: over PIL's warning threshold (DecompressionBombWarning)
    (3_000, False),    # 9 * 10^6: under PIL's limits, over ours
])
def test_a_decompression_bomb_is_413_from_the_header(side: int, bomb: bool) -> None:
    """The exact path: a valid header (CRC right) that PIL reads, or refuses as a bomb, answers 413."""
    import io
    import warnings

    from PIL import Image

    data = _claiming(side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if bomb:
            with pytest.raises((Image.DecompressionBombError, Image.DecompressionBombWarning)):
                Image.open(io.BytesIO(data))
        else:
            assert Image.open(io.BytesIO(data)).size == (side, side)
    with pytest.raises(PayloadTooLarge) as info:
        decode_base64_image(base64.b64encode(data).decode(), **{**LIMITS, "max_pixels": 1_000_000})
    assert answer(info.value)[0] == 413 and "over the limit of 1000000 pixels" in info.value.message
    assert ("decompression bomb" if bomb else f"it is {side}x{side}") in info.value.message


def test_atomic_write_and_stale_temp_cleanup(tmp_path: Path) -> None:
    target = tmp_path / "edits" / "edit-1.png"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["edit-1.png"]
    (target.parent / ".edit-2.png.abc.tmp").write_bytes(b"half")
    assert remove_stale_temp_files(target.parent) == 1
    assert [p.name for p in target.parent.iterdir()] == ["edit-1.png"]
