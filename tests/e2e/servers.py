"""Real servers on loopback for the end-to-end suites: the sidecar process and a webhook receiver."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import requests
from aiohttp import web

from tests.waiting import poll
from tools.redis_server import RedisServer  # noqa: F401 - the suites start theirs through here

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def read_stored_job(database: Path, job_id: str):  # type: ignore[no-untyped-def]
    """A miner's record of ``job_id`` (or None), read through its own SQLite store, opened and closed here."""
    from kontext.jobs.store import SqliteJobStore

    store = SqliteJobStore(database)
    await store.open()
    try:
        return await store.get(job_id)
    finally:
        await store.close()


def stored_job(data_dir: Path, job_id: str):  # type: ignore[no-untyped-def]
    """A stopped miner's record of ``job_id``, read through its own store: what its next start finds."""
    job = asyncio.run(read_stored_job(data_dir / "jobs.sqlite3", job_id))
    assert job is not None, f"{job_id} is not in {data_dir}"
    return job


class SidecarProcess:
    """`python -m kontext.main` in its own process, on a free loopback port, with the tiny model.

    ``recipe`` defaults to kontext-v1: it honours width/height, so the suites' 64x64 requests stay
    fast; ``None`` runs the miner's default (reference-v1: always the pipeline's 1024x1024).
    """

    def __init__(self, model_dir: Path, data_dir: Path, *, port: Optional[int] = None,
                 extra_env: Optional[dict[str, str]] = None, recipe: Optional[str] = "kontext-v1") -> None:
        self.model_dir = model_dir
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra_env = extra_env or {}
        self.recipe = recipe
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log_path = data_dir.parent / f"sidecar-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "ENABLE_KONTEXT_EDIT": "true", "KONTEXT_MODEL_PATH": str(self.model_dir),
            "KONTEXT_DEVICES": "cpu", "KONTEXT_LOCAL_FILES_ONLY": "true",
            "MINER_SERVER_HOST": "127.0.0.1", "MINER_SERVER_PORT": str(self.port),
            "DATA_DIR": str(self.data_dir), "OUTBOUND_ALLOW_PRIVATE": "true",
            "CALLBACK_TIMEOUT_SECONDS": "5",
        })
        env.pop("KONTEXT_RECIPE", None)
        if self.recipe is not None:
            env["KONTEXT_RECIPE"] = self.recipe
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kontext.main", "--env-file", os.devnull]

    def start(self, *, wait_ready: bool = True, timeout: float = 180) -> "SidecarProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=self.env(), stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                health = requests.get(f"{self.url}/health", timeout=2).json()
                if health["services"]["kontext_edit"] == "ready":
                    return health
                if health["services"]["kontext_edit"] == "failed":
                    raise RuntimeError(f"engine failed: {health}\n{self.log_tail()}")
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"sidecar not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, as in a crash or OOM kill."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as pm2 sends on stop; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill()


class NeuronProcess(SidecarProcess):
    """`python neurons/miner.py` offline: the sidecar on ``port`` and the axon on ``axon_port``."""

    def __init__(self, model_dir: Path, data_dir: Path, *, wallet_path: Path, validators: str,
                 extra_args: Optional[list[str]] = None, extra_env: Optional[dict[str, str]] = None,
                 recipe: Optional[str] = "kontext-v1", env_file: str = os.devnull) -> None:
        """``env_file``: the ``--env-file`` it reads (a copy of .env.example, as the README says, or none)."""
        super().__init__(model_dir, data_dir, extra_env={"HOME": str(wallet_path.parent), **(extra_env or {})},
                         recipe=recipe)
        self.axon_port = free_port()
        self.wallet_path = wallet_path
        self.validators = validators
        self.extra_args = extra_args or []
        self.env_file = env_file

    @property
    def axon_url(self) -> str:
        scheme = "https" if "--axon.certfile" in self.extra_args else "http"
        return f"{scheme}://127.0.0.1:{self.axon_port}"

    def command(self) -> list[str]:
        return [sys.executable, str(REPO_ROOT / "neurons" / "miner.py"), "--subtensor.network", "offline",
                "--wallet.path", str(self.wallet_path), "--wallet.name", "miner", "--wallet.hotkey", "default",
                "--axon.ip", "127.0.0.1", "--axon.port", str(self.axon_port),
                "--neuron.validators", self.validators, "--env-file", self.env_file, *self.extra_args]


@dataclass
class ReceivedCallback:
    path: str
    headers: dict[str, str]
    body: bytes
    fields: dict[str, str]
    image: Optional[bytes]


