"""The GPU benchmark runs on CPU with the tiny and the quick synthetic model and prints its table (CI)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.in_process import process_state_restored

ROOT = Path(__file__).resolve().parents[2]


def _run_in_process(script: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a script's ``main()`` in this process (the import of torch and diffusers is paid once per worker, not
    per script)."""
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), ROOT / "scripts" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with process_state_restored():  # the script configured logging for itself
        module.main()


def test_bench_gpu_quick_prints_the_determinism_column(tiny_model_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bench.json"
    _run_in_process("bench_gpu.py", ["--quick", "--model", str(tiny_model_dir), "--combos", "baseline,first-block-cache",
                                     "--json", str(out)], monkeypatch)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("combo"))
    assert "deterministic" in header and "64px/2steps" in header
    rows = [line for line in lines if line.startswith(("baseline", "first-block-cache"))]
    assert len(rows) == 2 and all(row.rstrip().endswith("yes") for row in rows)
    data = json.loads(out.read_text())
    assert {row["combo"] for row in data["rows"]} == {"baseline", "first-block-cache"}
    assert all(cell["deterministic"] for row in data["rows"] for cell in row["cells"].values())


def _bench(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)


class _Restarted(Exception):
    """Raised where the interpreter would have been replaced."""


def test_bench_gpu_synthetic_quick_reexecs_builds_through_the_engine_and_prints(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Started without PYTHONHASHSEED, the bench asks to start again with 0 (``os.execve``, caught here: what the new
    interpreter then does is tested by test_determinism's probe); started with it, it runs. Both in this process."""
    out = tmp_path / "bench.json"
    argv = ["--synthetic-full", "--quick", "--device", "cpu", "--combos", "baseline", "--json", str(out)]
    restarts: list[tuple[str, list[str], dict[str, str]]] = []

    def execve(path: str, args: list[str], env: dict[str, str]) -> None:
        restarts.append((path, args, env))
        raise _Restarted

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with pytest.raises(_Restarted):
        _run_in_process("bench_gpu.py", argv, monkeypatch)
    ((path, args, env),) = restarts
    assert path == sys.executable and args[-len(argv):] == argv
    assert env["PYTHONHASHSEED"] == "0" and env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and not out.exists()
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _run_in_process("bench_gpu.py", argv, monkeypatch)
    lines = capsys.readouterr().out.splitlines()
    assert "model synthetic:quick (random weights)" in lines[0]
    header = next(line for line in lines if line.startswith("combo"))
    assert all(column in header for column in ("load (build)", "64px/2steps", "peak VRAM", "deterministic"))
    row = next(line for line in lines if line.startswith("baseline"))
    assert re.search(r" \d+\.\ds \(\d+\.\ds\) +\d+\.\d{3}s/\d+\.\d{3}s \(1\.00x\) +n/a \(cpu\) +yes$", row), row
    data = json.loads(out.read_text())
    (combo,) = data["rows"]
    assert data["model"] == "synthetic:quick" and combo["memory_mode"] == "gpu" and "error" not in combo
    assert 0 < combo["build_s"] <= combo["load_s"]
    assert list(combo["cells"]) == ["64px/2steps"] and combo["cells"]["64px/2steps"]["deterministic"] is True


@pytest.mark.parametrize("args, hash_seed, message, code", [
    (("--synthetic-full", "--device", "cpu"), "0",  # the full size needs a GPU: refused before anything is built
     "--synthetic-full builds FLUX.1-Kontext-dev at full size on a CUDA GPU in bf16 and needs about 37 GiB free", 1),
    (("--synthetic-full", "--quick"), "1", "cannot start: PYTHONHASHSEED='1'", 2),  # start-up refusals exit 2
])
def test_bench_gpu_refuses_with_one_plain_line(args: tuple[str, ...], hash_seed: str, message: str, code: int,
                                                tmp_path: Path) -> None:
    run = _bench(*args, "--json", str(tmp_path / "bench.json"), env={**os.environ, "PYTHONHASHSEED": hash_seed})
    assert run.returncode == code and run.stdout == ""
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(message) and "Traceback" not in run.stderr
    assert not (tmp_path / "bench.json").exists()


def test_synthetic_fit_problem_names_the_shortfall() -> None:
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    weights = 31 * 1024**3
    assert bench.synthetic_fit_problem(79 * 1024**3, weights) is None
    small = bench.synthetic_fit_problem(24 * 1024**3, weights)
    assert small is not None and small.endswith("this GPU has 24.0 GiB free") and "\n" not in small
    assert "about 37 GiB free" in small and "31.0 GiB of weights" in small
    assert "no CUDA GPU" in (bench.synthetic_fit_problem(None, weights) or "")


def test_bench_service_refuses_a_wrong_hash_seed_in_one_plain_line() -> None:
    """With PYTHONHASHSEED unset the script re-executes itself; with another value it says so, no traceback."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_service.py"), "--jobs", "1"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONHASHSEED": "1"})
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "cannot start: PYTHONHASHSEED='1'" in run.stderr


def test_bench_scale_quick_prints_both_figures(tiny_model_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "scale.json"
    _run_in_process("bench_scale.py", ["--quick", "--model", str(tiny_model_dir), "--json", str(out)], monkeypatch)
    printed = capsys.readouterr().out
    assert re.search(r"1 worker [\d.]+ jobs/s, 2 workers [\d.]+ jobs/s, ratio [\d.]+", printed), printed
    assert re.search(r"SQLite p50 [\d.]+ ms / p95 [\d.]+ ms; Redis p50 [\d.]+ ms", printed), printed
    figures = json.loads(out.read_text())
    assert figures["ratio"] > 0 and figures["redis_submit_to_start_ms"]["p95"] >= figures["redis_submit_to_start_ms"]["p50"]


def test_bench_scale_busy_prints_the_engine_busy_fraction_of_a_queue(tiny_model_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """In process (the figure's own code path), on the fewest, smallest jobs: 2 of 1 step at 64x64."""
    import argparse

    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "scripts" / "bench_scale.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "busy.json"
    bench.busy(str(tiny_model_dir), argparse.Namespace(recipe="kontext-v1", size=64, jobs=2, steps=1, json=out))
    printed = capsys.readouterr().out
    assert "recipe kontext-v1, 64x64 input, 1 steps, 2 queued jobs (2 completed)" in printed
    assert re.search(r"engine busy fraction [01]\.\d{3} \(pipeline [\d.]+ s of [\d.]+ s; longest gap \d+ ms", printed)
    figures = json.loads(out.read_text())
    assert figures["pipeline_calls"] == 2 and 0 < figures["busy_fraction"] <= 1
