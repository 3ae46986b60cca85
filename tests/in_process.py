"""Running an entry point's ``main()`` in the test process: a process start costs more than most runs here."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def process_state_restored() -> Iterator[None]:
    """Put back what an entry point's start changes for the whole process: the root logger's handlers and level
    (``kontext.process.prepare`` configures logging) and torch's thread count and deterministic-algorithms switch
    (an engine's recipe pins them)."""
    import torch

    root = logging.getLogger()
    handlers, level, threads = root.handlers[:], root.level, torch.get_num_threads()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
