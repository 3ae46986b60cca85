"""The GPU benchmark runs on CPU with the tiny model and prints its table (how CI exercises it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_gpu_quick_prints_the_determinism_column(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--quick", "--model", str(tiny_model_dir),
         "--combos", "baseline,first-block-cache", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    header = next(line for line in lines if line.startswith("combo"))
    assert "deterministic" in header and "64px/2steps" in header
    rows = [line for line in lines if line.startswith(("baseline", "first-block-cache"))]
    assert len(rows) == 2 and all(row.rstrip().endswith("yes") for row in rows)
    data = json.loads(out.read_text())
    assert {row["combo"] for row in data["rows"]} == {"baseline", "first-block-cache"}
    assert all(cell["deterministic"] for row in data["rows"] for cell in row["cells"].values())
