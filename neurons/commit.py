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
from neurons.commitment import CommitmentError, endpoint_problem, validator_url  # noqa: E402
from neurons.config import OFFLINE, add_chain_args, add_endpoint_args, settings_from  # noqa: E402
from kontext.flags import env_file_flag  # noqa: E402
from neurons.keys import load_hotkey  # noqa: E402
from kontext.errors import StartupError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kontext-commit",
        description="Read or write the address:port commitment (Commitments pallet) the subnet's validator "
        "discovers miners by. The miner writes it on start; this tool checks or fixes it by hand.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    read = commands.add_parser("read", help="print the subnet's commitments and this hotkey's own")
    commit = commands.add_parser("commit", help="write this hotkey's commitment if it differs from the chain's")
    commit.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="print exactly what would be written; write nothing")
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


async def run(args: argparse.Namespace, *, chain: Optional[Chain] = None) -> None:
    """Check the flags, load the hotkey, then read or commit; errors end as one plain line."""
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
                                              address=endpoint[0], port=endpoint[1], dry_run=args.dry_run)
            print(f"netuid {settings.netuid}, hotkey {hotkey.ss58_address}: {outcome}")
            if outcome.action == "dry-run":
                module, function, params = set_commitment_call(settings.netuid, outcome.text)
                print(f"would submit {module}.{function}({params}) signed by the hotkey")
    except (ChainError, CommitmentError) as exc:
        raise SystemExit(f"{args.command}: {exc}") from None
    finally:
        await chain.close()


def main(argv: Optional[Sequence[str]] = None, *, chain: Optional[Chain] = None) -> None:
    try:
        asyncio.run(run(build_parser().parse_args(argv), chain=chain))
    except StartupError as exc:  # the hotkey cannot be read
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
