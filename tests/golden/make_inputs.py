"""Write the golden cases' input images (run once; the files are committed, this says how they were made).

    python tests/golden/make_inputs.py   # then: kontext-client conformance tests/golden/cases.in.jsonl \\
                                         #   --model <tiny model> --device cpu --record tests/golden/tiny-cpu-<vendor>-<kernels>.jsonl
                                         #   (one file per CPU kind: README, Proof)
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

HERE = Path(__file__).parent / "inputs"


def gradient(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    width, height = size
    image = Image.new("RGB", size)
    image.putdata([((x * 255) // width, (y * 255) // height, ((x + y) * 97) % 256)
                   for y in range(height) for x in range(width)])
    return image if mode == "RGB" else image.convert(mode)


def blocks(size: tuple[int, int]) -> Image.Image:
    """Large flat blocks: compresses to a few KB even at 2049x1000."""
    image = Image.new("RGB", size)
    width, height = size
    for bx in range(0, width, 128):
        for by in range(0, height, 125):
            image.paste(((bx // 8) % 256, (by // 5) % 256, (bx + by) % 256), (bx, by, min(bx + 128, width),
                                                                               min(by + 125, height)))
    return image


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    gradient((512, 512)).save(HERE / "rgb-512.png")
    gradient((300, 200), "L").save(HERE / "grey-300x200.png")
    gradient((240, 160)).quantize(16).save(HERE / "palette-240x160.png")
    transparent = gradient((200, 200)).quantize(16)
    transparent.save(HERE / "palette-transparent-200x200.png", transparency=3)
    rgba = gradient((320, 240)).convert("RGBA")
    rgba.putalpha(gradient((320, 240), "L"))
    rgba.save(HERE / "rgba-320x240.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise by viewers that honour EXIF
    gradient((400, 300)).save(HERE / "exif-rotated-400x300.jpg", quality=90, exif=exif.tobytes())
    gradient((768, 512)).save(HERE / "wide-768x512.png")
    blocks((2049, 1000)).save(HERE / "big-2049x1000.png")


if __name__ == "__main__":
    main()
