"""Every range and default of the edit contract, defined once."""

from __future__ import annotations

# Generation parameters (seed specification: kontext-editing.md, "Parameters").
GUIDANCE_SCALE_DEFAULT = 2.5
GUIDANCE_SCALE_MIN = 1.0
GUIDANCE_SCALE_MAX = 20.0

NUM_INFERENCE_STEPS_DEFAULT = 28
NUM_INFERENCE_STEPS_MIN = 1
NUM_INFERENCE_STEPS_MAX = 100

# torch.Generator.manual_seed accepts any unsigned 64-bit value.
SEED_MIN = 0
SEED_MAX = 2**64 - 1

PROMPT_MAX_CHARS = 4096

# Output size requested by the orchestrator (optional); FLUX packs 2x2 latents of an
# 8x VAE, so each side must be a multiple of 16.
DIMENSION_MULTIPLE = 16
DIMENSION_MIN = 64
DIMENSION_MAX = 2048

# Input images: every recipe scales a long side over INPUT_SCALED_LONG_SIDE down to it (reference-v1 truncating
# each side, kontext-v1 rounding), and diffusers' Kontext pipeline then floors each side of the image to a multiple
# of 16: a side under 16 px there becomes 0 (a ZeroDivisionError, or PIL refusing a 0-px resize). So each side must
# be at least INPUT_SIDE_MIN px, also once scaled: the short side at least 1/64 of a long side over 1024.
INPUT_SIDE_MIN = 16
INPUT_SCALED_LONG_SIDE = 1024

# Identifiers: caller-supplied job ids become file names, so they are restricted to a
# safe alphabet (no path separators, no "..").
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
JOB_ID_PREFIX = "edit-"

CALLBACK_SECRET_MAX_CHARS = 1024
URL_MAX_CHARS = 2048

# Job types the validator asks about on GET /capacity. The name says the GPU the subnet's audit
# miner runs on: byte-identical PNGs are only expected on that card model.
JOB_TYPE_KONTEXT_EDIT = "img-h100_pcie"
"""A FLUX.1-Kontext-dev edit: the job this miner serves."""
JOB_TYPE_FLUX_DEV = "base-h100_pcie"
"""FLUX.1-dev text-to-image: not served by this miner (always answered false)."""
KNOWN_JOB_TYPES = (JOB_TYPE_KONTEXT_EDIT, JOB_TYPE_FLUX_DEV)

# The subnet validator's timing rules for an edit job (docs/subnet.md): a callback arriving
# earlier than this after the job was created, or later than the deadline after dispatch, fails the job.
VALIDATOR_CALLBACK_NOT_BEFORE_SECONDS = 8.0
VALIDATOR_CALLBACK_DEADLINE_SECONDS = 15.0
