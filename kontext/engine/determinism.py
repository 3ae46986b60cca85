"""Process-wide determinism: the environment before torch starts, and torch's own switches."""

from __future__ import annotations

import os
import sys
from typing import Mapping, MutableMapping, Sequence

PYTHONHASHSEED = "0"
CUBLAS_WORKSPACE_CONFIGS = (":4096:8", ":16:8")
"""The two values CUDA documents as making cuBLAS deterministic."""


class DeterminismError(RuntimeError):
    """The process cannot be made deterministic; the message says what to set."""


def reexec_if_needed(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> None:
    """Re-execute the interpreter with PYTHONHASHSEED=0 when it is unset.

    The hash seed is fixed when Python starts, so the only way to set it from inside is to
    start again. A value that is set but wrong is an operator's choice: refuse, don't override.
    """
    current = environ.get("PYTHONHASHSEED")
    if current == PYTHONHASHSEED:
        return
    if current is not None:
        raise DeterminismError(f"PYTHONHASHSEED={current!r}; deterministic editing needs PYTHONHASHSEED=0")
    env = dict(environ, PYTHONHASHSEED=PYTHONHASHSEED)
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIGS[0])
    os.execve(sys.executable, [sys.executable, *_python_argv(argv)], env)


def _python_argv(argv: Sequence[str]) -> list[str]:
    """argv for the new interpreter: ``python -m pkg.mod`` is restarted as ``-m pkg.mod`` (running the
    file directly would put the wrong directory on sys.path); scripts and console entry points as is."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return ["-m", spec.name.removesuffix(".__main__"), *argv[1:]]
    return list(argv)


def ensure_environment(environ: MutableMapping[str, str] = os.environ) -> None:
    """Check PYTHONHASHSEED and set CUBLAS_WORKSPACE_CONFIG before CUDA initialises.

    Raises ``DeterminismError`` if a value is wrong and can no longer be fixed.
    """
    seed = environ.get("PYTHONHASHSEED")
    if seed != PYTHONHASHSEED:
        raise DeterminismError(
            f"PYTHONHASHSEED is {seed!r}; start the miner with PYTHONHASHSEED=0 (the entry points re-execute "
            "themselves when it is unset)")
    workspace = environ.get("CUBLAS_WORKSPACE_CONFIG")
    if workspace in CUBLAS_WORKSPACE_CONFIGS:
        return
    if workspace is not None:
        raise DeterminismError(f"CUBLAS_WORKSPACE_CONFIG={workspace!r}; use :4096:8 (or :16:8)")
    if _cuda_initialised():
        raise DeterminismError("CUDA was initialised before CUBLAS_WORKSPACE_CONFIG was set; set it to :4096:8 "
                               "in the environment that starts the miner")
    environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIGS[0]


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def pin_threads(num_threads: int) -> None:
    """A fixed CPU thread count: on the CPU, the count changes how sums are split, hence the numbers."""
    import torch

    torch.set_num_threads(num_threads)


def configure_torch_strict() -> None:
    """Deterministic kernels (an op without one raises), no TF32 anywhere, no autotuned cuDNN."""
    import torch

    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.set_float32_matmul_precision("highest")


def configure_torch_like_reference() -> None:
    """The subnet reference miner's switches: deterministic algorithms with warnings only, cuDNN
    deterministic, benchmark off, and TF32 at torch's own defaults (set here explicitly, so an
    engine loaded earlier in the process with other switches cannot leak them in)."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default
    torch.backends.cudnn.allow_tf32 = True  # torch's default
    torch.set_float32_matmul_precision("highest")  # torch's default
