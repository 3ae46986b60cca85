"""The command-line client and its request-signing helpers."""
