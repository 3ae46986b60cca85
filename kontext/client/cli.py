"""`kontext-client`: try a miner from the shell (the sidecar, or the signed public door), check it as the subnet's
validator would (`preflight`), and compare its bytes with the engine's or another miner's (`conformance`).
Every error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from kontext.client import conformance
from kontext.client.http import Http
from kontext.client.miner import Miner, PlainMiner, SynapseMiner, show_progress, wait
from kontext.client.oneline import ClientError, OneLineParser, run_in_one_line
from neurons.config import OFFLINE, add_chain_args, settings_from

PROG = "kontext-client"
DEFAULT_SIDECAR = "http://127.0.0.1:8091"


def load_signer(args: argparse.Namespace) -> Any:
    """The wallet's hotkey keypair (the coldkey is never read); one line when it cannot be loaded."""
    from kontext.errors import StartupError
    from neurons.keys import load_hotkey

    try:
        return load_hotkey(settings_from(args))[1]  # the wallet flags over WALLET_* of the environment and .env
    except StartupError as exc:
        raise ClientError(str(exc)) from None


def miner_hotkey(args: argparse.Namespace) -> str:
    if not args.miner_hotkey:
        raise ClientError("--axon needs --miner-hotkey (the miner's ss58 hotkey: requests are signed for it)")
    return str(args.miner_hotkey)


def this_miner(args: argparse.Namespace, http: Http, *, synapses: bool) -> Miner:
    """The miner named by the flags: the sidecar (--url), or the public door (--axon) signed with the wallet,
    through its synapses (btauth/1) or its HTTP routes (Epistula, as the validator)."""
    if not args.axon:
        return PlainMiner(http, args.url)
    receiver = miner_hotkey(args)
    signer = load_signer(args)
    if synapses:
        return SynapseMiner(http, args.axon, signer=signer, receiver=receiver)
    return PlainMiner(http, args.axon, signer=signer, receiver=receiver)


def cmd_edit(args: argparse.Namespace, miner: Miner) -> None:
    import base64

    try:
        image = Path(args.image).read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read the input image {args.image}: {exc.strerror or exc}") from None
    payload: dict[str, Any] = {"prompt": args.prompt, "seed": args.seed, "image_b64": base64.b64encode(image).decode()}
    for key in ("guidance_scale", "num_inference_steps", "width", "height", "reference_job_id"):
        if getattr(args, key) is not None:
            payload[key] = getattr(args, key)
    job_id = miner.submit(payload)
    status = wait(miner, job_id, args.timeout, show_progress)
    if status["status"] == "failed":
        raise ClientError(f"{job_id} failed: {status.get('error')}")
    save_result(miner, job_id, args.out or f"{job_id}.png")


def save_result(miner: Miner, job_id: str, out: str) -> None:
    png = miner.result(job_id)
    try:
        Path(out).write_bytes(png)
    except OSError as exc:
        raise ClientError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(json.dumps({"job_id": job_id, "sha256": hashlib.sha256(png).hexdigest(), "path": out}))


def cmd_preflight(args: argparse.Namespace, http: Http) -> int:
    from kontext.client.preflight import ChainTarget, Preflight

    if not args.axon:
        raise ClientError("preflight needs --axon https://HOST:PORT (the address validators reach) and "
                          "--miner-hotkey")
    receiver = miner_hotkey(args)
    chain, why = None, "no --subtensor.network given: the commitment was not read"
    if args.subtensor_network is not None or args.subtensor_chain_endpoint:
        settings = settings_from(args)
        if settings.chain is None:
            why = f"--subtensor.network {OFFLINE}: no chain to read the commitment from"
        else:
            chain = ChainTarget(settings.chain, settings.netuid)
    preflight = Preflight(axon=args.axon, miner_hotkey=receiver, keypair=load_signer(args), http=http,
                          image_url=args.image_url, callback_url=args.callback_url, chain=chain, chain_skip=why)
    return preflight.run(sys.stdout)


def cmd_compare(args: argparse.Namespace, http: Http) -> int:
    from kontext.client.compare import compare, load
    from kontext.conformance import CaseError

    try:
        cases = load(args.cases)
    except (OSError, CaseError) as exc:
        print(f"{PROG}: cannot read cases: {exc}", file=sys.stderr)
        return 2
    this = this_miner(args, http, synapses=False)
    return compare(cases, this, PlainMiner(http, args.against), names=(args.axon or args.url, args.against),
                   timeout=args.timeout, out=sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__)
    parser.add_argument("--url", default=DEFAULT_SIDECAR, help=f"sidecar base URL (default {DEFAULT_SIDECAR})")
    parser.add_argument("--axon", help="the public door's base URL (https://HOST:PORT): requests are signed with "
                        "the wallet below")
    parser.add_argument("--miner-hotkey", help="the miner's ss58 hotkey (with --axon)")
    parser.add_argument("--cacert", help="PEM file of a private CA to trust besides the system's (a test door)")
    add_chain_args(parser)  # the wallet flags, and the chain preflight reads the commitment from (none unless given)
    commands = parser.add_subparsers(dest="command", required=True)
    edit = commands.add_parser("edit", help="submit an edit, wait with progress, save the PNG, print its sha256")
    edit.add_argument("image", help="input PNG/JPEG file")
    edit.add_argument("--prompt", required=True)
    edit.add_argument("--seed", type=int, required=True)
    edit.add_argument("--guidance-scale", dest="guidance_scale", type=float)
    edit.add_argument("--steps", dest="num_inference_steps", type=int)
    edit.add_argument("--width", type=int)
    edit.add_argument("--height", type=int)
    edit.add_argument("--reference-job-id", dest="reference_job_id")
    edit.add_argument("--out", help="where to save the PNG (default <job_id>.png)")
    edit.add_argument("--timeout", type=float, default=300)
    status = commands.add_parser("status", help="print a job's status record")
    status.add_argument("job_id")
    result = commands.add_parser("result", help="save a finished job's PNG and print its sha256")
    result.add_argument("job_id")
    result.add_argument("--out")
    conformance.add_parser(commands)
    preflight = commands.add_parser(
        "preflight", help="play the subnet's validator against the miner at --axon (TLS, /, /check, /capacity, "
        "a signed /edit, its timing, /sync/edit, an unsigned /edit, the chain commitment): one line per check; "
        "exit 0 when all pass")
    preflight.add_argument("--image-url", help="public https URL of an input image, as the validator sends "
                           "(default: a generated image, sent inline as image_b64)")
    preflight.add_argument("--callback-url", help="a public receiver for the job's callback (default: none)")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "conformance" and not args.against:  # runs the engine here: no miner to talk to
        return conformance.run(args)
    args.url = args.url.rstrip("/")
    http = Http(args.cacert)
    if args.command == "conformance":
        return cmd_compare(args, http)
    if args.command == "preflight":
        return cmd_preflight(args, http)
    miner = this_miner(args, http, synapses=True)
    if args.command == "edit":
        cmd_edit(args, miner)
    elif args.command == "status":
        print(json.dumps(miner.status(args.job_id), indent=2))
    else:
        save_result(miner, args.job_id, args.out or f"{args.job_id}.png")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    run_in_one_line(PROG, lambda: run(args))


if __name__ == "__main__":
    main()
