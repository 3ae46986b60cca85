"""The start of every entry point's process: a deterministic interpreter first, quiet libraries, then logging
(INFO and below to stdout, warnings and errors to stderr, as pm2's out and error logs expect)."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Callable, Coroutine, Optional

NOISY_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "bittensor", "websockets", "urllib3", "filelock",
                 "httpx", "torch", "PIL")
"""Libraries whose INFO chatter (and progress bars) is not the operator's business: warnings still show."""
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def prepare(log_level: str = "INFO", *, env_file: Optional[str] = None) -> None:
    """Settle PYTHONHASHSEED and CUBLAS_WORKSPACE_CONFIG (the environment's, else ``env_file``'s) before torch
    starts: re-execute with PYTHONHASHSEED=0 when the interpreter was not started with it, and refuse a wrong
    value with one ``cannot start:`` line (exit 2). Then quiet the libraries and configure logging."""
    from kontext.engine import determinism
    from kontext.settings_load import file_values

    in_file = file_values(env_file)
    try:
        seed = in_file.get("PYTHONHASHSEED")
        if seed is not None and seed != determinism.PYTHONHASHSEED:
            raise determinism.DeterminismError(f"PYTHONHASHSEED={seed!r} in {env_file}; deterministic editing needs 0")
        workspace = in_file.get("CUBLAS_WORKSPACE_CONFIG")
        if workspace is not None and workspace not in determinism.CUBLAS_WORKSPACE_CONFIGS:
            raise determinism.DeterminismError(f"CUBLAS_WORKSPACE_CONFIG={workspace!r} in {env_file}; use :4096:8 "
                                               "(or :16:8)")
        if workspace is not None:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", workspace)
        determinism.reexec_if_needed(sys.argv)
        determinism.ensure_environment()
    except determinism.DeterminismError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    quiet_libraries()
    configure_logging(log_level)


def quiet_libraries() -> None:
    """No progress bars, deprecation notices or "experimental" banners from the ML stack in the operator's log."""
    for name, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("DIFFUSERS_VERBOSITY", "error"), ("TOKENIZERS_PARALLELISM", "false"),
                        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(name, value)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        for module in ("diffusers", "transformers", "torch", "huggingface_hub", "bittensor", "accelerate"):
            warnings.filterwarnings("ignore", category=category, module=module)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def configure_logging(level: str) -> None:
    """INFO (and DEBUG) lines to stdout, WARNING and above to stderr, one format."""
    formatter = logging.Formatter(_FORMAT)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_BelowWarning())
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    root = logging.getLogger()
    for handler in (out, err):
        handler.setFormatter(formatter)
    root.handlers[:] = [out, err]
    root.setLevel(level.upper())
    logging.captureWarnings(True)


def set_level(level: str) -> None:
    """The settings' LOG_LEVEL, once they are read."""
    logging.getLogger().setLevel(level.upper())


def run_server(env_file: Optional[str], serve: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Every server's ``main``: ``prepare`` first (it may re-execute the process), then ``serve()`` until it
    stops: exit 0 after a graceful stop, 2 with one plain line when it cannot start."""
    prepare(env_file=env_file)
    from kontext.http.serve import run

    run(serve())
