"""Packaging for kontext-miner (dependencies come from requirements.txt, the one list)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="kontext-miner",
    version="0.1.0",
    description="Deterministic FLUX.1-Kontext-dev image editing miner for Bittensor",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["protocol", "protocol.*", "kontext", "kontext.*", "neurons", "neurons.*"]),
    install_requires=requirements(),
    entry_points={
        "console_scripts": [
            "kontext-sidecar=kontext.main:main",
            "kontext-worker=kontext.worker_main:main",
            "kontext-client=kontext.client.cli:main",
            "kontext-neuron=neurons.miner:main",
            "kontext-commit=neurons.commit:main",
        ]
    },
)
