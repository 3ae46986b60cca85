"""`kontext-client` (alias `kontext-miner`): try a miner from the shell (sidecar or signed door), replay conformance cases."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

from kontext.client import conformance

DEFAULT_SIDECAR = "http://127.0.0.1:8091"


class Transport:
    """The sidecar's HTTP contract, or the public door's synapses signed with a wallet (btauth/1)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.signer: Any = None
        if args.axon:
            if not args.miner_hotkey:
                raise SystemExit("--axon needs --miner-hotkey (the ss58 address the request is signed for)")
            import bittensor as bt

            wallet = bt.Wallet(args.wallet_name, args.wallet_hotkey, path=os.path.expanduser(args.wallet_path))
            self.signer = wallet.hotkey

    def _send(self, method: str, url: str, body: Optional[bytes], headers: dict[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _synapse(self, name: str, payload: dict) -> dict:
        from kontext.client.signing import btauth_headers

        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json",
                   **btauth_headers(self.signer, path=f"/{name}", body=body, receiver=self.args.miner_hotkey)}
        return _ok(*self._send("POST", f"{self.args.axon.rstrip('/')}/{name}", body, headers))

    def submit(self, payload: dict) -> str:
        if self.signer is not None:
            return self._synapse("EditSynapse", payload)["accepted"]["job_id"]
        body = json.dumps(payload).encode()
        reply = _ok(*self._send("POST", f"{self.args.url}/edit", body, {"Content-Type": "application/json"}))
        return reply["job_id"]

    def status(self, job_id: str) -> dict:
        if self.signer is not None:
            return self._synapse("StatusSynapse", {"job_id": job_id})["status"]
        return _ok(*self._send("GET", f"{self.args.url}/edit/status/{job_id}", None, {}))

    def result(self, job_id: str) -> bytes:
        if self.signer is not None:
            return base64.b64decode(self._synapse("ResultSynapse", {"job_id": job_id})["image_b64"])
        status, body = self._send("GET", f"{self.args.url}/edit/result/{job_id}", None, {})
        if status != 200:
            _ok(status, body)
        return body


def _ok(status: int, body: bytes) -> Any:
    try:
        data = json.loads(body)
    except ValueError:
        data = {"message": body[:200].decode(errors="replace")}
    if status >= 400:
        raise SystemExit(f"miner answered {status}: {data.get('message', data)}")
    return data


def _progress_line(status: dict) -> str:
    progress = status.get("progress") or {}
    if status["status"] == "queued":
        return f"queued (position {status.get('queue_position') or '?'})"
    if progress:
        done = int(30 * progress["step"] / progress["total"])
        return f"[{'#' * done}{'.' * (30 - done)}] step {progress['step']}/{progress['total']}"
    return status["status"]


def wait(transport: Transport, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = transport.status(job_id)
        print(f"\r{job_id}: {_progress_line(status):60}", end="", file=sys.stderr, flush=True)
        if status["status"] in ("completed", "failed"):
            print(file=sys.stderr)
            return status
        time.sleep(0.25)
    raise SystemExit(f"\n{job_id} did not finish within {timeout:g}s")


def cmd_edit(args: argparse.Namespace, transport: Transport) -> None:
    payload: dict[str, Any] = {"prompt": args.prompt, "seed": args.seed,
                               "image_b64": base64.b64encode(Path(args.image).read_bytes()).decode()}
    for key in ("guidance_scale", "num_inference_steps", "width", "height", "reference_job_id"):
        if getattr(args, key) is not None:
            payload[key] = getattr(args, key)
    job_id = transport.submit(payload)
    status = wait(transport, job_id, args.timeout)
    if status["status"] == "failed":
        raise SystemExit(f"{job_id} failed: {status.get('error')}")
    save_result(transport, job_id, args.out or f"{job_id}.png")


def save_result(transport: Transport, job_id: str, out: str) -> None:
    png = transport.result(job_id)
    Path(out).write_bytes(png)
    print(json.dumps({"job_id": job_id, "sha256": hashlib.sha256(png).hexdigest(), "path": out}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kontext-client", description=__doc__)
    parser.add_argument("--url", default=DEFAULT_SIDECAR, help=f"sidecar base URL (default {DEFAULT_SIDECAR})")
    parser.add_argument("--axon", help="axon base URL: talk synapses, signed with the wallet below")
    parser.add_argument("--miner-hotkey", help="the miner's ss58 hotkey (with --axon)")
    parser.add_argument("--wallet.name", dest="wallet_name", default="default")
    parser.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    parser.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets")
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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "conformance":  # runs the engine here: no miner to talk to
        raise SystemExit(conformance.run(args))
    args.url = args.url.rstrip("/")
    transport = Transport(args)
    if args.command == "edit":
        cmd_edit(args, transport)
    elif args.command == "status":
        print(json.dumps(transport.status(args.job_id), indent=2))
    else:
        save_result(transport, args.job_id, args.out or f"{args.job_id}.png")


if __name__ == "__main__":
    main()
