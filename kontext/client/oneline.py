"""One-line errors for the command-line tools: the operator reads one sentence on stderr, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, Optional


class ClientError(Exception):
    """A failure the operator can act on; the message is the whole story, fix included where there is one."""


def one_line(text: object) -> str:
    """``text`` with its line breaks and runs of spaces folded: exception texts (TLS, bittensor) span lines."""
    return " ".join(str(text).split())


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``prog: error: ...``) rather than the usage block and a line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def run_in_one_line(prog: str, body: Callable[[], Optional[int]]) -> None:
    """Run a tool's ``body``; its exit code, or whatever it raises, ends the process with one line on stderr.

    A ``SystemExit`` carrying a message is the tool's own one-line error: it gets the tool's name in front (Python
    prints it).
    Anything else unexpected is still one line: the operator needs the sentence, not the stack.
    """
    try:
        code = body()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            line = one_line(exc.code)
            raise SystemExit(line if line.startswith(f"{prog}:") else f"{prog}: {line}") from None
        raise
    except ClientError as exc:
        raise SystemExit(f"{prog}: {one_line(exc)}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"{prog}: interrupted") from None
    except BrokenPipeError:  # the reader went away (`| head`): nothing left to say, and nowhere to say it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except Exception as exc:  # noqa: BLE001 - said in one line, as every error of the tool
        raise SystemExit(f"{prog}: {type(exc).__name__}: {one_line(exc)}") from None
    if code:
        raise SystemExit(code)
