"""The start of every entry point's process: a deterministic interpreter first, then logging."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Coroutine


def prepare(log_level: str = "INFO") -> None:
    """Re-execute with PYTHONHASHSEED=0 when it is unset, set CUBLAS_WORKSPACE_CONFIG before torch starts
    CUDA, refuse a wrong value in one plain line (exit 1), then configure logging."""
    from kontext.engine import determinism

    try:
        determinism.reexec_if_needed(sys.argv)
        determinism.ensure_environment()
    except determinism.DeterminismError as exc:
        raise SystemExit(f"cannot start: {exc}") from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_server(log_level: str, serve: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Every server's ``main``: ``prepare`` first (it may re-execute the process), then ``serve()`` until it
    stops: exit 0 after a graceful stop, 2 with one plain line when it cannot start."""
    prepare(log_level)
    from kontext.http.serve import run

    run(serve())
