"""`python -m zocli`, and the `zocli` console script."""

import signal
import sys


def main() -> None:
    """Run the CLI; a Ctrl-C at any moment ends in exit 130, never a traceback or death by the signal.

    The commands handle Ctrl-C themselves; this catches the ones that land outside them: while Typer,
    rich and the commands are imported (the first ~0.3 s), and after a command has finished.
    """
    try:
        from zocli.cli import app

        app(prog_name="zocli")
        code = 0
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    except SystemExit as exit_:
        code = exit_.code
    # The exit code is decided: a late Ctrl-C during interpreter shutdown must not replace it (Python
    # restores the default SIGINT action there, which would kill the process by the signal).
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except OSError:  # "ignored due to race condition": a signal pending under SIG_IGN, ignored as asked
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    main()
