"""scripts/gpu_proof.py: its dry run writes every section on CPU (the suite runs it), and the parts that must
work on the lent machine before anything else (the carried wheels, the budget, the report) do."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.in_process import process_state_restored

ROOT = Path(__file__).resolve().parents[2]
SHA256 = 64


def _script() -> ModuleType:
    """The script as a module (registered: its dataclasses look their module up)."""
    if "gpu_proof" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_proof", ROOT / "scripts" / "gpu_proof.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_proof"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_proof"]


def _errors(value: Any, where: str = "") -> list[str]:
    if isinstance(value, dict):
        found = [f"{where}: {value['error']}"] if "error" in value else []
        return found + [e for key, item in value.items() for e in _errors(item, f"{where}/{key}")]
    return []


def test_the_dry_run_writes_every_section_measured_or_saying_why_not(tiny_model_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The fewest jobs that reach every step: the tiny model at 64x64 (kontext-v1) where the section allows;
    determinism (its fresh process too) and the golden case on reference-v1 at 1024x1024, one step. The script runs
    in this process, as the bench scripts' tests run theirs, and so does its fresh process: the script started again
    as ``--fresh-child`` (``_ChildHere``). That a new interpreter gives the same bytes is test_engine's to show
    (``test_a_fresh_process_gives_the_same_sha256``)."""
    script = _script()
    out = tmp_path / "r.json"
    children: list[list[str]] = []

    class _ChildHere:
        """``subprocess.Popen`` of the fresh process: the same command line, run here before this returns."""

        def __init__(self, argv: list[str], *, stdout: Any, stderr: Any, text: bool, cwd: Path) -> None:
            assert argv[:3] == [sys.executable, str(ROOT / "scripts" / "gpu_proof.py"), "--fresh-child"], argv
            children.append(argv)
            with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), \
                    contextlib.redirect_stderr(stderr):
                patch.setattr(sys, "argv", argv[1:])
                script.main()
            self.returncode = 0

        def wait(self, timeout: float | None = None) -> int:
            return self.returncode

    monkeypatch.setattr(script, "subprocess",
                        SimpleNamespace(Popen=_ChildHere, TimeoutExpired=subprocess.TimeoutExpired))
    monkeypatch.setattr(sys, "argv", [
        "gpu_proof.py", "--dry-run", "--out", str(out), "--tiny-model", str(tiny_model_dir), "--recipe", "kontext-v1",
        "--size", "64", "--steps", "1", "--repeats", "1", "--determinism-steps", "1", "--reference-cases", "1",
        "--pipeline-jobs", "2", "--pipeline-steps", "1", "--callback-jobs", "1", "--callback-steps", "1"])
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    with process_state_restored():
        script.main()
    assert len(children) == 1
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert not _errors(report), _errors(report)
    environment, determinism, reference = report["environment"], report["determinism"], report["reference"]
    assert "not_run" in environment["gpu"] and environment["torch"] and environment["diffusers"]
    assert environment["png_deflate"].startswith("zlib")
    assert environment["auditor_png_deflate"].startswith("zlib 1.2.11")
    tiny = determinism["tiny"]
    assert tiny["identical"] is True and len(tiny["fresh_process"]) == SHA256 and len(tiny["in_process"]) == 2
    assert reference["tiny"]["matched"] == reference["tiny"]["of"] == 1
    for section in (determinism, reference):
        assert section["full"]["not_run"].startswith("dry run")
    latency = report["latency"]
    assert latency["steps_1"]["output"] == "64x64" and latency["steps_1"]["p50_s"] > 0
    assert latency["engine_over_bare"]["ratio"] > 0 and latency["load"]["load_s"] > 0
    assert latency["callback_overhead"]["jobs"] == 1 and "overhead_ms_p50" in latency["callback_overhead"]
    assert "not_run" in report["memory"]["vram"] and report["memory"]["tiny"]["weights_gib"] >= 0
    busy = report["pipeline"]["busy"]
    assert busy["completed"] == busy["pipeline_calls"] == 2 and 0 < busy["busy_fraction"] <= 1
    sections = [line.split()[0] for line in printed.splitlines() if line.strip()]
    assert sections[:6] == ["environment", "determinism", "reference", "latency", "memory", "pipeline"], printed


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel holding one module that says its version."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}.py", f"VERSION = {version!r}\n")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_missing_modules_come_from_the_carried_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the lent machine does first: only the wheels it lacks (or has older) are installed, into a temp dir
    that goes first on sys.path and on PYTHONPATH (for the fresh process)."""
    proof = _script()
    monkeypatch.setattr(proof, "CARRIED", ("kontext_probe_module",))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    with pytest.raises(SystemExit, match="kontext_probe_module missing and no wheels for them"):
        proof.install_carried_wheels(tmp_path)
    _wheel(tmp_path, "kontext_probe_module", "1.0")
    _wheel(tmp_path, "pytest", "1.0")  # installed here at a later version: left out
    target = proof.install_carried_wheels(tmp_path)
    assert target is not None and sys.path[0] == target and os.environ["PYTHONPATH"] == f"{target}:/elsewhere"
    assert sorted(path.name for path in Path(target).iterdir() if path.suffix == ".py") == ["kontext_probe_module.py"]
    assert importlib.util.find_spec("kontext_probe_module") is not None
    assert proof.install_carried_wheels(tmp_path) is None  # nothing missing any more


def test_a_failing_step_and_a_spent_budget_are_recorded_and_the_report_is_always_json(tmp_path: Path) -> None:
    proof = _script()
    plan = proof.Plan(dry_run=True, budget_s=60, only=("environment", "latency", "memory"))
    report = proof.Report(tmp_path / "r.json", plan)
    runner = proof.Proof(plan, "cpu", report, None)

    def broken() -> dict[str, Any]:
        raise RuntimeError("out of memory")

    runner.step("latency", "a", broken)
    runner.step("latency", "b", lambda: {"p50_s": 1.0})
    runner.step("pipeline", "busy", lambda: {"busy_fraction": 1.0})
    runner.started -= 61  # the budget is spent: only cheap steps still run
    runner.step("latency", "c", lambda: {"p50_s": 2.0})
    runner.step("memory", None, lambda: {"host_peak_rss_gib": 1.0}, cheap=True)
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["latency"]["a"] == {"error": "RuntimeError: out of memory"}
    assert written["latency"]["b"]["p50_s"] == 1.0 and "step_s" in written["latency"]["b"]
    assert written["pipeline"]["busy"]["not_run"].startswith("not asked for (--only environment,latency,memory)")
    assert written["latency"]["c"]["not_run"] == "the time budget (60 s) was spent before this step"
    assert written["memory"]["host_peak_rss_gib"] == 1.0
    assert set(proof.SECTIONS) <= set(written) and written["plan"]["budget_s"] == 60


def test_the_printed_table_of_a_gpu_report() -> None:
    """The lines a lent machine prints (the dry run never reaches the GPU's branches)."""
    sha = "a" * SHA256
    data = {
        "environment": {"gpu": {"name": "NVIDIA H200", "sm_count": 132, "driver": "580.159.04"}, "torch": "2.11.0",
                        "cuda": "13.0", "diffusers": "0.36.0", "transformers": "5.17.0", "pillow": "12.0.0",
                        "png_deflate": "zlib 1.3", "auditor_png_deflate": "zlib 1.2.11 (Ubuntu 22.04)",
                        "python": "3.12.3"},
        "determinism": {"tiny": {"in_process": [sha, sha], "fresh_process": sha, "identical": True},
                        "full": {"in_process": [sha, sha], "fresh_process": {"not_run": "no room"},
                                 "identical_in_process": True}},
        "reference": {"tiny": {"matched": 11, "of": 11}, "full": {"error": "RuntimeError: CUDA out of memory"}},
        "latency": {"model": "full", "load": {"load_s": 41.5}, "steps_10": {"steps": 10, "p50_s": 5.4,
                                                                             "output": "1024x1024"},
                    "engine_over_bare": {"ratio": 1.012}, "callback_overhead": {"overhead_ms_p50": 14.0},
                    "steps_28": {"not_run": "the time budget (240 s) was spent before this step"}},
        "memory": {"tiny": {"weights_gib": 0.001}, "full": {"weights_gib": 31.42},
                   "vram": {"peak_allocated_gib": 38.2}, "host_peak_rss_gib": 3.1},
        "pipeline": {"model": "full", "busy": {"busy_fraction": 0.9951, "jobs": 6, "steps": 10,
                                               "longest_gap_s": 0.021}},
    }
    rows = dict(_script().summary(data))
    assert rows["environment"].startswith("NVIDIA H200 (132 SMs, driver 580.159.04), torch 2.11.0 (CUDA 13.0)")
    assert rows["determinism"] == "tiny: identical; full: identical (in this process only)"
    assert rows["reference"] == "tiny: 11/11 match; full: error (RuntimeError: CUDA out of memory)"
    assert rows["latency"] == ("full model, load 41.5 s, 10 steps p50 5.40 s (1024x1024), not run (the time budget "
                               "(240 s) was spent before this step), engine/bare 1.012, callback overhead p50 14 ms")
    assert rows["memory"] == "tiny weights 0.00 GiB, full weights 31.42 GiB, peak VRAM 38.2 GiB, host RSS 3.1 GiB"
    assert rows["pipeline"] == "busy fraction 0.995 over 6 queued jobs of 10 steps (full model; longest gap 21 ms)"
