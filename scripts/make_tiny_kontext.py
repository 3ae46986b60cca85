#!/usr/bin/env python
"""Build the tiny, randomly initialised FluxKontextPipeline used by run_local.sh and the tests (offline)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", nargs="?", default=str(ROOT / "models" / "tiny-kontext"))
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete model is there")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tools.tiny_kontext import build_tiny_kontext, is_complete

    out_dir = Path(args.out_dir)
    if is_complete(out_dir) and not args.force:
        print(f"[tiny-kontext] {out_dir} is complete; skipping (--force rebuilds)")
        return
    started = time.perf_counter()
    try:
        build_tiny_kontext(out_dir, seed=args.seed)
    except FileExistsError as exc:
        raise SystemExit(f"[tiny-kontext] {exc}") from None
    print(f"[tiny-kontext] wrote {out_dir} in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
