"""The neuron's settings: the service's, plus chain, wallet and public door, each also a command-line flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import Field, field_validator

from kontext.settings import Profile, Settings

OFFLINE = "offline"


class NeuronSettings(Settings):
    """Everything ``neurons/miner.py`` and ``kontext-commit`` read; the flags of ``neurons/config.py`` set the same
    fields, so ``--axon.port 8443`` and ``AXON_PORT=8443`` in ``.env`` are one setting."""

    kontext_profile: Profile = "subnet"

    netuid: int = Field(default=11, ge=0)
    subtensor_network: str = "finney"
    """finney | test | local | ws(s)://endpoint | offline (no chain: callers from NEURON_VALIDATORS)."""
    subtensor_chain_endpoint: Optional[str] = None
    wallet_name: str = "default"
    wallet_hotkey: str = "default"
    wallet_path: str = "~/.bittensor/wallets"

    axon_ip: str = "0.0.0.0"
    axon_port: int = Field(default=8901, ge=1, le=65535)
    """The public door: what the validator calls (8091 stays the sidecar's)."""
    axon_certfile: Optional[Path] = None
    """PEM certificate (chain) for HTTPS on the public door; the validator only calls https://."""
    axon_keyfile: Optional[Path] = None
    axon_external_ip: Optional[str] = None
    axon_external_port: Optional[int] = Field(default=None, ge=1, le=65535)
    commit_address: Optional[str] = None
    """The host name (of the TLS certificate) or IPv4 address committed for the validator."""
    commit_port: Optional[int] = None

    blacklist_force_validator_permit: bool = True
    blacklist_allow_non_registered: bool = False
    neuron_validators: Optional[str] = None
    """Offline mode: allowed callers, a JSON file {hotkey: {stake, validator_permit}} or HOTKEY:STAKE[:nopermit],..."""
    neuron_metagraph_refresh_seconds: float = Field(default=300.0, gt=0)
    neuron_skip_serve_axon: bool = False
    neuron_skip_commit: bool = False

    @field_validator("neuron_validators")
    @classmethod
    def _validator_hotkeys(cls, value: Optional[str]) -> Optional[str]:
        """Every entry of an inline list is an ss58 address with a numeric stake (a file is read at start)."""
        if value and not Path(value).is_file():
            from neurons.registry import load_offline_members

            load_offline_members(value)  # ValueError naming the bad entry
        return value

    @property
    def chain(self) -> Optional[str]:
        """The network name or endpoint to connect to; None offline (no chain)."""
        if self.subtensor_network == OFFLINE and not self.subtensor_chain_endpoint:
            return None
        return self.subtensor_chain_endpoint or self.subtensor_network

    @property
    def network(self) -> str:
        return self.chain or OFFLINE

    def public_door_url(self) -> Optional[str]:
        """``https://<commit address>:<port>``: where the validator reaches this miner, so where ``image_url``
        points (SERVICE_URL overrides it); None when no public address is known."""
        address = self.commit_address or self.axon_external_ip
        if not address:
            return None
        return f"https://{address}:{self.commit_port or self.axon_external_port or self.axon_port}"

    def with_public_urls(self) -> "NeuronSettings":
        """These settings with SERVICE_URL defaulting to the public door (never a loopback-only listener)."""
        if self.service_url:
            return self
        door = self.public_door_url()
        if door is None:
            host = "127.0.0.1" if self.axon_ip in ("0.0.0.0", "::", "") else self.axon_ip
            scheme = "https" if self.axon_certfile else "http"
            door = f"{scheme}://{host}:{self.axon_port}"
        return self.model_copy(update={"service_url": door})

    def commit_endpoint(self) -> tuple[str, int]:
        from neurons.commitment import CommitmentError

        address = self.commit_address or self.axon_external_ip
        if not address:
            raise CommitmentError("no address to commit: set --commit.address (COMMIT_ADDRESS) to the public host "
                                  "name of the door's certificate (or an IPv4 address)")
        if self.commit_port is not None:  # as given, so a wrong port is refused rather than replaced
            return address, self.commit_port
        return address, self.axon_external_port or self.axon_port

    def describe(self) -> dict[str, Any]:
        return {"netuid": self.netuid, "network": self.network}
