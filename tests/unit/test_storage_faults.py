"""Disk faults: an unusable data directory stops start-up clearly; a full disk never loses or corrupts."""

from __future__ import annotations

import base64
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kontext.errors import StartupError, StorageUnavailable
from kontext.http.errors import answer
from kontext.runtime import Runtime
from protocol import EditRequest, JobStatus
from tests.fakes import FakeEngine, png_bytes
from tests.unit.test_sidecar import make_settings
from tests.waiting import jobs_finished, until

REQUEST = EditRequest.model_validate({"prompt": "p", "seed": 1, "num_inference_steps": 2,
                                      "image_b64": base64.b64encode(png_bytes()).decode()})


async def test_unusable_data_dir_is_a_clear_startup_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    runtime = Runtime(make_settings(tmp_path, data_dir=blocker / "data"), engine=FakeEngine())
    with pytest.raises(StartupError, match="not usable.*DATA_DIR"):
        await runtime.start()


@pytest.mark.parametrize("hash_seed", ["0", None])
def test_sidecar_process_exits_2_with_the_reason(tmp_path: Path, hash_seed: str | None) -> None:
    """Also proves ``python -m kontext.main`` re-executes itself correctly when PYTHONHASHSEED is unset."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    env = {**os.environ, "DATA_DIR": str(blocker / "data"), "ENABLE_KONTEXT_EDIT": "false",
           "MINER_SERVER_HOST": "127.0.0.1", "MINER_SERVER_PORT": "18999"}
    env.pop("PYTHONHASHSEED", None)
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = hash_seed
    run = subprocess.run([sys.executable, "-m", "kontext.main", "--env-file", os.devnull], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 2 and "not usable" in run.stderr and "Traceback" not in run.stderr


async def test_disk_full_on_submit_is_503_and_leaves_nothing(tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL, not a patched store: the database may not grow past its current pages."""
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine(gate=__import__("threading").Event()))
    await runtime.start()
    try:
        pages = runtime.store.db.execute("PRAGMA page_count").fetchone()[0]
        runtime.store.db.execute(f"PRAGMA max_page_count = {pages}")
        big = EditRequest.model_validate({**REQUEST.model_dump(), "prompt": "p" * 4000})
        for _ in range(20):  # until the file has no room left for another job
            try:
                await runtime.service.submit(big)
            except StorageUnavailable as exc:
                refused = exc
                break
        else:
            raise AssertionError("the database never filled up")
        assert answer(refused)[0] == 503 and answer(refused)[2]["Retry-After"] and "full" in refused.message
        stored = sum((await runtime.store.count_by_status()).values())
        running = runtime.workers.running() if runtime.workers else 0
        assert stored == await runtime.service.waiting() + running  # every job stored is queued or running, no other
        inputs = {path.name for path in runtime.files.inputs_dir.iterdir()}
        assert len(inputs) == stored  # the refused job's upload was removed again; the others kept theirs
        runtime.store.db.execute("PRAGMA max_page_count = 1073741823")
        assert (await runtime.service.submit(REQUEST)).accepted  # room again: the store still works
    finally:
        await runtime.stop(grace_seconds=0.1)  # the held job is cut off: nothing here waits for it


async def test_disk_full_while_writing_the_result_fails_the_job_cleanly(tmp_path: Path, monkeypatch) -> None:
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    await runtime.start()
    try:
        real_fsync = os.fsync
        results = str(runtime.files.results_dir)

        def no_space(fd: int) -> None:  # the disk fills up exactly when the result is written
            if os.readlink(f"/proc/self/fd/{fd}").startswith(results):
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", no_space)
        job_id = (await runtime.service.submit(REQUEST)).job_id
        await until(jobs_finished(runtime, job_id), timeout=4.0, what=f"{job_id} finished")
        status = await runtime.service.status(job_id)
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert status.status is JobStatus.FAILED
        assert status.error == ("could not store the result PNG: the data directory cannot be written "
                                "(No space left on device)")
        assert list(runtime.files.results_dir.iterdir()) == []  # no half-written PNG, no temp file
    finally:
        await runtime.stop()


async def test_a_store_failure_while_running_keeps_the_worker_alive(tmp_path: Path, monkeypatch) -> None:
    import kontext.jobs.runner

    monkeypatch.setattr(kontext.jobs.runner, "RETRY_SECONDS", 0.05)
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    await runtime.start()
    try:
        real_mark_started = runtime.store.mark_started
        failures = {"left": 1}

        async def flaky_mark_started(job_id, **kwargs):  # marking it processing hits a full disk once
            if failures["left"]:
                failures["left"] -= 1
                raise StorageUnavailable("the job database cannot be written (database or disk is full)")
            return await real_mark_started(job_id, **kwargs)

        monkeypatch.setattr(runtime.store, "mark_started", flaky_mark_started)
        job_id = (await runtime.service.submit(REQUEST)).job_id
        await until(jobs_finished(runtime, job_id), what=f"{job_id} finished")
        status = await runtime.service.status(job_id)
        assert status.status is JobStatus.COMPLETED and failures["left"] == 0
        second = (await runtime.service.submit(REQUEST)).job_id  # the worker still takes work
        await until(jobs_finished(runtime, second), what=f"{second} finished")
        assert (await runtime.service.status(second)).status is JobStatus.COMPLETED
    finally:
        await runtime.stop()


async def test_a_store_that_refuses_the_insert_leaves_no_upload_behind(tmp_path: Path, monkeypatch) -> None:
    """Whichever store refuses (SQLite full, Redis away: both say StorageUnavailable), the upload written
    just before is removed and the caller gets the 503."""
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    await runtime.start()
    try:
        async def refuse(job):  # type: ignore[no-untyped-def]
            raise StorageUnavailable("the job store (Redis) is unreachable: ConnectionError", retry_after=5)

        monkeypatch.setattr(runtime.store, "insert", refuse)
        with pytest.raises(StorageUnavailable, match="cannot take new jobs right now .the job store .Redis."):
            await runtime.service.submit(REQUEST)
        assert list(runtime.files.inputs_dir.iterdir()) == []
    finally:
        await runtime.stop()


async def test_a_downloaded_image_the_disk_refuses_fails_the_job_with_the_reason(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """The image store says StorageUnavailable (it said OSError): the prefetcher fails the job with the disk's
    reason instead of retrying the write for ever."""
    from tests.unit.test_hardening import _image_server
    from tests.waiting import until

    server = _image_server()
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    await runtime.start()
    try:
        real_fsync = os.fsync
        inputs = str(runtime.files.inputs_dir)

        def no_space(fd: int) -> None:  # the disk is full for downloaded inputs
            if os.readlink(f"/proc/self/fd/{fd}").startswith(inputs):
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", no_space)
        request = EditRequest.model_validate({"prompt": "p", "seed": 1, "num_inference_steps": 2,
                                              "image_url": f"{server.url}/img.png"})
        job_id = (await runtime.service.submit(request)).job_id
        await until(jobs_finished(runtime, job_id))
        status = await runtime.service.status(job_id)
        assert status.status is JobStatus.FAILED
        assert status.error == ("could not store the downloaded image: the data directory cannot be written "
                                "(No space left on device)")
    finally:
        await runtime.stop()
        server.stop()
