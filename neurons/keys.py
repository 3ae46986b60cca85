"""The miner's wallet and hotkey from the --wallet.* flags, with a plain error when the key cannot be read."""

from __future__ import annotations

import os
from typing import Any


def load_hotkey(args: Any) -> tuple[Any, Any]:
    """(wallet, hotkey keypair); a missing or locked key file is an operator error, said in one line."""
    import bittensor as bt

    from kontext.errors import StartupError

    wallet = bt.Wallet(args.wallet_name, args.wallet_hotkey, path=os.path.expanduser(args.wallet_path))
    try:
        return wallet, wallet.hotkey
    except Exception as exc:  # noqa: BLE001 - reported, not raised as a traceback
        raise StartupError(f"cannot load hotkey {args.wallet_name}/{args.wallet_hotkey} from {args.wallet_path}: "
                         f"{exc}") from None
