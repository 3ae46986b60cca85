"""Command-line flags of the miner neuron and the commit tool, in bittensor's dotted style."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

from neurons.commitment import CommitmentError

OFFLINE = "offline"
DEFAULT_AXON_PORT = 8901
"""The public door's port (the axon port); 8091 stays the local sidecar's."""


def add_chain_args(parser: argparse.ArgumentParser) -> None:
    """Which chain, subnet and wallet: shared by the miner and kontext-commit."""
    add = parser.add_argument
    add("--netuid", type=int, default=11, help="subnet uid (default 11)")
    add("--subtensor.network", dest="network", default="finney",
        help=f"finney | test | local | ws(s)://endpoint | {OFFLINE} (no chain: validators from --neuron.validators)")
    add("--subtensor.chain_endpoint", dest="chain_endpoint", help="explicit ws(s):// endpoint (overrides network)")
    add("--wallet.name", dest="wallet_name", default="default")
    add("--wallet.hotkey", dest="wallet_hotkey", default="default")
    add("--wallet.path", dest="wallet_path", default=str(Path("~/.bittensor/wallets")))


def add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    """The public door's address and what is published for validators: shared by the miner and kontext-commit."""
    add = parser.add_argument
    add("--axon.ip", dest="axon_ip", default="0.0.0.0", help="bind address of the public door (default 0.0.0.0)")
    add("--axon.port", dest="axon_port", type=int, default=DEFAULT_AXON_PORT,
        help=f"port of the public door: the validator's /edit, /capacity, ... and the synapses "
        f"(default {DEFAULT_AXON_PORT})")
    add("--axon.certfile", dest="axon_certfile", help="PEM certificate chain: serve the door over HTTPS (AXON_CERTFILE)")
    add("--axon.keyfile", dest="axon_keyfile", help="PEM private key of --axon.certfile (AXON_KEYFILE)")
    add("--axon.external_ip", dest="axon_external_ip", help="IP published on chain (default: --axon.ip if public)")
    add("--axon.external_port", dest="axon_external_port", type=int, help="port published on chain")
    add("--commit.address", dest="commit_address",
        help="host name or IPv4 address committed for the validator (default --axon.external_ip; not IPv6: "
        "the validator cannot parse it)")
    add("--commit.port", dest="commit_port", type=int,
        help="port committed for the validator (default --axon.external_port, else --axon.port)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurons/miner.py",
        description="kontext-miner neuron: serves the validator's routes and the synapses on the public door "
        "(the axon port) and the HTTP contract on the sidecar, from one process. Service settings come from "
        "the environment and .env (see .env.example).",
    )
    add_chain_args(parser)
    add_endpoint_args(parser)
    add = parser.add_argument
    add("--sidecar.host", dest="sidecar_host", help="sidecar bind address (MINER_SERVER_HOST)")
    add("--sidecar.port", dest="sidecar_port", type=int, help="sidecar port (MINER_SERVER_PORT, default 8091)")
    add("--blacklist.force_validator_permit", dest="force_validator_permit",
        action=argparse.BooleanOptionalAction, default=True,
        help="refuse callers without a validator permit (default on)")
    add("--blacklist.allow_non_registered", dest="allow_non_registered", action="store_true",
        help="accept hotkeys that are not registered on the subnet (default off)")
    add("--neuron.validators", dest="validators",
        help="offline mode: allowed callers, a JSON file {hotkey: {stake, validator_permit}} or "
        "'HOTKEY:STAKE[:nopermit],...'")
    add("--neuron.metagraph_refresh_seconds", dest="metagraph_refresh", type=float, default=300.0)
    add("--neuron.skip_serve_axon", dest="skip_serve_axon", action="store_true",
        help="do not publish ip:port on chain (e.g. when it is managed elsewhere)")
    add("--neuron.skip_commit", dest="skip_commit", action="store_true",
        help="do not write the address:port commitment validators discover miners by")
    add("--env-file", dest="env_file", default=".env", help="dotenv file with the service settings")
    add("--logging.debug", dest="debug", action="store_true", help="debug logging")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def chain_network(args: Any) -> Optional[str]:
    """The network name or endpoint to connect to; None for ``--subtensor.network offline`` (no chain)."""
    if args.network == OFFLINE and not args.chain_endpoint:
        return None
    return str(args.chain_endpoint or args.network)


def commit_endpoint(args: Any) -> tuple[str, int]:
    """The address and port to commit, from --commit.* with their --axon.* defaults."""
    address = args.commit_address or args.axon_external_ip
    if not address:
        raise CommitmentError("no address to commit: set --commit.address (or --axon.external_ip) to the public "
                              "host name or IPv4 address validators should reach")
    if args.commit_port is not None:  # as given, so a wrong --commit.port is refused rather than replaced
        return address, args.commit_port
    return address, args.axon_external_port or args.axon_port
