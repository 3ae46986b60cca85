"""Engine options that need a newer diffusers than the oldest release requirements.txt admits."""

from __future__ import annotations

from typing import Optional

GROUP_OFFLOAD_WITHOUT_ACCELERATOR = "0.41.0"
"""Before 0.41, group offload looks up ``torch.accelerator.current_accelerator().type``, which is None
on a host with no GPU: it dies with an AttributeError instead of offloading."""


def installed() -> str:
    import diffusers

    return str(diffusers.__version__)


def require(minimum: str, what: str, *, version: Optional[str] = None) -> None:
    """Refuse ``what`` by name, with the release it needs, rather than fail deep inside diffusers."""
    from packaging.version import Version

    have = version or installed()
    if Version(have) < Version(minimum):
        raise RuntimeError(f"{what} needs diffusers>={minimum} (installed: {have})")
