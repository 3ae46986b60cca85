"""Development tooling that is not part of the runtime package (the tiny offline Kontext model)."""
