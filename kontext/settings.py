"""Service configuration: one frozen object built from the environment and `.env` at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kontext.engine.devices import parse_devices
from kontext.errors import StartupError
from kontext.engine.recipes import DEFAULT_RECIPE, RECIPES
from protocol.limits import JOB_TYPE_FLUX_DEV, JOB_TYPE_KONTEXT_EDIT


class Settings(BaseSettings):
    """Every operator-facing knob. Field names are the environment keys, upper-cased.

    Built once by the entry point (``Settings.load(env_file, **flags)``, or
    ``Settings(_env_file=None, ...)`` in tests) and passed down; no service setting is read from ``os.environ`` anywhere else. (The
    process-level determinism variables, PYTHONHASHSEED and CUBLAS_WORKSPACE_CONFIG, are checked by
    ``kontext.engine.determinism`` before torch starts, as they must be.)
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True,
                                      env_ignore_empty=True)

    @classmethod
    def load(cls, env_file: Optional[str | Path], **flags: Any) -> "Settings":
        """The environment and ``env_file``, with the command line's flags on top: a flag that was given
        wins, even when it is 0 or empty; one that was not (None) leaves the setting alone. A value out of
        range is a ``StartupError`` naming the setting (the entry points exit 2 with that line)."""
        try:
            return cls(_env_file=env_file, **{k: v for k, v in flags.items() if v is not None})  # type: ignore[call-arg]
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, error['loc'])).upper() or 'settings'}: {error['msg']}"
                                 for error in exc.errors())
            raise StartupError(f"invalid settings: {problems}") from None

    # Feature switch and model.
    enable_kontext_edit: bool = True
    kontext_model_path: str = "black-forest-labs/FLUX.1-Kontext-dev"
    kontext_recipe: str = DEFAULT_RECIPE
    """What decides the output bytes: reference-v1 (the subnet's audit) or kontext-v1 (portable)."""
    kontext_device: Literal["auto", "cpu", "cuda"] = "auto"
    """With KONTEXT_DEVICES=auto: cpu (one CPU engine) or cuda (every visible GPU); auto: the GPUs, else the CPU."""
    kontext_devices: str = "auto"
    """One engine and worker per device: auto (every visible GPU, else one CPU engine) or cuda:0,cuda:1 / cpu,cpu."""
    kontext_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    kontext_load: Literal["eager", "lazy"] = "eager"
    kontext_cpu_threads: int = Field(default=1, ge=1, le=256)
    kontext_local_files_only: bool = False

    # GPU performance options (kontext/acceleration.py says what each does to speed and numbers).
    kontext_attention_backend: str = "native"
    kontext_compile: bool = False
    kontext_memory_mode: Literal["auto", "gpu", "model_offload", "group_offload"] = "auto"
    kontext_vram_budget_gb: Optional[float] = Field(default=None, gt=0)
    kontext_fp8_layerwise: bool = False
    kontext_first_block_cache: float = Field(default=0.0, ge=0, le=1)
    kontext_strict_determinism: bool = True
    kontext_self_check: bool = True
    """Warm up with a fixed edit and refuse to serve if its hash drifted from the recorded one."""
    kontext_golden_file: Optional[Path] = None
    """Recorded self-check hashes (default <DATA_DIR>/golden_hashes.json)."""

    # Sidecar HTTP server.
    miner_server_host: str = "0.0.0.0"
    miner_server_port: int = Field(default=8091, ge=1, le=65535)
    service_url: Optional[str] = None
    """Public base URL used in ``image_url`` (default: http://<host>:<port>)."""

    sidecar_require_signature: bool = False
    """Require btauth/1 or Epistula signatures on the sidecar's POST /edit (neuron only; off locally)."""

    # The public door (the neuron's axon port): TLS, what it claims, how long /sync/edit waits.
    axon_certfile: Optional[Path] = None
    """PEM certificate (chain) for HTTPS on the public door; the validator only calls https://."""
    axon_keyfile: Optional[Path] = None
    capacity_job_types: Annotated[tuple[str, ...], NoDecode] = (JOB_TYPE_KONTEXT_EDIT,)
    """Job types GET /capacity claims (comma-separated), each only while the engine is ready."""
    sync_timeout_seconds: float = Field(default=60.0, gt=0)
    shutdown_grace_seconds: float = Field(default=60.0, ge=0)
    """On SIGTERM: how long the running job may take to finish before it is cut off (and re-run later)."""

    # Timing rules of the subnet's validator (off by default; README "Run a miner on the subnet").
    callback_not_before_seconds: float = Field(default=0.0, ge=0)
    """A callback is not sent earlier than this after its request arrived (0: at once)."""
    admission_deadline_seconds: Optional[float] = Field(default=None, gt=0)
    """POST /edit answers 503 at once when the queue ahead says the job would finish later than this."""
    admission_window: int = Field(default=20, ge=1)
    """How many recent edit times the admission estimate takes the median of."""

    # Where jobs live: SQLite on one host, or Redis for doors and kontext-worker processes on many hosts.
    job_backend: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_lease_seconds: float = Field(default=30.0, gt=0)
    """A job taken by a worker that stopped renewing its lease this long is taken up by another."""
    worker_name: Optional[str] = None
    """kontext-worker: this process's name in the queue and /health (default host:pid)."""
    worker_health_host: str = "127.0.0.1"
    worker_health_port: int = Field(default=8093, ge=0, le=65535)
    """kontext-worker: GET /health and /metrics here (0: off)."""

    # Storage and retention.
    data_dir: Path = Path("data")
    retention_hours: float = Field(default=24.0, gt=0)
    retention_sweep_seconds: float = Field(default=300.0, gt=0)

    # Input limits.
    max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=4096 * 4096, ge=64 * 64)
    image_url_timeout_seconds: float = Field(default=15.0, gt=0)

    # Queue and worker.
    max_queue: int = Field(default=256, ge=1)
    max_attempts: int = Field(default=2, ge=1)
    """A job interrupted by a crash this many times is failed instead of run again."""

    # Callbacks.
    callback_timeout_seconds: float = Field(default=10.0, gt=0)
    callback_allow_private: bool = False

    @field_validator("kontext_devices")
    @classmethod
    def _device_list(cls, value: str) -> str:
        parse_devices(value)
        return value

    @field_validator("kontext_recipe")
    @classmethod
    def _known_recipe(cls, value: str) -> str:
        if value not in RECIPES:
            raise ValueError(f"unknown recipe {value!r}; known: {', '.join(RECIPES)}")
        return value

    @field_validator("capacity_job_types", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("capacity_job_types")
    @classmethod
    def _only_edit_jobs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if JOB_TYPE_FLUX_DEV in value:
            raise ValueError(f"{JOB_TYPE_FLUX_DEV} is FLUX.1-dev text-to-image, which this miner does not serve")
        return value

    @property
    def public_base_url(self) -> str:
        if self.service_url:
            return self.service_url.rstrip("/")
        host = "127.0.0.1" if self.miner_server_host in ("0.0.0.0", "::", "") else self.miner_server_host
        return f"http://{host}:{self.miner_server_port}"

    def image_url(self, job_id: str) -> str:
        """The public URL of a job's result PNG, as the status record and the callback both give it."""
        return f"{self.public_base_url}/images/edits/{job_id}.png"

    @property
    def golden_file(self) -> Path:
        return self.kontext_golden_file or self.data_dir / "golden_hashes.json"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def edits_dir(self) -> Path:
        return self.data_dir / "edits"

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"