@dataclass
class CallbackReceiver:
    """A webhook receiver in a background thread. ``/status/<code>`` answers with that code."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[ReceivedCallback] = field(default_factory=list)

    def start(self) -> "CallbackReceiver":
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            fields: dict[str, str] = {}
            image = None
            reader = await _multipart_from_bytes(request, body)
            if reader is not None:
                async for part in reader:
                    if part.name == "image":
                        image = await part.read(decode=False)
                    else:
                        fields[part.name or ""] = await part.text()
            self.received.append(ReceivedCallback(request.path, dict(request.headers), body, fields, image))
            code = int(request.match_info.get("code", "200"))
            return web.Response(status=code, text="ok" if code < 300 else "receiver says no")

        def make_app() -> web.Application:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/status/{code}", handle)
            app.router.add_post("/{tail:.*}", handle)
            return app

        self._server = ThreadedApp(make_app, self.host, self.port or None).start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        self._server.stop()

    def wait_for(self, job_id: str, timeout: float = 30) -> ReceivedCallback:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.received:
                if item.fields.get("job_id") == job_id:
                    return item
            time.sleep(0.05)
        raise TimeoutError(f"no callback for {job_id}")


async def _multipart_from_bytes(request: web.Request, body: bytes):
    """Parse the multipart body we already read (the raw bytes are kept for the HMAC check)."""
    from aiohttp import MultipartReader
    from aiohttp.streams import StreamReader

    if not request.content_type.startswith("multipart/"):
        return None
    stream = StreamReader(request.protocol, limit=max(2**16, len(body)), loop=asyncio.get_running_loop())
    stream.feed_data(body)
    stream.feed_eof()
    return MultipartReader(request.headers, stream)


class ThreadedApp:
    """Run an aiohttp application on its own event loop in a background thread, on loopback."""

    def __init__(self, make_app, host: str = "127.0.0.1", port: Optional[int] = None,  # type: ignore[no-untyped-def]
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self.make_app = make_app
        self.host = host
        self.port = port or free_port(host)
        self.ssl_context = ssl_context

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    def start(self) -> "ThreadedApp":
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            # a handler the test left hanging (a stalled download, say) is cancelled at once at stop
            self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=0.1)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context).start()
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name=f"app-{self.port}")
        self._thread.start()
        if not ready.wait(30):
            raise TimeoutError("app did not start")
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class WorkerProcess(SidecarProcess):
    """`python -m kontext.worker_main`: engines taking jobs from Redis, with /health on ``port``."""

    def __init__(self, model_dir: Path, data_dir: Path, *, redis_url: str, name: str,
                 extra_env: Optional[dict[str, str]] = None, recipe: Optional[str] = "kontext-v1") -> None:
        super().__init__(model_dir, data_dir, extra_env={
            "JOB_BACKEND": "redis", "REDIS_URL": redis_url, "WORKER_NAME": name, "KONTEXT_DEVICES": "cpu",
            "WORKER_HEALTH_HOST": "127.0.0.1", "KONTEXT_PROFILE": "local",  # the scale tests time nothing
            **(extra_env or {})}, recipe=recipe)
        self.name = name
        self.extra_env["WORKER_HEALTH_PORT"] = str(self.port)
        self.log_path = data_dir.parent / f"worker-{name}-{self.port}.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kontext.worker_main", "--env-file", os.devnull]

    def health(self) -> dict:
        return requests.get(f"{self.url}/health", timeout=5).json()

    def wait_ready(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                health = self.health()
                if health["workers"] and all(w["state"] == "ready" for w in health["workers"]) \
                        and health["redis"]["reachable"]:
                    return health
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log_tail()}")


class InProcessSidecar:
    """The sidecar's runtime and app (one host, SQLite, the tiny model on the CPU, kontext-v1) in this process, on a
    free loopback port, served from a background thread: what ``SidecarProcess`` serves, without a process start.
    For the tests that need a miner over HTTP but neither kill it nor signal it."""

    def __init__(self, model_dir: Path, data_dir: Path, **settings: Any) -> None:
        self.values: dict[str, Any] = {
            "data_dir": data_dir, "enable_kontext_edit": True, "kontext_model_path": str(model_dir),
            "kontext_devices": "cpu", "kontext_local_files_only": True, "kontext_recipe": "kontext-v1",
            "outbound_allow_private": True, "callback_timeout_seconds": 5, **settings}
        self.runtime: Any = None
        self._server: Optional[ThreadedApp] = None

    def start(self, timeout: float = 180, *, wait_ready: bool = True) -> "InProcessSidecar":
        """Serve at once; the engine loads in the background (``wait_ready``: until it is ready, or stopped)."""
        from kontext.http.app import create_app
        from kontext.runtime import Runtime
        from kontext.settings import Settings

        def make_app() -> web.Application:  # on the server's own loop: the runtime's tasks live there
            self.runtime = Runtime(Settings(_env_file=None, **self.values))  # type: ignore[call-arg]
            return create_app(self.runtime, manage_runtime=True)

        self._server = ThreadedApp(make_app).start()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 180) -> "InProcessSidecar":
        """Until the engine is ready; a failed load or the timeout raises, and stops the server."""
        def ready() -> bool:
            state = requests.get(f"{self.url}/health", timeout=5).json()["services"]["kontext_edit"]
            if state == "failed":
                raise RuntimeError(f"engine failed: {self.runtime.workers.describe()}")
            return state == "ready"

        try:
            poll(ready, timeout, "the in-process sidecar's engine ready", tolerate=(requests.RequestException,))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return self._server.url

    def stop(self) -> None:
        """Stop serving (the runtime with it); once started, again is a no-op."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
