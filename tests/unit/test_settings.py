"""Settings at start: the profiles' rules, renamed keys, the sidecar's exposure, and what the process honours
from .env before torch starts."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from kontext.errors import StartupError
from kontext.settings import Settings
from kontext.worker_main import WorkerSettings
from neurons.settings import NeuronSettings


def test_the_neuron_and_workers_run_the_subnet_rules_and_the_sidecar_the_seeds() -> None:
    for model in (NeuronSettings, WorkerSettings):
        subnet = model(_env_file=None)  # type: ignore[call-arg]
        assert subnet.timing() == {"name": "subnet", "callback_not_before_seconds": 8.0,
                                   "admission_deadline_seconds": 15.0, "admission_margin_seconds": 1.0}
    local = Settings(_env_file=None)  # type: ignore[call-arg]
    assert local.timing()["name"] == "local" and local.callback_not_before_seconds == 0.0
    assert local.timing()["admission_deadline_seconds"] is None  # 0: off
    assert local.miner_server_host == "127.0.0.1"  # a sidecar is on loopback unless told otherwise


def test_each_rule_stays_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLBACK_NOT_BEFORE_SECONDS", "3")
    monkeypatch.setenv("ADMISSION_DEADLINE_SECONDS", "0")
    changed = NeuronSettings.load(None)
    assert changed.callback_not_before_seconds == 3.0 and changed.timing()["admission_deadline_seconds"] is None
    monkeypatch.setenv("KONTEXT_PROFILE", "local")
    monkeypatch.delenv("CALLBACK_NOT_BEFORE_SECONDS")
    assert NeuronSettings.load(None).callback_not_before_seconds == 0.0


def test_renamed_settings_are_read_for_one_release_with_a_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    env = tmp_path / ".env"
    env.write_text("CALLBACK_ALLOW_PRIVATE=true\n")
    monkeypatch.setenv("KONTEXT_DEVICE", "cpu")
    with caplog.at_level(logging.WARNING, logger="kontext.settings"):
        settings = Settings.load(env)
    assert settings.outbound_allow_private is True and settings.kontext_devices == "cpu"
    warned = [record.getMessage() for record in caplog.records]
    assert any("CALLBACK_ALLOW_PRIVATE is deprecated: rename it OUTBOUND_ALLOW_PRIVATE" in m for m in warned)
    assert any("KONTEXT_DEVICE is deprecated: rename it KONTEXT_DEVICES" in m for m in warned)
    monkeypatch.setenv("KONTEXT_DEVICES", "cpu,cpu")  # both: the new name wins, and the old one is called out
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kontext.settings"):
        assert Settings.load(None).kontext_devices == "cpu,cpu"
    assert any("KONTEXT_DEVICE is deprecated and ignored here" in r.getMessage() for r in caplog.records)


def test_a_validator_entry_that_is_not_an_ss58_address_stops_the_start() -> None:
    with pytest.raises(StartupError, match="NEURON_VALIDATORS.*not-a-hotkey"):
        NeuronSettings.load(None, neuron_validators="not-a-hotkey:100")


@pytest.mark.parametrize("host, require, signed", [
    ("127.0.0.1", None, False), ("127.0.0.1", True, True), ("0.0.0.0", None, True), ("10.0.0.5", True, True),
])
def test_no_unsigned_job_route_off_loopback(host: str, require: object, signed: bool) -> None:
    from neurons.miner import sidecar_signed

    settings = NeuronSettings(_env_file=None, miner_server_host=host, sidecar_require_signature=require)  # type: ignore[call-arg]
    assert sidecar_signed(settings) is signed


def test_an_explicitly_unsigned_sidecar_on_the_network_is_refused() -> None:
    from neurons.miner import sidecar_signed

    settings = NeuronSettings(_env_file=None, miner_server_host="0.0.0.0", sidecar_require_signature=False)  # type: ignore[call-arg]
    with pytest.raises(StartupError, match="not loopback"):
        sidecar_signed(settings)


def test_image_url_points_at_the_public_door_unless_service_url_says_otherwise() -> None:
    door = NeuronSettings(_env_file=None, commit_address="miner.kontext.test", axon_port=8443).with_public_urls()  # type: ignore[call-arg]
    assert door.image_url("j") == "https://miner.kontext.test:8443/images/edits/j.png"
    explicit = NeuronSettings(_env_file=None, commit_address="miner.kontext.test",  # type: ignore[call-arg]
                              service_url="https://cdn.kontext.test").with_public_urls()
    assert explicit.image_url("j") == "https://cdn.kontext.test/images/edits/j.png"
    offline = NeuronSettings(_env_file=None, axon_port=8901).with_public_urls()  # type: ignore[call-arg]
    assert offline.image_url("j") == "http://127.0.0.1:8901/images/edits/j.png"  # the door, never the sidecar


def test_a_port_in_use_stops_the_start_before_anything_loads() -> None:
    from aiohttp import web

    from kontext.http.serve import Listener, bind

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"the sidecar cannot listen on 127.0.0.1:{port}"):
            bind([Listener("sidecar", web.Application(), "127.0.0.1", port)])


def test_determinism_variables_in_dot_env_are_honoured_or_refused(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from kontext import process

    env = tmp_path / ".env"
    env.write_text("CUBLAS_WORKSPACE_CONFIG=:16:8\n")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(process, "configure_logging", lambda level: None)
    process.prepare(env_file=str(env))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # set before torch starts CUDA
    env.write_text("PYTHONHASHSEED=1\n")
    with pytest.raises(SystemExit) as exited:
        process.prepare(env_file=str(env))
    assert exited.value.code == 2


def test_info_goes_to_stdout_and_warnings_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from kontext.process import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO")
        logging.getLogger("kontext.test").info("an info line")
        logging.getLogger("kontext.test").warning("a warning line")
        out, err = capsys.readouterr()
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert "an info line" in out and "a warning line" not in out
    assert "a warning line" in err and "an info line" not in err
