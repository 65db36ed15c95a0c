"""`clair-scan` and `python -m scanner`: the head start first, then the CLI."""

import os
import signal
import sys


def main() -> None:
    # Held until a command body runs (cli._guarded releases them): a Ctrl-C in the first
    # milliseconds then ends as cleanly as any other, never as a traceback.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    from . import headstart

    if headstart.begin(sys.argv[1:], dict(os.environ)):
        # The scan needs the docker SDK: load it here, near the bottom of the call stack. Loaded
        # deep under Typer's frames, urllib3's regex compilation can straddle a 16 KiB chunk of
        # CPython 3.11's frame stack, allocating and freeing it thousands of times (strace -c of
        # a rescan: 6,014 mmap calls, 220 with this import; 191 ms against 157 ms).
        from . import image  # noqa: F401

    from . import cli

    cli.main()


if __name__ == "__main__":
    main()
