"""A minimal V14 runtime with the Commitments pallet, so tests run bittensor 11's own SCALE codec offline.

The types follow pallet-commitments (``Data`` with ``None`` and ``Raw0..Raw128`` as ``[u8; n]``,
``CommitmentInfo { fields: BoundedVec<Data> }``, ``Registration { deposit, block, info }``) and the
``NetUid(u16)`` newtype. It is a hand-built model of the chain's types, not its real metadata: it
proves that what we pass is accepted by the encoder bittensor 11 submits with, and gives the exact
shape its decoder hands back for the stored value.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from bittensor._transport.codec import RuntimeCodec

PALLET_INDEX = 18  # Commitments on subtensor


def _compact(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n << 2])
    if n < 1 << 14:
        return ((n << 2) | 1).to_bytes(2, "little")
    return ((n << 2) | 2).to_bytes(4, "little")


def _str(text: str) -> bytes:
    return _compact(len(text)) + text.encode()


def _vec(items: list[bytes]) -> bytes:
    return _compact(len(items)) + b"".join(items)


def _option(item: bytes | None) -> bytes:
    return b"\x00" if item is None else b"\x01" + item


def _field(type_id: int, name: str | None = None) -> bytes:
    return _option(None if name is None else _str(name)) + _compact(type_id) + _option(None) + _vec([])


class _Registry:
    def __init__(self) -> None:
        self.types: list[bytes] = []

    def add(self, type_def: bytes, path: tuple[str, ...] = ()) -> int:
        self.types.append(_vec([_str(p) for p in path]) + _vec([]) + type_def + _vec([]))
        return len(self.types) - 1

    def encoded(self) -> bytes:
        return _vec([_compact(i) + t for i, t in enumerate(self.types)])


def _composite(fields: list[bytes]) -> bytes:
    return b"\x00" + _vec(fields)


def _variant(variants: list[tuple[str, list[bytes], int]]) -> bytes:
    return b"\x01" + _vec([_str(name) + _vec(fields) + bytes([index]) + _vec([]) for name, fields, index in variants])


def _primitive(kind: int) -> bytes:
    return b"\x05" + bytes([kind])


def metadata() -> bytes:
    """The ``meta``-prefixed V14 blob."""
    reg = _Registry()
    u8, u16, u32, u64 = (reg.add(_primitive(kind)) for kind in (3, 4, 5, 6))
    netuid = reg.add(_composite([_field(u16)]), ("subtensor_runtime_common", "NetUid"))
    arrays = [reg.add(b"\x03" + n.to_bytes(4, "little") + _compact(u8)) for n in range(129)]
    data = reg.add(_variant([("None", [], 0)] + [(f"Raw{n}", [_field(arrays[n])], n + 1) for n in range(129)]
                            + [("Sha256", [_field(arrays[32])], 131)]), ("pallet_commitments", "types", "Data"))
    bounded = reg.add(_composite([_field(reg.add(b"\x02" + _compact(data)))]),
                      ("bounded_collections", "bounded_vec", "BoundedVec"))
    info = reg.add(_composite([_field(bounded, "fields")]), ("pallet_commitments", "types", "CommitmentInfo"))
    registration = reg.add(_composite([_field(u64, "deposit"), _field(u32, "block"), _field(info, "info")]),
                           ("pallet_commitments", "types", "Registration"))
    call = reg.add(_variant([("set_commitment", [_field(netuid, "netuid"), _field(info, "info")], 0)]),
                   ("pallet_commitments", "pallet", "Call"))
    account = reg.add(_composite([_field(arrays[32])]), ("sp_core", "crypto", "AccountId32"))
    key = reg.add(b"\x04" + _vec([_compact(netuid), _compact(account)]))
    twox64concat = b"\x05"
    commitment_of = (_str("CommitmentOf") + b"\x00"  # Optional
                     + b"\x01" + _vec([twox64concat, twox64concat]) + _compact(key) + _compact(registration)
                     + _vec([]) + _vec([]))
    pallet = (_str("Commitments") + _option(_str("Commitments") + _vec([commitment_of])) + _option(_compact(call))
              + _option(None) + _vec([]) + _option(None) + bytes([PALLET_INDEX]))
    extrinsic = _compact(u8) + bytes([4]) + _vec([])
    return b"meta" + bytes([14]) + reg.encoded() + _vec([pallet]) + extrinsic + _compact(u8)


@lru_cache(maxsize=1)
def codec() -> RuntimeCodec:
    return RuntimeCodec(metadata(), spec_version=1, transaction_version=1)


def compose(call: Any) -> bytes:
    """SCALE bytes of a generated ``bt.calls`` call, as ``client.submit_call`` would compose it."""
    module, function, params = call
    return codec().compose_call(module, function, params).data


def stored_value(call: Any, *, deposit: int = 0, block: int = 1) -> Any:
    """The ``CommitmentOf`` value the chain keeps for a ``set_commitment`` call, decoded as bittensor 11 reads it."""
    data = compose(call)
    info = data[4:]  # pallet index, call index, netuid (u16)
    entry = codec().storage_entry("Commitments", "CommitmentOf")
    raw = deposit.to_bytes(8, "little") + block.to_bytes(4, "little") + info
    return codec().decode(entry.value_type, raw)
