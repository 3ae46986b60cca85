"""Who may call the public door: registered hotkeys, validator permits and stakes, from chain or a file."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    hotkey: str
    stake: float
    validator_permit: bool


@dataclass(frozen=True)
class Blacklist:
    """The blacklist switches, as the subnet template names them."""

    force_validator_permit: bool = True
    allow_non_registered: bool = False


class ValidatorRegistry:
    """A snapshot of the subnet's members, refreshed in the background.

    A failed refresh keeps the last good snapshot (a chain outage must not take the door down)
    and is reported by ``health()``.
    """

    def __init__(self, blacklist: Blacklist, members: Optional[dict[str, Member]] = None, *, source: str = "offline",
                 own_hotkey: Optional[str] = None) -> None:
        """``own_hotkey``: the miner's own, always admitted (priority 0), so its operator can try the miner with
        the wallet they mine with (``kontext-client ... preflight``)."""
        self.blacklist = blacklist
        self.own_hotkey = own_hotkey
        self.members = members or {}
        self.source = source
        self.refreshed_at: Optional[float] = time.time() if members is not None else None
        self.last_error: Optional[str] = None
        self.failed_since: Optional[float] = None

    def refusal(self, hotkey: str) -> Optional[str]:
        """Why ``hotkey`` may not call, or None if it may."""
        if hotkey == self.own_hotkey:
            return None
        member = self.members.get(hotkey)
        if member is None:
            return None if self.blacklist.allow_non_registered else f"hotkey {hotkey} is not registered on the subnet"
        if self.blacklist.force_validator_permit and not member.validator_permit:
            return f"hotkey {hotkey} has no validator permit"
        return None

    def stake(self, hotkey: str) -> float:
        """The caller's job priority: its stake (the operator's own hotkey never jumps the validators' queue)."""
        if hotkey == self.own_hotkey:
            return 0.0
        member = self.members.get(hotkey)
        return member.stake if member else 0.0

    def replace(self, members: dict[str, Member]) -> None:
        self.members = members
        self.refreshed_at = time.time()
        self.last_error, self.failed_since = None, None

    def record_failure(self, error: str) -> None:
        self.last_error = error[:300]
        self.failed_since = self.failed_since or time.time()

    async def refresh_forever(self, fetch: Callable[[], Awaitable[dict[str, Member]]], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.replace(await fetch())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep serving with the last snapshot
                self.record_failure(f"{type(exc).__name__}: {exc}")
                log.warning("metagraph refresh failed, serving with the last snapshot: %s", self.last_error)

    def health(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "members": len(self.members),
            "validators": sum(1 for m in self.members.values() if m.validator_permit),
            "refreshed_at": self.refreshed_at,
            "stale": self.failed_since is not None,
            "last_error": self.last_error,
            "force_validator_permit": self.blacklist.force_validator_permit,
            "allow_non_registered": self.blacklist.allow_non_registered,
        }


def load_offline_members(spec: str) -> dict[str, Member]:
    """Members from a JSON file or an inline list.

    File: ``{"<hotkey>": {"stake": 1000, "validator_permit": true}, ...}``.
    Inline: ``"<hotkey>:<stake>[:nopermit],<hotkey>:<stake>"``.
    """
    path = Path(spec)
    if path.is_file():
        data = json.loads(path.read_text())
        for hotkey in data:
            _check_hotkey(hotkey, f"{path}: {hotkey}")
        return {hotkey: Member(hotkey, float(v.get("stake", 0)), bool(v.get("validator_permit", True)))
                for hotkey, v in data.items()}
    members = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        hotkey, _, rest = item.partition(":")
        stake, _, flag = rest.partition(":")
        _check_hotkey(hotkey, item)
        try:
            members[hotkey] = Member(hotkey, float(stake or 0), flag != "nopermit")
        except ValueError:
            raise ValueError(f"validator entry {item!r}: the stake must be a number") from None
    return members


def _check_hotkey(hotkey: str, item: str) -> None:
    """ValueError naming the entry unless ``hotkey`` is an ss58 address."""
    from bittensor.sp_core import ss58_decode

    try:
        ss58_decode(hotkey)
    except ValueError:
        raise ValueError(f"validator entry {item!r}: {hotkey!r} is not an ss58 address") from None


def members_from_metagraph(metagraph: Any) -> dict[str, Member]:
    return {n.hotkey: Member(n.hotkey, float(n.total_stake), bool(n.validator_permit)) for n in metagraph.neurons}
