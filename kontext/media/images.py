"""Uploaded images on the way in: base64 decoding and cheap header validation (format, bytes, pixels)."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from kontext.errors import InvalidRequest, PayloadTooLarge
from protocol.limits import INPUT_SCALED_LONG_SIDE, INPUT_SIDE_MIN

_DATA_URI = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP"})
"""MPO: the multi-picture JPEG phones write; its first picture is an ordinary JPEG, what PIL (and so the
reference miner) edits."""
_WHITESPACE = re.compile(r"\s+")


def decode_base64_image(text: str, *, field: str, max_bytes: int, max_pixels: int) -> bytes:
    """Decode and sanity-check an uploaded image; a 400/413 names ``field`` on any problem.

    Only the header is parsed here (cheap); the engine's recipe does the full decode.
    """
    payload = _WHITESPACE.sub("", _DATA_URI.sub("", text.strip(), count=1))  # base64 wrapped in lines, too
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise PayloadTooLarge(f"{field}: image is larger than {max_bytes} bytes", fields=[_f(field, "too large")])
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{field}: not valid base64", fields=[_f(field, "not valid base64")]) from None
    check_image_bytes(data, field=field, max_bytes=max_bytes, max_pixels=max_pixels)
    return data


def check_image_bytes(data: bytes, *, field: str, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """Return (width, height) if ``data`` is a PNG/JPEG/WebP within the limits and of a size the recipes can edit
    (``scaled_size``, protocol/limits.py), else raise a 4xx.

    Only the header is read. This is where the pixel limit is checked: a decompression bomb (a small
    file whose header claims a huge image, refused by PIL itself past its own limit) is a 413 here
    like any other image over MAX_IMAGE_PIXELS, never a 400.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{field}: image is larger than {max_bytes} bytes", fields=[_f(field, "too large")])
    if not data:
        raise InvalidRequest(f"{field}: image is empty", fields=[_f(field, "empty")])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height, fmt = image.width, image.height, image.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(field, max_pixels, ": its header claims a decompression bomb") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InvalidRequest(f"{field}: bytes are not a PNG, JPEG or WebP image",
                             fields=[_f(field, "not an image")]) from None
    if fmt not in ACCEPTED_FORMATS:
        raise InvalidRequest(f"{field}: image format {fmt} is not accepted (PNG, JPEG, MPO or WebP)",
                             fields=[_f(field, "unsupported format")])
    if width < 1 or height < 1 or width * height > max_pixels:
        raise _too_many_pixels(field, max_pixels, f": it is {width}x{height}")
    if min(scaled_size(width, height)) < INPUT_SIDE_MIN:
        raise InvalidRequest(
            f"{field}: image is {width}x{height}, too small or too narrow to edit: each side must be at least "
            f"{INPUT_SIDE_MIN} px, also once a long side over {INPUT_SCALED_LONG_SIDE} px is scaled down to it (the "
            f"short side at least 1/{INPUT_SCALED_LONG_SIDE // INPUT_SIDE_MIN} of the long one)",
            fields=[_f(field, "too small")])
    return width, height


def scaled_size(width: int, height: int) -> tuple[int, int]:
    """An input's size as the recipes hand it to the pipeline, at its smallest: reference-v1's arithmetic (the ratio
    as a float, each side truncated); kontext-v1 rounds, so it never makes a side smaller."""
    long_side = max(width, height)
    if long_side <= INPUT_SCALED_LONG_SIDE:
        return width, height
    ratio = INPUT_SCALED_LONG_SIDE / long_side
    return int(width * ratio), int(height * ratio)


def _too_many_pixels(field: str, max_pixels: int, detail: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"{field}: image is over the limit of {max_pixels} pixels{detail}",
                           fields=[_f(field, "too many pixels")])


def _f(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}
