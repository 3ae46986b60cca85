"""Determinism switches: environment checks before CUDA, torch settings, seeded CPU noise."""

from __future__ import annotations

import pytest
import torch

from kontext.engine.determinism import (
    DeterminismError,
    configure_torch_like_reference,
    configure_torch_strict,
    ensure_environment,
    pin_threads,
)
from kontext.engine.recipes import get_recipe


def test_wrong_hash_seed_is_refused() -> None:
    with pytest.raises(DeterminismError, match="PYTHONHASHSEED"):
        ensure_environment({"PYTHONHASHSEED": "random"})
    with pytest.raises(DeterminismError, match="PYTHONHASHSEED"):
        ensure_environment({})


def test_cublas_config_is_set_when_missing_and_refused_when_wrong() -> None:
    env = {"PYTHONHASHSEED": "0"}
    ensure_environment(env)
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    ensure_environment({"PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":16:8"})
    with pytest.raises(DeterminismError, match="CUBLAS_WORKSPACE_CONFIG"):
        ensure_environment({"PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":0:0"})


def test_configure_torch_strict_and_like_the_reference() -> None:
    threads = torch.get_num_threads()
    try:
        configure_torch_strict()
        pin_threads(1)
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.get_num_threads() == 1
        configure_torch_like_reference()  # after the strict switches: torch's defaults come back
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def test_kontext_v1_noise_is_on_the_cpu_and_repeatable() -> None:
    recipe = get_recipe("kontext-v1")
    a = torch.randn(4, generator=recipe.seed(42, "cuda"))
    b = torch.randn(4, generator=recipe.seed(42, "cuda"))
    c = torch.randn(4, generator=recipe.seed(43, "cuda"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert recipe.seed(2**64 - 1, "cuda").device.type == "cpu"


def test_entry_point_reexecs_with_hash_seed_zero(tmp_path) -> None:
    import os
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {os.getcwd()!r})\n"
        "from kontext.engine.determinism import reexec_if_needed\n"
        "reexec_if_needed(sys.argv)\n"
        "print(os.environ['PYTHONHASHSEED'], os.environ['CUBLAS_WORKSPACE_CONFIG'], sys.argv[1:])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG")}
    out = subprocess.run([sys.executable, str(script), "--flag"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 :4096:8 ['--flag']"
    bad = subprocess.run([sys.executable, str(script)], env={**env, "PYTHONHASHSEED": "123"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "PYTHONHASHSEED" in bad.stderr


def test_sidecar_refuses_a_wrong_hash_seed_with_a_plain_message(tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONHASHSEED": "random", "DATA_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "kontext.main", "--env-file", os.devnull], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 2 and "cannot start: PYTHONHASHSEED='random'" in run.stderr
    assert "Traceback" not in run.stderr
