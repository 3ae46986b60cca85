"""Service configuration: one frozen object built from the environment and `.env` at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kontext.engine.devices import parse_devices
from kontext.engine.recipes import DEFAULT_RECIPE, RECIPES
from kontext.settings_load import load_settings
from protocol.limits import (
    JOB_TYPE_FLUX_DEV,
    JOB_TYPE_KONTEXT_EDIT,
    VALIDATOR_CALLBACK_DEADLINE_SECONDS,
    VALIDATOR_CALLBACK_NOT_BEFORE_SECONDS,
)

S = TypeVar("S", bound="Settings")
RUN_DEADLINE_FIXED_SECONDS = 120.0
RUN_DEADLINE_PER_STEP_SECONDS = 10.0
Profile = Literal["local", "subnet"]
PROFILES: dict[str, dict[str, Any]] = {
    "local": {"callback_not_before_seconds": 0.0, "admission_deadline_seconds": 0.0},
    "subnet": {"callback_not_before_seconds": VALIDATOR_CALLBACK_NOT_BEFORE_SECONDS,
               "admission_deadline_seconds": VALIDATOR_CALLBACK_DEADLINE_SECONDS},
}
"""What a setting left unset means in each profile. ``local`` (``kontext-sidecar``, ``run_local.sh``): the seed's
plain behaviour. ``subnet`` (the neuron, ``kontext-worker``): the subnet validator's timing rules."""


