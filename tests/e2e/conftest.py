"""The neuron as the README starts it, for the tests that play the validator against it (its own calls, and
``kontext-client preflight``): one process, started once per session by whichever test worker needs it."""

from __future__ import annotations

import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import trustme
from bittensor.sp_core import Keypair

from tests.e2e.servers import REPO_ROOT, NeuronProcess
from tools.bench import pattern_png
from tests.e2e.validator import ImageHost, Validator, ValidatorCallbacks

VALIDATOR = Keypair.create_from_uri("//OrchestratorValidator")


@dataclass
class Subnet:
    neuron: NeuronProcess
    miner_hotkey: str
    other_hotkey: str
    """A hotkey of the same wallets folder that is not the miner's (preflight must fail against it)."""
    wallet_flags: list[str]
    """The miner's own wallet, as flags of the client tools."""
    ca_file: Path
    server_ssl: ssl.SSLContext
    """For the test's own HTTPS servers (the validator's callback receiver, the image host), same CA."""
    validator: Validator
    callbacks: ValidatorCallbacks
    images: ImageHost


@pytest.fixture(scope="session")
def readme_neuron(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Subnet]:
    """``.env`` copied from ``.env.example`` (so every default: the subnet profile), offline, HTTPS with a throwaway
    CA's certificate for 127.0.0.1 only, the commitment's address 127.0.0.1, one permitted validator."""
    import bittensor as bt

    home = tmp_path_factory.mktemp("readme-neuron")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, ca_file = home / "door.pem", home / "door.key", home / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(ca_file))
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ssl)
    wallets = home / "wallets"
    miner = bt.Wallet("miner", "default", path=str(wallets)).create_new_hotkey(use_password=False, suppress=True)
    other = bt.Wallet("other", "default", path=str(wallets)).create_new_hotkey(use_password=False, suppress=True)
    env_file = home / ".env"
    shutil.copy(REPO_ROOT / ".env.example", env_file)
    neuron = NeuronProcess(
        tiny_model_dir, home / "data", wallet_path=wallets, validators=f"{VALIDATOR.ss58_address}:4000",
        extra_args=["--axon.certfile", str(certfile), "--axon.keyfile", str(keyfile), "--commit.address", "127.0.0.1"],
        extra_env={"SSL_CERT_FILE": str(ca_file)}, recipe=None, env_file=str(env_file),  # reference-v1
    ).start()
    miner_hotkey = miner.hotkey.ss58_address
    subnet = Subnet(neuron, miner_hotkey, other.hotkey.ss58_address, ["--wallet.name", "miner", "--wallet.path",
                    str(wallets)], ca_file, server_ssl, Validator(VALIDATOR, miner_hotkey, neuron.axon_url, str(ca_file)),
                    ValidatorCallbacks(server_ssl).start(), ImageHost(server_ssl, {"person.png": pattern_png()}))
    try:
        yield subnet
    finally:
        neuron.stop()
        subnet.callbacks.stop()
        subnet.images.stop()
