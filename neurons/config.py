"""Command-line flags of the miner neuron and the commit tool, in bittensor's dotted style: one table over the
settings (neurons/settings.py), so each flag is also a setting of .env."""

from __future__ import annotations

import argparse
from typing import Any, Optional, Sequence

from kontext.flags import Flag, add_flags, env_file_flag, given
from neurons.settings import OFFLINE, NeuronSettings

__all__ = ["CHAIN_FLAGS", "ENDPOINT_FLAGS", "NEURON_FLAGS", "OFFLINE", "add_chain_args", "add_endpoint_args",
           "build_parser", "parse_args", "settings_from"]

CHAIN_FLAGS = (
    Flag("--netuid", "netuid", "subnet uid", int),
    Flag("--subtensor.network", "subtensor_network", f"finney | test | local | ws(s)://endpoint | {OFFLINE} (no "
         "chain: callers from --neuron.validators)"),
    Flag("--subtensor.chain_endpoint", "subtensor_chain_endpoint", "explicit ws(s):// endpoint (overrides network)"),
    Flag("--wallet.name", "wallet_name", "wallet (coldkey) name"),
    Flag("--wallet.hotkey", "wallet_hotkey", "hotkey name"),
    Flag("--wallet.path", "wallet_path", "wallets directory"),
)
ENDPOINT_FLAGS = (
    Flag("--axon.ip", "axon_ip", "bind address of the public door"),
    Flag("--axon.port", "axon_port", "port of the public door: the validator's /edit, /capacity, ... and the "
         "synapses", int),
    Flag("--axon.certfile", "axon_certfile", "PEM certificate chain: serve the door over HTTPS"),
    Flag("--axon.keyfile", "axon_keyfile", "PEM private key of --axon.certfile"),
    Flag("--axon.external_ip", "axon_external_ip", "IP published on chain with ServeAxon"),
    Flag("--axon.external_port", "axon_external_port", "port published on chain", int),
    Flag("--commit.address", "commit_address", "host name (the certificate's) or IPv4 address committed for the "
         "validator (default --axon.external_ip; not IPv6: the validator cannot parse it)"),
    Flag("--commit.port", "commit_port", "port committed for the validator (default --axon.external_port, else "
         "--axon.port)", int),
)
NEURON_FLAGS = (
    Flag("--sidecar.host", "miner_server_host", "sidecar bind address (loopback: anything else requires "
         "signatures on its job routes)"),
    Flag("--sidecar.port", "miner_server_port", "sidecar port", int),
    Flag("--blacklist.force_validator_permit", "blacklist_force_validator_permit",
         "refuse callers without a validator permit", switch=True),
    Flag("--blacklist.allow_non_registered", "blacklist_allow_non_registered",
         "accept hotkeys that are not registered on the subnet", switch=True),
    Flag("--neuron.validators", "neuron_validators", "offline mode: allowed callers, a JSON file "
         "{hotkey: {stake, validator_permit}} or 'HOTKEY:STAKE[:nopermit],...'"),
    Flag("--neuron.metagraph_refresh_seconds", "neuron_metagraph_refresh_seconds",
         "background metagraph refresh", float),
    Flag("--neuron.skip_serve_axon", "neuron_skip_serve_axon", "do not publish ip:port on chain", switch=True),
    Flag("--neuron.skip_commit", "neuron_skip_commit", "do not write the address:port commitment", switch=True),
    Flag("--logging.debug", "log_level", "debug logs", const="DEBUG"),
)


def add_chain_args(parser: argparse.ArgumentParser) -> None:
    """Which chain, subnet and wallet: shared by the miner and kontext-commit."""
    add_flags(parser, CHAIN_FLAGS, NeuronSettings)


def add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    """The public door's address and what is published for validators: shared by the miner and kontext-commit."""
    add_flags(parser, ENDPOINT_FLAGS, NeuronSettings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurons/miner.py",
        description="kontext-miner neuron: serves the validator's routes and the synapses on the public door "
        "(the axon port) and the HTTP contract on a loopback sidecar, from one process. Every flag is also a "
        "setting of the environment or .env (see .env.example); a flag given wins.",
    )
    add_chain_args(parser)
    add_endpoint_args(parser)
    add_flags(parser, NEURON_FLAGS, NeuronSettings)
    env_file_flag(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def settings_from(args: argparse.Namespace, **extra: Any) -> NeuronSettings:
    """The settings: the environment and ``--env-file``, with the flags that were given on top."""
    flags = given(args, (*CHAIN_FLAGS, *ENDPOINT_FLAGS, *NEURON_FLAGS))
    return NeuronSettings.load(getattr(args, "env_file", ".env"), **flags, **extra)
