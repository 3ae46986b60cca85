"""kontext-miner: deterministic FLUX.1-Kontext-dev image editing as a service."""

__version__ = "0.1.0"
