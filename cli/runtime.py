"""How an ``ebr`` command runs: errors as one line, Prefect's temporary server, console logs.

- An error reaches the terminal as one line and a non-zero exit code (1: the work failed; 130: interrupted);
  ``ebr --debug ...`` or ``EBR_DEBUG=1`` shows the whole traceback instead.
- A flow command without PREFECT_API_URL starts a temporary Prefect server as a child process: it gets time
  to start on a busy machine, and it stops when the command is killed.
- Prefect logs a failed flow with its traceback: the console keeps the one-line message.
"""

from __future__ import annotations

import os
import re
import sys

import typer

from infra.patches import ephemeral_server_dies_with_us


def one_line(exc: BaseException, limit: int = 600) -> str:
    """An error as one readable line: its message with whitespace runs collapsed, cut at ``limit``."""
    notes = getattr(exc, "__notes__", None) or []  # context added on the way up (e.g. which S3 store)
    text = re.sub(r"\s+", " ", " ".join([str(exc), *(f"({n})" for n in notes)])).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Cli(typer.Typer):
    """The ``ebr`` app: an error reaches the terminal as one line and a non-zero exit code (1: the work failed;
    130: interrupted); ``ebr --debug ...`` or ``EBR_DEBUG=1`` shows the whole traceback instead."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence of a command line
            if debug_enabled():
                raise
            typer.echo(file=sys.stderr)
            typer.echo(f"error: {one_line(exc)} (run with --debug for the traceback)", err=True)
            sys.exit(1)


def debug_enabled() -> bool:
    return os.environ.get("EBR_DEBUG", "") not in ("", "0")


class _NoTraceback:
    """A logging filter for the console: the record's one-line message without its traceback (the run's
    logs in the Prefect UI keep it; ``--debug`` keeps it here too)."""

    def filter(self, record) -> bool:
        if record.exc_info and not debug_enabled():
            record.exc_info, record.exc_text = None, None
        return True


def quiet_console_tracebacks() -> None:
    """Strip tracebacks from Prefect's console output (flows log a failure with its traceback)."""
    import logging

    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for h in logging.getLogger(name).handlers:
            if isinstance(h, (PrefectConsoleHandler, logging.StreamHandler)) and not any(
                    isinstance(f, _NoTraceback) for f in h.filters):
                h.addFilter(_NoTraceback())


class _DemoteDeprecations:
    """A filter on the ``py.warnings`` logger (where Prefect sends warnings): libraries' deprecation notices
    become debug records, which the console's handlers (at warning) drop and a debug log keeps."""

    NOTICES = ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning")

    def filter(self, record) -> bool:
        import logging

        if any(n in record.getMessage() for n in self.NOTICES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def quiet_console() -> None:
    """The console of a command that prints its own tables and progress bars (``ebr demo``): warnings and
    errors only. Runs' info lines still reach their logs in the Prefect UI (another handler); libraries'
    deprecation notices go to the log at debug level."""
    import logging

    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for h in logging.getLogger(name).handlers:
            if isinstance(h, PrefectConsoleHandler) or type(h) is logging.StreamHandler:
                h.setLevel(max(h.level, logging.WARNING))
    notices = logging.getLogger("py.warnings")
    if not any(isinstance(f, _DemoteDeprecations) for f in notices.filters):
        notices.addFilter(_DemoteDeprecations())


def prepare_flow_command(debug: bool) -> None:
    """What every flow command needs before Prefect starts (see the module docstring)."""
    # start-up can exceed Prefect's 20 s default on a busy 2-core machine, which failed commands under load
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    ephemeral_server_dies_with_us()
    if not debug:
        quiet_console_tracebacks()
    mark_runs_of_this_process()


_process_tags = None


def mark_runs_of_this_process() -> None:
    """Tag every run this command starts with its host and pid, and mark Crashed the runs of earlier
    commands that were killed (their process is gone): no dead run shows as running in the UI."""
    from prefect import tags

    from flows.housekeeping import crash_dead_runs, process_tag

    global _process_tags
    if _process_tags is None:  # entered for the whole command (it ends with the process); kept referenced, since
        _process_tags = tags(process_tag())  # a collected context manager would leave its context
        _process_tags.__enter__()
    try:
        crash_dead_runs()
    except Exception as exc:  # noqa: BLE001 - housekeeping never stops the command the operator asked for
        import logging

        logging.getLogger(__name__).warning("could not check for runs of killed commands: %s", one_line(exc))
