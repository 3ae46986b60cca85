"""The address:port commitment both ways: what we write, through bittensor 11's codec, read back the validator's way."""

from __future__ import annotations

from typing import Optional

import bittensor as bt
import pytest

from neurons.commitment import (
    MAX_RAW_BYTES,
    CommitmentError,
    commitment_info,
    commitment_text,
    endpoint_problem,
    validator_text,
    validator_url,
)
from tests.commitments_runtime import PALLET_INDEX, compose, stored_value

LONGEST = "a" * 63 + "." + "b" * 62  # with ":1", exactly 128 bytes


def test_one_raw_field_of_the_exact_length() -> None:
    assert commitment_info("1.2.3.4:8901") == {"fields": [{"Raw12": b"1.2.3.4:8901"}]}


@pytest.mark.parametrize("address, port", [("1.2.3.4", 8901), ("miner.example.com", 443), ("localhost", 1),
                                           (LONGEST, 1)])
def test_bittensor_encoder_takes_it_and_the_validator_reads_it_back(address: str, port: int) -> None:
    text = commitment_text(address, port)
    call = bt.calls.Commitments.set_commitment(netuid=11, info=commitment_info(text))
    size = len(text)
    # pallet, call, NetUid (u16 LE), one field, Data::Raw<size> (variant index size + 1), the bytes
    assert compose(call) == bytes([PALLET_INDEX, 0, 11, 0, 1 << 2, size + 1]) + text.encode()
    value = stored_value(call)
    assert validator_text(value) == text
    assert endpoint_problem(text) is None
    assert validator_url(text) == f"https://{address}:{port}"
    assert size <= MAX_RAW_BYTES


def the_validators_reading(value: dict) -> Optional[str]:
    """What the subnet's validator reads from one decoded ``CommitmentOf`` value, as its code does it
    (subnet.md §1; orchestrator/clients/subnet_state_client.py): ``info.fields`` must be a sequence whose
    first item is a tuple holding a dict; that dict's first ``Raw*`` key holds a non-empty sequence whose
    first item is the sequence of byte values; each byte becomes one character. Anything else: nothing."""
    fields = value.get("info", {}).get("fields", ())
    if not (fields and isinstance(fields[0], tuple) and isinstance(fields[0][0], dict)):
        return None
    raw = fields[0][0]
    key = next((k for k in raw if str(k).startswith("Raw")), None)
    if key is None or not raw[key] or not isinstance(raw[key], (list, tuple)):
        return None
    numbers = raw[key][0]
    return "".join(chr(int(x)) for x in numbers) if isinstance(numbers, (list, tuple)) else None


def as_the_validators_decoder_gives_it(chain_bytes: bytes) -> dict:
    """The ``CommitmentOf`` value of a ``set_commitment`` call's info bytes, in the shape the validator's
    SCALE decoder hands its code: one tuple per field, each Data variant a one-key dict whose value is a
    1-tuple wrapping the ``[u8; n]`` as a tuple of ints."""
    count, rest = chain_bytes[0] >> 2, chain_bytes[1:]  # compact field count (< 64)
    fields = []
    for _ in range(count):
        size = rest[0] - 1  # Data::Raw<n> is variant n + 1
        fields.append(({f"Raw{size}": (tuple(rest[1:1 + size]),)},))
        rest = rest[1 + size:]
    return {"deposit": 0, "block": 1, "info": {"fields": tuple(fields)}}


@pytest.mark.parametrize("address, port", [("1.2.3.4", 8901), ("miner.example.com", 8443)])
def test_what_is_written_reads_back_the_validators_way(address: str, port: int) -> None:
    """Both ways: the call we submit, SCALE-encoded by bittensor 11, decoded into the validator's shape and
    read by the validator's logic, is exactly address:port; our own reader agrees on that shape too."""
    text = commitment_text(address, port)
    call = bt.calls.Commitments.set_commitment(netuid=11, info=commitment_info(text))
    value = as_the_validators_decoder_gives_it(compose(call)[4:])  # after pallet, call, netuid
    assert the_validators_reading(value) == text
    assert validator_text(value) == text
    address_read, port_read = the_validators_reading(value).split(":", 1)  # type: ignore[union-attr]
    assert (address_read, port_read) == (address, str(port))


TEXT = b"1.2.3.4:8901"


@pytest.mark.parametrize("fields", [
    (({"Raw12": (tuple(TEXT),)},),),  # the validator's decoder: tuple of tuples, ints in a 1-tuple
    (({"Raw12": TEXT},),),  # tuple of tuples, bytes
    (({"Raw12": "0x" + TEXT.hex()},),),  # ... 0x-hex payload
    (({"Raw12": tuple(TEXT)},),),  # ... tuple of ints
    [{"Raw12": "0x" + TEXT.hex()}],  # bittensor 11's decoder: flat list, 0x-hex
    [[{"Raw12": TEXT}]],  # the v9 SDK's input form
])
def test_validator_reads_every_decoded_shape(fields: object) -> None:
    assert validator_text({"deposit": 0, "block": 5, "info": {"fields": fields}}) == "1.2.3.4:8901"


def test_validator_reads_only_the_first_field() -> None:
    value = {"info": {"fields": (({"Raw3": b"a:1"},), ({"Raw3": b"b:2"},))}}
    assert validator_text(value) == "a:1"


@pytest.mark.parametrize("value", [None, {}, {"info": {"fields": []}}, {"info": {"fields": ["None"]}},
                                   {"info": {"fields": [{"Sha256": "0x" + "00" * 32}]}}, {"info": {"fields": [()]}}])
def test_nothing_the_validator_could_read(value: object) -> None:
    assert validator_text(value) is None


def test_non_ascii_reaches_the_validator_mangled() -> None:
    """Why non-ASCII hosts are refused: the validator turns each byte into one character."""
    assert validator_text({"info": {"fields": [{"Raw11": "é.com:1".encode()}]}}) == "Ã©.com:1"


@pytest.mark.parametrize("address, port, words", [
    ("::1", 8901, "IPv6: the validator splits"),
    ("2001:db8::1", 8901, "IPv6"),
    ("[2001:db8::1]", 8901, "IPv6"),
    ("host:8901", 8901, "--commit.port"),
    ("exämple.com", 8901, "not ASCII"),
    ("my host", 8901, "whitespace"),
    ("1.2.3.4", 0, "1..65535"),
    ("1.2.3.4", 65536, "1..65535"),
    ("", 8901, "empty"),
    ("999.1.1.1", 8901, "not a valid IPv4"),
    ("0.0.0.0", 8901, "unspecified"),
    ("-bad.example", 8901, "host name"),
    ("a..b", 8901, "host name"),
    ("under_score.example", 8901, "host name"),
    (LONGEST + "b", 1, "at most 128"),
])
def test_refuses_what_the_validator_cannot_use(address: str, port: int, words: str) -> None:
    with pytest.raises(CommitmentError, match=words):
        commitment_text(address, port)


@pytest.mark.parametrize("text", ["é:1", "a" * 127 + ":1"])
def test_info_refuses_what_does_not_fit_one_field(text: str) -> None:
    with pytest.raises(CommitmentError):
        commitment_info(text)


@pytest.mark.parametrize("text, words", [
    ("1.2.3.4", "no ':'"),
    ("::1:8901", "not a number"),
    ("exämple.com:1", "not ASCII"),
    ("1.2.3.4:http", "not a number"),
    ("1.2.3.4:0", "1..65535"),
])
def test_endpoint_problem_says_why(text: str, words: str) -> None:
    assert words in (endpoint_problem(text) or "")
