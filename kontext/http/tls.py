"""HTTPS for the public door: an SSL context from PEM files, or a start-up error that says what to fix."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Optional

from kontext.errors import StartupError


def server_context(certfile: Optional[Path], keyfile: Optional[Path]) -> Optional[ssl.SSLContext]:
    """None when neither file is given (plain HTTP, e.g. behind a TLS terminator)."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise StartupError("TLS needs both --axon.certfile and --axon.keyfile (AXON_CERTFILE / AXON_KEYFILE)")
    for what, path in (("certificate", certfile), ("key", keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise StartupError(f"TLS {what} file {path} cannot be read: {exc.strerror or exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise StartupError(f"TLS certificate {certfile} with key {keyfile} is not usable (PEM expected, and the "
                           f"key must match the certificate): {exc}") from None
    return context
