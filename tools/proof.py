"""The GPU proof's measurements (scripts/gpu_proof.py), each a JSON-friendly dict.

Models, determinism, the reference comparison, latency, memory; the script decides what runs, in what
order, within its budget."""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tools.bench import percentile, photo_png, synthetic_fit_problem, timed

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_CASES = ROOT / "tests" / "golden" / "cases.in.jsonl"
GIB = 1024**3
DETERMINISM_CASE = "reference/validator-exact-payload"
"""The golden case whose request the determinism runs repeat (its steps may be lowered): the validator's body."""
FULL_SIZE_PAYLOADS = ("reference/validator-exact-payload", "reference/rgb-512")
"""Two validator-like requests for the full-size reference comparison (steps set to the plan's)."""


@dataclass
class Model:
    """One model the proof edits with: the tiny real model (from its files) or the full-size synthetic one."""

    name: str
    """``tiny`` or ``full``."""
    model_path: str
    device: str
    build_s: list[float] = field(default_factory=list)
    engines: dict[str, Any] = field(default_factory=dict)
    """Recipe id -> a loaded KontextEngine; a second recipe's engine shares the first one's pipeline."""

    def engine(self, recipe: str) -> Any:
        """The loaded engine for ``recipe`` (RuntimeError naming the load failure)."""
        from kontext.engine.engine import EngineConfig, EngineState, KontextEngine

        if recipe not in self.engines:
            loaded = next(iter(self.engines.values()), None)
            loader = (lambda dtype, device: loaded.pipe) if loaded is not None else self._loader()
            engine = KontextEngine(EngineConfig(model_path=self.model_path, recipe=recipe, device=self.device,
                                                local_files_only=True), loader=loader)
            engine.load()
            if engine.state is not EngineState.READY:
                raise RuntimeError(f"the {self.name} model's engine did not load: {engine.error}")
            self.engines[recipe] = engine
        return self.engines[recipe]

    def _loader(self) -> Any:
        if self.name != "full":
            return None  # the engine's own from_pretrained
        from tools.synthetic_kontext import FULL, build_synthetic_kontext

        return timed(lambda dtype, device: build_synthetic_kontext(FULL, dtype, device), self.build_s)


def full_size_problem(device: str, copies: int = 1) -> Optional[str]:
    """Why ``copies`` full-size models cannot be built here at once, or None."""
    import torch

    from tools.synthetic_kontext import FULL_PARAMETERS

    free = torch.cuda.mem_get_info()[0] if device.startswith("cuda") else None
    weights = FULL_PARAMETERS * torch.bfloat16.itemsize
    return synthetic_fit_problem(free // copies if free is not None else None, weights, "the full-size model")


def environment(device: str) -> dict[str, Any]:
    """The card and every version that decides the bytes, with the auditor's Python and zlib beside this host's."""
    import torch

    from kontext.engine.environment import against_auditor, pixel_and_png_stack

    stack = pixel_and_png_stack()
    gpu: dict[str, Any] = {"not_run": "no CUDA device (dry run on CPU)"}
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(0)
        gpu = {"name": properties.name, "sm_count": properties.multi_processor_count,
               "memory_gib": round(properties.total_memory / GIB, 1),
               "capability": f"{properties.major}.{properties.minor}",
               "driver": _driver_version()}
    return {"gpu": gpu, "torch": torch.__version__, "cuda": str(torch.version.cuda), "cudnn": stack["cudnn"],
            "diffusers": stack["diffusers"], "transformers": stack["transformers"], "pillow": stack["pillow"],
            "zlib": stack["zlib"], **against_auditor(), "stack": stack, "platform": platform.platform()}


def _driver_version() -> str:
    if shutil.which("nvidia-smi"):
        try:
            answer = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20)
            if answer.returncode == 0 and answer.stdout.strip():
                return answer.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "unknown (nvidia-smi gave none)"


def golden_cases(limit: Optional[int] = None) -> list[Any]:
    """The golden reference-v1 requests (tests/golden/cases.in.jsonl), the first ``limit`` of them."""
    from kontext.conformance import read_cases

    cases = [case for case in read_cases(GOLDEN_CASES).cases if case.recipe == "reference-v1"]
    return cases[:limit] if limit else cases


def case_named(name: str, steps: Optional[int] = None) -> tuple[bytes, Any]:
    """A golden case's input bytes and EditParams (``steps`` replacing its own when given)."""
    from kontext.engine.recipes import EditParams

    case = next(case for case in golden_cases() if case.name == name)
    params = EditParams.from_request(case.request)
    if steps is not None:
        params = dataclasses.replace(params, num_inference_steps=steps)
    assert case.image_file is not None
    return case.image_file.read_bytes(), params


def repeat_in_process(model: Model, steps: int, runs: int = 2) -> dict[str, Any]:
    """The determinism case, ``runs`` times in this process, on the default recipe and profile."""
    engine = model.engine("reference-v1")
    image, params = case_named(DETERMINISM_CASE, steps)
    hashes = [engine.edit(image, params, max_pixels=1 << 26).sha256 for _ in range(runs)]
    return {"case": DETERMINISM_CASE, "steps": steps, "profile": engine.profile, "in_process": hashes}


