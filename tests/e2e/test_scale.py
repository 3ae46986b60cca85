"""Scale out on loopback: one door and two kontext-worker processes sharing a real Redis (AOF on).

Jobs complete exactly once with the bytes of a single-host run; a worker killed mid-job loses nothing
(another takes its job over after the lease); a killed door and a restarted Redis lose nothing; a
worker that cannot reach Redis keeps trying and says so (the cluster's workers start before its Redis)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.e2e.kontext_determinism.conftest import MinerClient, image_b64
from tests.e2e.servers import CallbackReceiver, InProcessSidecar, RedisServer, SidecarProcess, WorkerProcess
from tests.waiting import poll

pytestmark = pytest.mark.e2e

LEASE = "2"
DISTINCT = 2
"""Different requests among a test's jobs; each is sent twice, so that each worker may run one of them."""


def _door(model: Path, data: Path, redis: RedisServer, port: int | None = None) -> SidecarProcess:
    return SidecarProcess(model, data, port=port, extra_env={"JOB_BACKEND": "redis", "REDIS_URL": redis.url,
                                                             "REDIS_LEASE_SECONDS": LEASE})


def _worker(model: Path, home: Path, redis: RedisServer, name: str) -> WorkerProcess:
    return WorkerProcess(model, home / name, redis_url=redis.url, name=name,
                         extra_env={"REDIS_LEASE_SECONDS": LEASE})


def _request(index: int, **extra: object) -> dict:
    return {"prompt": ["Add a red hat", "Make it blue"][index % DISTINCT],
            "image_b64": image_b64(seed=index % DISTINCT), "seed": 100 + index % DISTINCT, "width": 64, "height": 64,
            "num_inference_steps": 2, **extra}


@dataclass
class Cluster:
    redis: RedisServer
    door: SidecarProcess
    workers: list[WorkerProcess]
    receiver: CallbackReceiver
    home: Path
    model: Path
    single: InProcessSidecar
    """One host (SQLite, one worker) in this process: the bytes the cluster must make."""
    outage: dict[str, Any] = field(default_factory=dict)
    """What the first worker said while the cluster's Redis was not up yet: ``health`` (its /health once it named
    the error), ``log`` (its log then) and ``after`` (its /health once Redis was up)."""

    @property
    def client(self) -> MinerClient:
        return MinerClient(self.door.url)

    def wait_all(self, ids: list[str], timeout: float = 180) -> list[dict]:
        return [self.client.wait(job_id, timeout) for job_id in ids]

    def callbacks_sent(self, ids: list[str]) -> list[str]:
        """The job ids of the callbacks received, once every job's callback is recorded as delivered: a callback
        sent twice has come by then (a worker records the outcome after the receiver answered)."""
        for job_id in ids:
            assert self.client.wait_callback(job_id)["callback"]["status"] == "delivered"
        return sorted(item.fields["job_id"] for item in self.receiver.received if item.fields.get("job_id") in ids)


