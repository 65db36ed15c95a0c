"""`clair-scan` and `python -m scanner`: the head start first, then the CLI."""

import os
import signal
import sys


def _hold_standard_streams() -> None:
    """A standard stream closed by the caller (`2>&-`) leaves its number free, and the next file
    opened would take it: the log, a socket, a report would then receive what is printed. Each
    closed one gets /dev/null. stderr's accepts writes, so a scan runs and ends as it would with
    its messages thrown away; stdout's is read-only, so results that cannot be shown fail the run
    (exit 3) rather than vanish."""
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            if os.open(os.devnull, mode) != fd:  # the lowest free number: this one
                raise SystemExit(3) from None
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (it lives as long as the process)
    if sys.stderr is None:
        sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115


def main() -> None:
    _hold_standard_streams()
    # Held until a command body runs (cli._guarded releases them): a Ctrl-C in the first
    # milliseconds then ends as cleanly as any other, never as a traceback.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    from . import headstart

    headstart.begin(sys.argv[1:], dict(os.environ))
    from . import cli

    cli.main()


if __name__ == "__main__":
    main()