def fresh_process_hash(model: Model, steps: int) -> str:
    """What ``--fresh-child`` prints for one model: the determinism case's PNG SHA256 in that process."""
    return str(repeat_in_process(model, steps, runs=1)["in_process"][0])


def against_reference(model: Model, cases: list[tuple[str, bytes, Any]]) -> dict[str, Any]:
    """The engine's reference-v1 bytes against the independent reference implementation's (tests/reference_miner.py:
    bf16 and noise from a CUDA generator on a GPU), case by case."""
    import torch

    from tests.reference_miner import ReferenceKontextEditor

    engine = model.engine("reference-v1")
    if model.name == "full":  # no files to load: around the engine's own pipeline (the same weights object)
        reference = ReferenceKontextEditor.around(engine.pipe, device=engine.device)
        source = "the engine's pipeline object (the same weights)"
    else:
        dtype = torch.bfloat16 if model.device.startswith("cuda") else torch.float32
        reference = ReferenceKontextEditor(model.model_path, device=model.device, dtype=dtype)
        source = "its own from_pretrained"
    results = []
    for name, image, params in cases:
        ours = engine.edit(image, params, max_pixels=1 << 26).sha256
        theirs = reference.edit_png(image, prompt=params.prompt, seed=params.seed, guidance_scale=params.guidance_scale,
                                    num_inference_steps=params.num_inference_steps)
        results.append({"case": name, "steps": params.num_inference_steps, "engine": ours,
                        "reference": _sha256(theirs), "match": ours == _sha256(theirs)})
    return {"reference_pipeline": source, "cases": results, "matched": sum(r["match"] for r in results),
            "of": len(results)}


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def edit_latency(model: Model, recipe: str, size: int, steps: int, repeats: int) -> dict[str, Any]:
    """p50 and every run's seconds of the engine's edit of a photo-like ``size`` input."""
    from kontext.engine.recipes import EditParams

    engine = model.engine(recipe)
    image = photo_png(size, size)
    params = EditParams(prompt="Add a red hat to the person", seed=42, guidance_scale=4.0, num_inference_steps=steps,
                        width=size, height=size)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = engine.edit(image, params, max_pixels=1 << 26)
        seconds.append(time.perf_counter() - started)
    return {"steps": steps, "output": f"{out.width}x{out.height}", "p50_s": percentile(seconds, 50), "runs_s": seconds}


def engine_over_bare(model: Model, recipe: str, size: int, steps: int, repeats: int) -> dict[str, Any]:
    """The engine's edit against a bare pipeline call with the same arguments (its p50 over the bare call's)."""
    import torch

    from kontext.engine.recipes import EditParams

    engine = model.engine(recipe)
    image = photo_png(size, size)
    params = EditParams(prompt="Add a red hat to the person", seed=43, guidance_scale=4.0, num_inference_steps=steps,
                        width=size, height=size)
    prepared = engine.recipe.preprocess(image, max_pixels=1 << 26)
    engine_s, bare_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.edit(image, params, max_pixels=1 << 26)
        engine_s.append(time.perf_counter() - started)
        engine.recipe.configure_torch()
        kwargs = engine.recipe.pipeline_kwargs(prepared, params, engine.recipe.seed(params.seed, engine.device))
        started = time.perf_counter()
        with torch.inference_mode():
            engine.pipe(**kwargs)
        bare_s.append(time.perf_counter() - started)
    return {"steps": steps, "engine_p50_s": statistics.median(engine_s), "bare_p50_s": statistics.median(bare_s),
            "ratio": statistics.median(engine_s) / statistics.median(bare_s)}


def load_times(model: Model) -> dict[str, Any]:
    """The model's engine load (weights, placement, warm-up) and, for the synthetic one, its build within it."""
    engine = next(iter(model.engines.values()))
    return {"load_s": engine.load_seconds, "build_s": model.build_s[0] if model.build_s else None}


def memory(models: list[Model]) -> dict[str, Any]:
    """Weights per model, the card's peak (allocated and reserved) over the whole run, the host's peak RSS."""
    import torch

    from kontext.engine.acceleration import model_bytes

    report: dict[str, Any] = {}
    for model in models:
        engine = next(iter(model.engines.values()), None)
        if engine is not None:
            report[model.name] = {"weights_gib": round(model_bytes(engine.pipe) / GIB, 3)}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        report["vram"] = {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
                          "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
                          "free_now_gib": round(free / GIB, 2), "total_gib": round(total / GIB, 2)}
    else:
        report["vram"] = {"not_run": "no CUDA device (dry run on CPU)"}
    report["host_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    return report


def child_result(stdout: str) -> dict[str, str]:
    """The fresh child's last stdout line: model name -> PNG SHA256."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError("the fresh process printed no result")
    return {str(k): str(v) for k, v in json.loads(lines[-1]).items()}