def _outage(worker: WorkerProcess) -> dict[str, Any]:
    def said_so() -> dict | None:
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()  # alive, still trying
        health = worker.health()
        return health if health["redis"]["error"] else None

    health = poll(said_so, 180, f"worker {worker.name}'s /health naming Redis unreachable",
                  tolerate=(requests.RequestException,))  # its /health is not up yet
    return {"health": health, "log": worker.log_tail()}


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The workers start first, with nothing yet on their Redis's port: Redis starts once the first worker has said
    it cannot reach it, then the door (a door cannot start without its store). The single host loads meanwhile."""
    home = tmp_path_factory.mktemp("scale")
    redis = RedisServer(home / "redis")
    door = _door(tiny_model_dir, home / "door", redis)
    workers = [_worker(tiny_model_dir, home, redis, name) for name in ("alpha", "beta")]
    receiver = CallbackReceiver().start()
    cluster = Cluster(redis, door, workers, receiver, home, tiny_model_dir,
                      InProcessSidecar(tiny_model_dir, home / "single"))
    try:
        cluster.single.start(wait_ready=False)
        for worker in workers:
            worker.start(wait_ready=False)
        cluster.outage = _outage(workers[0])
        redis.start()
        door.start(wait_ready=False)
        cluster.outage["after"] = [worker.wait_ready() for worker in workers][0]
        door.wait_ready()
        cluster.single.wait_ready()
        yield cluster
    finally:  # the tests swap in replacements: stop what the cluster holds now, not what it began with
        for process in (cluster.door, *cluster.workers):
            process.stop()
        receiver.stop()
        cluster.redis.stop()
        cluster.single.stop()


def test_a_worker_that_cannot_reach_redis_keeps_trying_and_says_so(cluster: Cluster) -> None:
    health = cluster.outage["health"]
    assert health["redis"]["reachable"] is False and health["status"] == "degraded"
    assert "unreachable" in health["redis"]["error"]
    assert "unreachable" in cluster.outage["log"] and "retrying" in cluster.outage["log"]
    after = cluster.outage["after"]  # it kept trying: Redis came up after it said so, and it took its place
    assert after["redis"]["reachable"] is True and after["status"] == "ok"
    assert all(worker["state"] == "ready" for worker in after["workers"])


def test_jobs_complete_exactly_once_with_single_host_bytes(cluster: Cluster) -> None:
    callback = f"http://127.0.0.1:{cluster.receiver.port}/hook"
    ids = [cluster.client.edit(**_request(i, callback_url=callback))["job_id"] for i in range(2 * DISTINCT)]
    statuses = cluster.wait_all(ids)
    assert all(status["status"] == "completed" and status["attempts"] == 1 for status in statuses), statuses
    ran_on = {status["worker"].split("/")[0] for status in statuses}
    assert ran_on == {"alpha", "beta"}  # both hosts took work
    assert cluster.callbacks_sent(ids) == sorted(ids)  # one callback per job, none twice
    local = MinerClient(cluster.single.url)
    expected = [local.edit_and_wait(**_request(i))[0]["result_sha256"] for i in range(DISTINCT)]
    assert [status["result_sha256"] for status in statuses] == [expected[i % DISTINCT] for i in range(len(ids))]
    assert cluster.client.result(ids[0])  # any door serves any result: images live in Redis


def test_a_door_killed_mid_submit_loses_nothing(cluster: Cluster) -> None:
    """SIGKILL while submits are in flight: every job the door answered completes; a submit cut off without an
    answer, sent again with its job_id (as a caller retries), is accepted once and completes too."""
    bodies = [_request(i, seed=900 + i, job_id=f"door-kill-{i}") for i in range(4)]
    answers: dict[str, object] = {}

    def submit(body: dict) -> None:
        try:
            answers[body["job_id"]] = requests.post(f"{cluster.door.url}/edit", json=body, timeout=30).status_code
        except requests.RequestException as exc:
            answers[body["job_id"]] = exc

    threads = [threading.Thread(target=submit, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    poll(lambda: answers, 30, "a first answer", every=0.002)  # the first answer: the rest are mid-flight
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
    """Stopped (SIGTERM) or killed (SIGKILL) with jobs queued (a worker holds two at most: one on its device, the
    next taken): with AOF on (fsync always), every accepted job is on disk and completes after the restart."""
    ids = [cluster.client.edit(**_request(i, seed=1100 + i))["job_id"] for i in range(5)]
    getattr(cluster.redis, how)()
    cluster.redis = RedisServer(cluster.redis.folder, port=cluster.redis.port).start()
    assert requests.get(f"{cluster.door.url}/edit/status/{ids[0]}", timeout=30).status_code == 200  # at once
    statuses = cluster.wait_all(ids)
    assert [status["status"] for status in statuses] == ["completed"] * len(ids)


def test_a_worker_killed_mid_job_loses_nothing_and_doubles_nothing(cluster: Cluster) -> None:
    """The cluster's last test: it leaves one worker."""
    callback = f"http://127.0.0.1:{cluster.receiver.port}/kill"
    long_jobs = [cluster.client.edit(**_request(i, width=768, height=768, num_inference_steps=4, seed=700 + i,
                                                callback_url=callback))["job_id"] for i in range(2)]

    def running() -> tuple[str, WorkerProcess] | None:
        for job_id in long_jobs:
            status = cluster.client.status(job_id)
            if status["status"] == "processing" and status["worker"]:
                return job_id, next(w for w in cluster.workers if status["worker"].startswith(w.name + "/"))
        return None

    taken, victim = poll(running, 120, "a long job running on a worker", every=0.01)
    victim.kill()  # SIGKILL mid-job: no cleanup, its lease stops being renewed
    statuses = cluster.wait_all(long_jobs, timeout=240)
    assert all(status["status"] == "completed" for status in statuses), statuses
    resumed = cluster.client.status(taken)
    assert resumed["attempts"] == 2 and not resumed["worker"].startswith(victim.name + "/")
    assert cluster.callbacks_sent(long_jobs) == sorted(long_jobs)
