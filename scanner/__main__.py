"""`clair-scan` and `python -m scanner`: the head start first, then the CLI."""

import os
import signal
import sys


def main() -> None:
    # Held until a command body runs (cli._guarded releases them): a Ctrl-C in the first
    # milliseconds then ends as cleanly as any other, never as a traceback.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    from . import headstart

    headstart.begin(sys.argv[1:], dict(os.environ))
    from . import cli

    cli.main()


if __name__ == "__main__":
    main()
