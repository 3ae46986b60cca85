"""Where job images live on disk: uploaded inputs and result PNGs, written atomically (temp, fsync, rename)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, TypeVar

from kontext.errors import StorageUnavailable

T = TypeVar("T")


class ImageStore(Protocol):
    """Where a job's input and result images live: files on one host, or Redis for many. Either raises
    ``StorageUnavailable`` when its storage fails (disk full, read-only, Redis away); a missing image is None."""

    def prepare(self) -> int: ...
    async def write_input(self, job_id: str, data: bytes) -> None: ...
    async def read_input(self, job_id: str) -> Optional[bytes]: ...
    async def has_input(self, job_id: str) -> bool: ...
    async def write_result(self, job_id: str, png: bytes) -> None: ...
    async def read_result(self, job_id: str) -> Optional[bytes]: ...
    async def has_result(self, job_id: str) -> bool: ...
    async def remove_input(self, job_id: str) -> None: ...
    async def remove_all(self, job_id: str) -> None: ...
    async def older_than(self, cutoff: float) -> list[str]: ...


class ImageFiles:
    """``<data>/inputs/<id>`` holds an uploaded image until its job finishes;
    ``<data>/edits/<id>.png`` holds the result until the retention sweep.

    Job ids are validated by the protocol (safe alphabet), so they are safe file names.
    All I/O runs in a thread: large files never block the event loop.
    """

    def __init__(self, inputs_dir: Path, results_dir: Path) -> None:
        self.inputs_dir = inputs_dir
        self.results_dir = results_dir

    def prepare(self) -> int:
        """Create the directories and remove temp files a crash left; returns how many."""
        with refused("made ready"):
            self.inputs_dir.mkdir(parents=True, exist_ok=True)
            self.results_dir.mkdir(parents=True, exist_ok=True)
            return remove_stale_temp_files(self.inputs_dir) + remove_stale_temp_files(self.results_dir)

    def result_path(self, job_id: str) -> Path:
        return self.results_dir / f"{job_id}.png"

    def input_path(self, job_id: str) -> Path:
        return self.inputs_dir / job_id

    async def write_input(self, job_id: str, data: bytes) -> None:
        await _off_loop("written", write_atomic, self.input_path(job_id), data)

    async def read_input(self, job_id: str) -> Optional[bytes]:
        return await _off_loop("read", read_if_exists, self.input_path(job_id))

    async def has_input(self, job_id: str) -> bool:
        return await _off_loop("read", self.input_path(job_id).is_file)

    async def write_result(self, job_id: str, png: bytes) -> None:
        await _off_loop("written", write_atomic, self.result_path(job_id), png)

    async def read_result(self, job_id: str) -> Optional[bytes]:
        return await _off_loop("read", read_if_exists, self.result_path(job_id))

    async def has_result(self, job_id: str) -> bool:
        return await _off_loop("read", self.result_path(job_id).is_file)

    async def remove_input(self, job_id: str) -> None:
        await _off_loop("written", remove_quietly, self.input_path(job_id))

    async def older_than(self, cutoff: float) -> list[str]:
        """Job ids with an input or result file last written before ``cutoff`` (epoch seconds)."""
        def scan() -> list[str]:
            found: set[str] = set()
            for folder, suffix in ((self.inputs_dir, ""), (self.results_dir, ".png")):
                for path in folder.iterdir() if folder.is_dir() else ():
                    if path.name.startswith(".") or not path.name.endswith(suffix):
                        continue
                    if path.stat().st_mtime < cutoff:
                        found.add(path.name.removesuffix(suffix) if suffix else path.name)
            return sorted(found)

        return await _off_loop("read", scan)

    async def remove_all(self, job_id: str) -> None:
        await _off_loop("written", remove_quietly, self.input_path(job_id))
        await _off_loop("written", remove_quietly, self.result_path(job_id))


@contextlib.contextmanager
def refused(doing: str) -> Iterator[None]:
    """The disk's refusal (full, read-only, no permission, I/O error) as ``StorageUnavailable``, with its reason."""
    try:
        yield
    except OSError as exc:
        raise StorageUnavailable(f"the data directory cannot be {doing} ({exc.strerror or exc})") from exc


async def _off_loop(doing: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a thread (large files never block the event loop), its OSError a ``StorageUnavailable``."""
    with refused(doing):
        return await asyncio.to_thread(fn, *args)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so readers see either nothing or the whole file (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise


def read_if_exists(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def remove_stale_temp_files(directory: Path) -> int:
    """Delete half-written temp files left by a crash (they never replace a real file)."""
    removed = 0
    if directory.is_dir():
        for temp in directory.glob(".*.tmp"):
            remove_quietly(temp)
            removed += 1
    return removed
