"""Scale out on loopback: one door and two kontext-worker processes sharing a real Redis (AOF on).

Jobs complete exactly once with the bytes of a single-host run; a worker killed mid-job loses nothing
(another takes its job over after the lease); a killed door and a restarted Redis lose nothing; a
worker that cannot reach Redis keeps trying and says so."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.e2e.kontext_determinism.conftest import MinerClient, image_b64
from tests.e2e.servers import CallbackReceiver, RedisServer, SidecarProcess, WorkerProcess, free_port

pytestmark = pytest.mark.e2e

LEASE = "2"


def _door(model: Path, data: Path, redis: RedisServer, port: int | None = None) -> SidecarProcess:
    return SidecarProcess(model, data, port=port, extra_env={"JOB_BACKEND": "redis", "REDIS_URL": redis.url,
                                                             "REDIS_LEASE_SECONDS": LEASE})


def _worker(model: Path, home: Path, redis: RedisServer, name: str) -> WorkerProcess:
    return WorkerProcess(model, home / name, redis_url=redis.url, name=name,
                         extra_env={"REDIS_LEASE_SECONDS": LEASE})


def _request(index: int, **extra: object) -> dict:
    return {"prompt": ["Add a red hat", "Make it blue", "Turn it to night", "Add snow", "Paint it"][index % 5],
            "image_b64": image_b64(seed=index % 5), "seed": 100 + index % 5, "width": 64, "height": 64,
            "num_inference_steps": 2, **extra}


@dataclass
class Cluster:
    redis: RedisServer
    door: SidecarProcess
    workers: list[WorkerProcess]
    receiver: CallbackReceiver
    home: Path
    model: Path

    @property
    def client(self) -> MinerClient:
        return MinerClient(self.door.url)

    def wait_all(self, ids: list[str], timeout: float = 180) -> list[dict]:
        return [self.client.wait(job_id, timeout) for job_id in ids]


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("scale")
    redis = RedisServer(home / "redis").start()
    door = _door(tiny_model_dir, home / "door", redis)
    workers = [_worker(tiny_model_dir, home, redis, name) for name in ("alpha", "beta")]
    receiver = CallbackReceiver().start()
    cluster = Cluster(redis, door, workers, receiver, home, tiny_model_dir)
    try:
        door.start(wait_ready=False)
        for worker in workers:
            worker.start()
        door.wait_ready()
        yield cluster
    finally:  # the tests swap in replacements: stop what the cluster holds now, not what it began with
        for process in (cluster.door, *cluster.workers):
            process.stop()
        receiver.stop()
        cluster.redis.stop()


def test_twenty_jobs_complete_exactly_once_with_single_host_bytes(cluster: Cluster, tmp_path: Path) -> None:
    callback = f"http://127.0.0.1:{cluster.receiver.port}/hook"
    ids = [cluster.client.edit(**_request(i, callback_url=callback))["job_id"] for i in range(20)]
    statuses = cluster.wait_all(ids)
    assert all(status["status"] == "completed" and status["attempts"] == 1 for status in statuses), statuses
    ran_on = {status["worker"].split("/")[0] for status in statuses}
    assert ran_on == {"alpha", "beta"}  # both hosts took work
    for job_id in ids:
        cluster.receiver.wait_for(job_id)
    time.sleep(0.5)
    sent = [item.fields["job_id"] for item in cluster.receiver.received if item.fields.get("job_id") in ids]
    assert sorted(sent) == sorted(ids)  # one callback per job, none twice
    single = SidecarProcess(cluster.model, tmp_path / "single").start()  # one host, SQLite, one worker
    try:
        local = MinerClient(single.url)
        expected = [local.edit_and_wait(**_request(i))[0]["result_sha256"] for i in range(5)]
    finally:
        single.stop()
    assert [status["result_sha256"] for status in statuses] == [expected[i % 5] for i in range(20)]
    assert cluster.client.result(ids[0])  # any door serves any result: images live in Redis


def test_a_door_killed_mid_submit_loses_nothing(cluster: Cluster) -> None:
    """SIGKILL while submits are in flight: every job the door answered completes; a submit cut off without an
    answer, sent again with its job_id (as a caller retries), is accepted once and completes too."""
    bodies = [_request(i, seed=900 + i, job_id=f"door-kill-{i}") for i in range(8)]
    answers: dict[str, object] = {}

    def submit(body: dict) -> None:
        try:
            answers[body["job_id"]] = requests.post(f"{cluster.door.url}/edit", json=body, timeout=30).status_code
        except requests.RequestException as exc:
            answers[body["job_id"]] = exc

    threads = [threading.Thread(target=submit, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while not answers and time.monotonic() < deadline:  # the first answer: the rest are mid-flight
        time.sleep(0.005)
    cluster.door.kill()
    for thread in threads:
        thread.join(30)
    cluster.door = _door(cluster.model, cluster.home / "door", cluster.redis, port=cluster.door.port).start()
    for body in bodies:
        if answers[body["job_id"]] != 200:  # no answer (or a refusal): the caller sends it again
            assert requests.post(f"{cluster.door.url}/edit", json=body, timeout=30).status_code == 200
    statuses = cluster.wait_all([body["job_id"] for body in bodies])
    assert [status["status"] for status in statuses] == ["completed"] * len(bodies)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_restarted_redis_loses_nothing(cluster: Cluster, how: str) -> None:
    """Stopped (SIGTERM) or killed (SIGKILL) with jobs queued: with AOF on (fsync always), every accepted job is on
    disk and completes after the restart."""
    ids = [cluster.client.edit(**_request(i, seed=1100 + i, width=256, height=256))["job_id"] for i in range(6)]
    getattr(cluster.redis, how)()
    cluster.redis = RedisServer(cluster.redis.folder, port=cluster.redis.port).start()
    assert requests.get(f"{cluster.door.url}/edit/status/{ids[0]}", timeout=30).status_code == 200  # at once
    statuses = cluster.wait_all(ids)
    assert [status["status"] for status in statuses] == ["completed"] * 6


def test_a_worker_killed_mid_job_loses_nothing_and_doubles_nothing(cluster: Cluster) -> None:
    """The cluster's last test: it leaves one worker."""
    callback = f"http://127.0.0.1:{cluster.receiver.port}/kill"
    long_jobs = [cluster.client.edit(**_request(i, width=768, height=768, num_inference_steps=4, seed=700 + i,
                                                callback_url=callback))["job_id"] for i in range(3)]
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        for job_id in long_jobs:
            status = cluster.client.status(job_id)
            if status["status"] == "processing" and status["worker"]:
                victim = next(w for w in cluster.workers if status["worker"].startswith(w.name + "/"))
                taken = job_id
                break
        time.sleep(0.05)
    assert victim is not None
    victim.kill()  # SIGKILL mid-job: no cleanup, its lease stops being renewed
    statuses = cluster.wait_all(long_jobs, timeout=240)
    assert all(status["status"] == "completed" for status in statuses), statuses
    resumed = cluster.client.status(taken)
    assert resumed["attempts"] == 2 and not resumed["worker"].startswith(victim.name + "/")
    for job_id in long_jobs:
        cluster.receiver.wait_for(job_id)
    time.sleep(0.5)
    sent = [item.fields["job_id"] for item in cluster.receiver.received if item.fields.get("job_id") in long_jobs]
    assert sorted(sent) == sorted(long_jobs)


def test_a_worker_that_cannot_reach_redis_keeps_trying_and_says_so(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    redis = RedisServer(tmp_path / "late-redis", port=port)
    worker = _worker(tiny_model_dir, tmp_path, redis, "lonely").start(wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline:
            try:
                health = worker.health()
                if health["redis"]["error"]:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        assert health is not None and health["redis"]["reachable"] is False and health["status"] == "degraded"
        assert "unreachable" in health["redis"]["error"]
        time.sleep(2.0)
        assert worker.proc is not None and worker.proc.poll() is None  # still alive, still trying
        assert "unreachable" in worker.log_tail() and "retrying" in worker.log_tail()
        redis.start()
        assert worker.wait_ready(timeout=120)["redis"]["reachable"] is True
    finally:
        worker.stop()
        redis.stop()
