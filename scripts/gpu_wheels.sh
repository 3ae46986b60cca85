#!/usr/bin/env bash
# The wheels the lent GPU machine lacks, for scripts/gpu_proof.py (docs/gpu-proof.md): downloaded here, where
# pip reaches an index, into .whl/ (ignored by git), and carried to that machine with the run tool's
# `carry: [".whl"]`. That machine has no network. Its image (the device tool's KINDS.md) has Python 3.12,
# torch, transformers, huggingface-hub, tokenizers, safetensors, accelerate, sentencepiece, aiohttp, numpy,
# Pillow, packaging, prometheus-client, filelock, regex, requests and httpx, but none of the packages below.
# Each is pinned and fetched with --no-deps, so every one it needs that the image lacks is named here too:
#   diffusers      (filelock, httpx<1, huggingface-hub<2, numpy, regex, requests, safetensors, Pillow: all in the
#                   image; importlib_metadata only on Python < 3.8)
#   pydantic       (annotated-types, pydantic-core, typing-inspection, typing-extensions>=4.16)
#   pydantic-settings (python-dotenv)        ftfy (wcwidth)        aiosqlite (nothing)
# typing-extensions is carried as well, since pydantic needs 4.16 or later; gpu_proof.py installs a carried
# wheel only where the machine lacks that package or has an older version of it. The versions are those of
# constraints/tested.txt's stack, except diffusers: the auditor's pin (constraints/reference.txt).
# Usage: scripts/gpu_wheels.sh [DIR] (default .whl); prints the total size (a device call carries 64 MiB at most).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.whl}"
PYTHON="${PYTHON:-python3}"
PINS=(
  diffusers==0.36.0
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  pydantic-settings==2.16.3
  python-dotenv==1.2.4
  ftfy==6.3.1
  wcwidth==0.9.4
  aiosqlite==0.22.1
)
PLATFORMS=()
for platform in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64; do
  PLATFORMS+=(--platform "$platform")
done
rm -rf "$DEST"
mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" --dest "$DEST" "${PINS[@]}"
count="$(find "$DEST" -type f -name '*.whl' | wc -l)"
if [ "$count" -ne "${#PINS[@]}" ]; then
  echo "expected ${#PINS[@]} wheels in $DEST, found $count" >&2
  exit 1
fi
bytes="$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)"
limit=$((64 * 1024 * 1024))
echo "$count wheels in $DEST: $((bytes / 1024)) KiB (a device call carries at most 64 MiB with the working tree)"
if [ "$bytes" -ge "$limit" ]; then
  echo "over 64 MiB: the device call cannot carry them" >&2
  exit 1
fi