class Settings(BaseSettings):
    """Every operator-facing knob of the service. Field names are the environment keys, upper-cased.

    Built once by the entry point (``Settings.load(env_file, **flags)``, or ``Settings(_env_file=None, ...)`` in
    tests) and passed down; no service setting is read from ``os.environ`` anywhere else. (The process-level
    determinism variables, PYTHONHASHSEED and CUBLAS_WORKSPACE_CONFIG, are settled by ``kontext.process`` before
    torch starts, as they must be.)
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True,
                                      env_ignore_empty=True)

    @classmethod
    def load(cls: type[S], env_file: Optional[str | Path], **flags: Any) -> S:
        """The environment and ``env_file``, with the command line's flags on top (a flag given wins, even when
        it is 0 or empty; one not given, None, leaves the setting alone). Deprecated names are read with a
        warning; a value out of range or still a placeholder is a ``StartupError`` naming the setting."""
        return load_settings(cls, env_file, flags)

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        """Settings left unset take their profile's value (``PROFILES``)."""
        if isinstance(data, dict):
            profile = data.get("kontext_profile") or cls.model_fields["kontext_profile"].default
            for name, value in PROFILES.get(profile, {}).items():
                if data.get(name) is None:
                    data[name] = value
        return data

    # Which rules are in force: the entry point chooses (the neuron: subnet; kontext-sidecar: local).
    kontext_profile: Profile = "local"
    log_level: str = "INFO"

    # Feature switch and model.
    enable_kontext_edit: bool = True
    kontext_model_path: str = "black-forest-labs/FLUX.1-Kontext-dev"
    kontext_recipe: str = DEFAULT_RECIPE
    """What decides the output bytes: reference-v1 (the subnet's audit) or kontext-v1 (portable)."""
    kontext_devices: str = "auto"
    """One engine and worker per device: auto (every visible GPU, else one CPU engine), cuda (every visible GPU),
    cpu (one CPU engine), or a list such as cuda:0,cuda:1 or cpu,cpu."""
    kontext_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    kontext_load: Literal["eager", "lazy"] = "eager"
    kontext_cpu_threads: int = Field(default=1, ge=1, le=256)
    kontext_local_files_only: bool = False

    # GPU performance options (kontext/engine/acceleration.py says what each does to speed and numbers).
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

    # The sidecar: the seed's HTTP contract (loopback unless told otherwise).
    miner_server_host: str = "127.0.0.1"
    miner_server_port: int = Field(default=8091, ge=1, le=65535)
    service_url: Optional[str] = None
    """Public base URL of ``image_url`` (default: the neuron's public door, https://<commit address>:<port>;
    the sidecar's own address for kontext-sidecar)."""
    sidecar_require_signature: Optional[bool] = None
    """The neuron's sidecar: signed job routes (unset: required on any address but loopback, where the seed's
    unsigned contract is kept for local tools)."""

    # What the public door claims, and how long /sync/edit and a stop wait.
    capacity_job_types: Annotated[tuple[str, ...], NoDecode] = (JOB_TYPE_KONTEXT_EDIT,)
    """Job types GET /capacity claims (comma-separated), each only while the engine is ready."""
    sync_timeout_seconds: float = Field(default=60.0, gt=0)
    shutdown_grace_seconds: float = Field(default=60.0, ge=0)
    """On SIGTERM: how long the running job may take to finish before it is cut off (and re-run later)."""

    # Timing rules (unset: the profile's; the subnet validator's are 8 s and 15 s).
    callback_not_before_seconds: float = Field(default=None, ge=0)  # type: ignore[assignment]
    """A callback is not sent earlier than this after its request arrived (0: at once)."""
    admission_deadline_seconds: float = Field(default=None, ge=0)  # type: ignore[assignment]
    """POST /edit answers 503 at once when the work ahead says the job would call back later than this (0: off)."""
    admission_margin_seconds: float = Field(default=1.0, ge=0)
    """Added to the estimate for the callback's upload (a 1024x1024 PNG) and the network."""
    admission_window: int = Field(default=20, ge=2)
    """How many recent edits (steps, seconds) the estimate is fitted to."""

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
    max_decoding_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    """Request bodies over 256 KiB being read, parsed and decoded at once in this process (each counted at its
    Content-Length, or MAX_REQUEST_BYTES when chunked or compressed); past it 503 + Retry-After before a byte is
    read. One body is always let through, whatever its size."""
    http_idle_timeout_seconds: float = Field(default=30.0, gt=0)
    """Every listener: a request's headers must have arrived this long after the connection opened or its previous
    answer was sent, else the connection is closed (an idle keep-alive connection too)."""
    http_body_timeout_seconds: float = Field(default=60.0, gt=0)
    """Every listener: a request body must have arrived whole this long after its headers, else 408 and the
    connection is closed."""
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=4096 * 4096, ge=64 * 64)
    image_url_timeout_seconds: float = Field(default=15.0, gt=0)

    # Queue and worker.
    max_queue: int = Field(default=256, ge=1)
    max_attempts: int = Field(default=2, ge=1)
    """A job interrupted by a crash this many times is failed instead of run again."""
    run_deadline_seconds: Optional[float] = Field(default=None, gt=0)
    """How long one pipeline call may take before its device is taken as hung: the job fails, the worker leaves the
    rotation and the process exits 1 for its supervisor to restart it (unset: 120 s + 10 s a step)."""

    # Outbound traffic: callbacks and image_url downloads.
    callback_timeout_seconds: float = Field(default=10.0, gt=0)
    outbound_allow_private: bool = False
    """Let callbacks and image_url downloads reach loopback and private networks (tests, a private deployment)."""

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

    def run_deadline(self, steps: int) -> float:
        """RUN_DEADLINE_SECONDS, or generous for ``steps`` (a 28-step edit takes well under 30 s on an H100)."""
        return self.run_deadline_seconds or RUN_DEADLINE_FIXED_SECONDS + RUN_DEADLINE_PER_STEP_SECONDS * steps

    def timing(self) -> dict[str, Any]:
        """The profile and its rules in force, as ``/health`` and the start-up log say them."""
        return {"name": self.kontext_profile, "callback_not_before_seconds": self.callback_not_before_seconds,
                "admission_deadline_seconds": self.admission_deadline_seconds or None,
                "admission_margin_seconds": self.admission_margin_seconds}

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
