"""The versions that decide an edit's bytes, read from the running process.

Pixels depend on torch, CUDA/cuBLAS/cuDNN, diffusers, transformers and the GPU model; the PNG
bytes of identical pixels depend on the zlib Pillow compresses with (Pillow wheels since 11.1 use
zlib-ng, whose output differs from classic zlib and may change between its releases).
"""

from __future__ import annotations

import platform
from typing import Optional


def pixel_and_png_stack(device_name: Optional[str] = None) -> dict[str, str]:
    """Name -> version of everything that decides the pixels and the PNG bytes (JSON-friendly)."""
    import diffusers
    import PIL
    import torch
    import transformers
    from PIL import features

    cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": device_name or (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "cudnn": str(cudnn),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "zlib": str(features.version("zlib")),
        "zlib_ng": str(features.version_feature("zlib_ng") if "zlib_ng" in features.features else None),
    }
