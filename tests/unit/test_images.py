"""Input images: base64 decoding, format and size limits, the sizes the recipes can edit, atomic writes."""

import base64
from pathlib import Path
from typing import Optional

import pytest

from kontext.errors import InvalidRequest, PayloadTooLarge
from kontext.http.errors import answer
from kontext.media.files import remove_stale_temp_files, write_atomic
from kontext.media.images import check_image_bytes, decode_base64_image, scaled_size
from protocol.limits import INPUT_SCALED_LONG_SIDE
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


# -- sizes the recipes can edit (issue 15, fault 3) ------------------------------------------------------------------

REFUSED_SIZES = [(64, 15), (15, 64), (8, 8), (4096, 1), (1, 4096), (2048, 31), (31, 2048), (3136, 49)]
"""(3136, 49): its short side is 1/64 of the long one, but reference-v1's float ratio makes it 15 px (1023x15)."""
EDITABLE_SIZES = [(16, 16), (64, 16), (16, 64), (2048, 32), (32, 2048), (1024, 16), (4096, 64)]


@pytest.mark.parametrize("size", REFUSED_SIZES)
def test_an_image_too_small_or_too_narrow_to_edit_is_refused_naming_its_size(size: tuple[int, int]) -> None:
    """Under 16 px high it was accepted and failed in the engine with 'internal error: ZeroDivisionError'."""
    with pytest.raises(InvalidRequest) as info:
        decode_base64_image(base64.b64encode(png_bytes(size)).decode(), **{**LIMITS, "max_pixels": 1 << 24})
    width, height = size
    assert answer(info.value)[0] == 400 and info.value.fields == [{"field": "image_b64", "message": "too small"}]
    assert info.value.message.startswith(f"image_b64: image is {width}x{height}, too small or too narrow to edit")


@pytest.mark.parametrize("size", EDITABLE_SIZES)
def test_the_smallest_and_narrowest_editable_images_are_accepted(size: tuple[int, int]) -> None:
    assert check_image_bytes(png_bytes(size), field="image_url", max_bytes=1 << 24, max_pixels=1 << 24) == size


def test_the_size_rule_is_the_recipes_scaling() -> None:
    """The contract's numbers are the recipes' own: both scale a long side over 1024 px down to it."""
    from kontext.engine.recipes import kontext_v1, reference_v1

    assert reference_v1.MAX_INPUT_SIDE == kontext_v1.MAX_INPUT_SIDE == INPUT_SCALED_LONG_SIDE
    reference = reference_v1.RECIPE.preprocess(png_bytes((3136, 49)), max_pixels=1 << 24)
    assert reference.size == scaled_size(3136, 49) == (1023, 15)


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path) -> dict:
    from kontext.engine.engine import EngineConfig, EngineState, KontextEngine

    loaded = {}
    for recipe in ("reference-v1", "kontext-v1"):
        engine = KontextEngine(EngineConfig(model_path=str(tiny_model_dir), recipe=recipe, device="cpu",
                                            local_files_only=True))
        engine.load()
        assert engine.state is EngineState.READY, engine.error
        loaded[recipe] = engine
    return loaded


def _params(size: Optional[int] = None):  # type: ignore[no-untyped-def]
    from kontext.engine.recipes import EditParams

    return EditParams(prompt="add a hat", seed=1, guidance_scale=2.5, num_inference_steps=1, width=size, height=size)


def test_the_boundary_sizes_edit_with_the_real_pipeline_and_both_recipes(engines: dict) -> None:
    """The tightest sizes let through do edit (reference-v1: always the pipeline's 1024x1024; kontext-v1 at 64x64,
    and at its own ~1 MP size for the narrowest aspect, 64:1)."""
    for size in [(64, 16), (16, 64), (2048, 32)]:
        image = png_bytes(size)
        check_image_bytes(image, field="image_b64", max_bytes=1 << 24, max_pixels=1 << 24)
        assert engines["kontext-v1"].edit(image, _params(64), max_pixels=1 << 24).width == 64
    for size in [(64, 16), (2048, 32)]:  # 16 px high as the pipeline gets them: the side it divides by
        assert engines["reference-v1"].edit(png_bytes(size), _params(), max_pixels=1 << 24).width == 1024
    widest = engines["kontext-v1"].edit(png_bytes((2048, 32)), _params(), max_pixels=1 << 24)
    assert (widest.width, widest.height) == (8192, 128)


@pytest.mark.parametrize("size", [(64, 15), (2048, 31), (3136, 49), (4096, 1), (1, 4096)])
def test_what_submit_refuses_the_pipeline_could_not_edit(engines: dict, size: tuple[int, int]) -> None:
    """Without the check at submit these reach the engine and fail there (before any denoising step)."""
    with pytest.raises((ZeroDivisionError, ValueError)):
        engines["reference-v1"].edit(png_bytes(size), _params(), max_pixels=1 << 24)


def _variants(data: bytes) -> list[bytes]:
    """Truncated and corrupted copies of ``data``, from a fixed seed."""
    import random

    rnd, out = random.Random(7), []
    for trial in range(60):
        damaged = bytearray(data)
        if trial % 2:
            damaged = damaged[: rnd.randrange(30, len(damaged))]
        else:
            for _ in range(rnd.randrange(1, 6)):
                damaged[rnd.randrange(20, len(damaged))] = rnd.randrange(256)
        out.append(bytes(damaged))
    return out


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_an_image_that_passes_the_header_check_but_does_not_decode_is_a_value_error_of_each_recipe(fmt: str) -> None:
    """What the worker reports as the job's 'input image: ...' failure (any other exception: 'internal error')."""
    import io

    from PIL import Image

    from kontext.engine.recipes import kontext_v1, reference_v1

    buffer = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(buffer, format=fmt)
    passed = 0
    for damaged in _variants(buffer.getvalue()):
        try:
            check_image_bytes(damaged, field="image_b64", max_bytes=1 << 24, max_pixels=1 << 24)
        except (InvalidRequest, PayloadTooLarge):
            continue
        passed += 1
        for recipe in (reference_v1.RECIPE, kontext_v1.RECIPE):
            try:
                recipe.preprocess(damaged, max_pixels=1 << 24)
            except ValueError:
                pass
    assert passed > 10  # enough of them get past the header to mean something


async def test_an_input_that_fails_to_decode_fails_its_job_clearly(engines: dict, tmp_path: Path) -> None:
    """A truncated PNG passes the header check at submit; the real engine's decode refuses it, and the job fails
    with 'input image: ...', not 'internal error'."""
    from kontext.runtime import Runtime
    from protocol import EditRequest, JobStatus
    from tests.unit.test_sidecar import make_settings
    from tests.waiting import until

    truncated = png_bytes((64, 64), fmt="PNG")[:-40]
    check_image_bytes(truncated, field="image_b64", max_bytes=1 << 24, max_pixels=1 << 24)
    runtime = Runtime(make_settings(tmp_path), engine=engines["reference-v1"])
    await runtime.start()
    try:
        request = EditRequest.model_validate({"prompt": "p", "seed": 1, "num_inference_steps": 1,
                                              "image_b64": base64.b64encode(truncated).decode()})
        job_id = (await runtime.service.submit(request)).job_id

        async def failed() -> bool:
            return (await runtime.service.status(job_id)).status is JobStatus.FAILED

        await until(failed, what="the job failed")
        error = (await runtime.service.status(job_id)).error or ""
        assert error.startswith("input image: ") and "internal error" not in error, error
    finally:
        await runtime.stop()
