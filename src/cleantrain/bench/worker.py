"""One bench run in its own process: `python -m cleantrain.bench.worker ARGS` = `cleantrain train ARGS`,
except that it dies with the bench that started it (Linux), so that a killed
bench never leaves a run writing into its folder behind it."""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent() -> None:
    expected = os.environ.get("CLEANTRAIN_BENCH_PARENT")
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if expected and os.getppid() != int(expected):  # the bench died before prctl took effect
        os._exit(137)


def main(argv: list[str]) -> int:
    die_with_parent()
    from ..cli import main as cli_main

    return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
