"""Ctrl-C at any moment ends in exit 130 with one line."""

from __future__ import annotations

import signal

import pytest


def test_a_ctrl_c_outside_any_command_exits_130_and_a_later_one_is_ignored(monkeypatch, capsys):
    # The first ~0.3 s (imports) and the time after a command are outside the commands' own handling.
    import zocli.cli
    from zocli.__main__ import main

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zocli.cli, "app", interrupted)
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == 130
        assert capsys.readouterr().err == "interrupted\n"
        # from here until the process is gone a Ctrl-C cannot turn exit 130 into death by SIGINT
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_second_ctrl_c_aborts_without_raising(tmp_path):
    # Raising KeyboardInterrupt from the handler was swallowed when it landed inside a finalizer.
    from zocli.cli.signals import graceful_stop

    aborted = []
    with graceful_stop(lambda: aborted.append(True)) as should_stop:
        handler = signal.getsignal(signal.SIGINT)
        handler(signal.SIGINT, None)
        assert should_stop() and not aborted
        handler(signal.SIGINT, None)  # must not raise
        assert aborted == [True]


def test_the_stop_handler_imports_nothing(monkeypatch, capfd):
    """Found by a sweep test: SIGTERM landed while the run was importing rich's emoji table, and the handler's
    rich print imported the half-initialised module: ImportError, and the run died instead of committing."""
    import builtins

    from zocli.cli.signals import graceful_stop

    def no_import(*args, **kwargs):
        raise ImportError("a signal handler must not import")

    with graceful_stop(lambda: None) as should_stop:
        handler = signal.getsignal(signal.SIGTERM)
        monkeypatch.setattr(builtins, "__import__", no_import)
        try:
            handler(signal.SIGTERM, None)
        finally:
            monkeypatch.undo()
        assert should_stop()
    assert "stopping after this step" in capfd.readouterr().err


def test_a_signal_pending_while_handlers_are_restored_is_no_traceback(monkeypatch):
    # Found in CI: a second Ctrl-C pending under the just-set SIG_IGN made the next signal.signal() raise
    # "OSError: Signal 2 ignored due to race condition" and print a traceback at exit.
    from zocli.cli.signals import set_handler

    calls = []

    def racy(sig, handler):
        calls.append((sig, handler))
        if len(calls) == 1:
            raise OSError("Signal 2 ignored due to race condition")
        return signal.SIG_DFL

    monkeypatch.setattr(signal, "signal", racy)
    set_handler(signal.SIGTERM, signal.SIG_IGN)
    assert calls == [(signal.SIGTERM, signal.SIG_IGN)] * 2  # the handler is set after all
