"""kontext-commit: read or write the address:port commitment the subnet's validator discovers miners by."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python neurons/commit.py` as well as `python -m neurons.commit`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neurons.chain import BittensorChain, Chain, ChainError, ensure_commitment, set_commitment_call  # noqa: E402
from neurons.commitment import CommitmentError, commitment_text, endpoint_problem, validator_url  # noqa: E402
from neurons.config import OFFLINE, add_chain_args, add_endpoint_args, settings_from  # noqa: E402
from kontext.flags import env_file_flag  # noqa: E402
from neurons.keys import load_hotkey  # noqa: E402
from kontext.client.oneline import OneLineParser, one_line, run_in_one_line  # noqa: E402
from kontext.errors import StartupError  # noqa: E402

CHAIN_READ_TIMEOUT_S = 30.0
"""How long a dry run waits for the chain before it says what it would write without it."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="kontext-commit",
        description="Read or write the address:port commitment (Commitments pallet) the subnet's validator "
        "discovers miners by. The miner writes it on start; this tool checks or fixes it by hand.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    read = commands.add_parser("read", help="print the subnet's commitments and this hotkey's own")
    commit = commands.add_parser("commit", help="write this hotkey's commitment if it differs from the chain's")
    commit.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="print the commitment text and the exact call that would be submitted; write nothing "
                        "(needs no chain, nor the coldkey: the chain is read only where reachable)")
    for sub in (read, commit):
        add_chain_args(sub)
        add_endpoint_args(sub)
        env_file_flag(sub)
    return parser


def _verdict(text: str) -> str:
    problem = endpoint_problem(text)
    return f"ok {validator_url(text)}" if problem is None else f"UNUSABLE: {problem}"


async def read(chain: Chain, *, netuid: int, hotkey: str) -> None:
    """Print every commitment the validator can read on ``netuid``, then ``hotkey``'s own."""
    texts = await chain.commitments(netuid)
    print(f"netuid {netuid}: {len(texts)} commitment(s) the validator can read")
    for other, text in sorted(texts.items()):
        print(f"{other}  {text!r}  {_verdict(text)}")
    own = texts.get(hotkey)
    print(f"this hotkey {hotkey}: " + ("no commitment" if own is None else f"{own!r}  {_verdict(own)}"))


async def dry_run(args: argparse.Namespace, *, chain: Optional[Chain] = None) -> None:
    """Print the commitment and the exact extrinsic call, with what the chain holds now where it can be read."""
    settings = settings_from(args)
    network = settings.chain
    try:
        text = commitment_text(*settings.commit_endpoint())
    except CommitmentError as exc:
        raise SystemExit(f"commit: {exc}") from None
    wallet, hotkey = load_hotkey(settings)
    if network is None:
        previous, why = None, f"not read: --subtensor.network {OFFLINE}"
    else:
        chain = chain or BittensorChain(str(network), wallet)
        try:
            previous = await asyncio.wait_for(chain.commitment(settings.netuid, hotkey.ss58_address), CHAIN_READ_TIMEOUT_S)
            why = ""
        except Exception as exc:  # noqa: BLE001 - a dry run goes on without the chain, and says so
            previous, why = None, f"not read: chain {network} unreachable: {type(exc).__name__}: {one_line(exc)}"
        finally:
            await chain.close()
    print(f"netuid {settings.netuid}, hotkey {hotkey.ss58_address}: ", end="")
    if previous == text:
        print(f"commitment {text!r} is already on chain; nothing written")
        return
    print(f"dry run: would write commitment {text!r} (on chain now: {why or repr(previous)}); nothing written")
    call = set_commitment_call(settings.netuid, text)
    print(f"would submit {call.module}.{call.function}({call.params}) signed by the hotkey {hotkey.ss58_address}")


async def run(args: argparse.Namespace, *, chain: Optional[Chain] = None) -> None:
    """Check the flags, load the hotkey, then read or commit; errors end as one plain line."""
    if args.command == "commit" and args.dry_run:
        return await dry_run(args, chain=chain)
    settings = settings_from(args)
    network = settings.chain
    if network is None:
        raise SystemExit(f"--subtensor.network {OFFLINE} has no chain to read or write commitments on")
    try:
        endpoint = settings.commit_endpoint() if args.command == "commit" else None
    except CommitmentError as exc:
        raise SystemExit(f"commit: {exc}") from None
    wallet, hotkey = load_hotkey(settings)
    chain = chain or BittensorChain(network, wallet)
    try:
        if endpoint is None:
            await read(chain, netuid=settings.netuid, hotkey=hotkey.ss58_address)
        else:
            outcome = await ensure_commitment(chain, netuid=settings.netuid, hotkey=hotkey.ss58_address,
                                              address=endpoint[0], port=endpoint[1])
            print(f"netuid {settings.netuid}, hotkey {hotkey.ss58_address}: {outcome}")
    except (ChainError, CommitmentError) as exc:
        raise SystemExit(f"{args.command}: {exc}") from None
    finally:
        await chain.close()


def main(argv: Optional[Sequence[str]] = None, *, chain: Optional[Chain] = None) -> None:
    """Every error, a bad flag included, ends as one line on stderr and a non-zero exit."""
    args = build_parser().parse_args(argv)

    def body() -> None:
        try:
            asyncio.run(run(args, chain=chain))
        except StartupError as exc:  # the hotkey cannot be read
            raise SystemExit(str(exc)) from None

    run_in_one_line("kontext-commit", body)


if __name__ == "__main__":
    main()
