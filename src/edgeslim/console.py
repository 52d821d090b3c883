"""What the command line draws: progress bars fed by the library's (stage, advance, total) callback, and tables.

The library never prints (it calls a progress callback and returns data); the CLI modules of the pipeline and of the
apps render with these."""

from __future__ import annotations

__all__ = ["Progress", "table", "console", "stdout"]


def console():
    from rich.console import Console

    return Console(stderr=True)


def stdout():
    """The console for results on stdout: the terminal's width on a terminal; into a file or a pipe, wide enough that
    tables are never cut to "..." (rich would assume 80 columns)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=1000)


class Progress:
    """Progress fed by the library's (stage, advance, total) callback: rich bars on a terminal; into a log or CI (stderr
    not a terminal) one plain line when each stage starts, never a bar; nothing when `enabled` is false (e.g. --json
    on stdout still gets the lines on stderr unless quiet)."""

    def __init__(self, enabled: bool, lines: bool | None = None) -> None:
        import sys
        import time

        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        tty = sys.stderr.isatty()
        self.lines = enabled and ((not tty) if lines is None else lines)
        self.t0 = time.monotonic()
        self.seen: set[str] = set()
        enabled = enabled and not self.lines
        self.p = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("eta"), TimeRemainingColumn(), console=console(), disable=not enabled, transient=False)
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, advance: int, total: int) -> None:
        if self.lines:
            self._line(stage, total)
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.p.add_task(stage, total=total or None)
        elif advance == 0 and not stage.startswith(("benchmark", "candidates")):  # the stage starts again (e.g. one more trial)
            self.p.reset(self.tasks[stage], total=total or None)
        tid = self.tasks[stage]
        if stage.startswith("benchmark"):
            self.p.update(tid, completed=advance, total=total)
            return
        if total:
            self.p.update(tid, total=total)
        if advance:
            self.p.advance(tid, advance)

    def _line(self, stage: str, total: int) -> None:
        import sys
        import time

        if stage in self.seen or stage == "candidates":
            return
        self.seen.add(stage)
        sys.stderr.write(f"[{time.monotonic() - self.t0:5.0f} s] {stage}" + (f" ({total})" if total else "") + "\n")
        sys.stderr.flush()

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *a):
        self.p.__exit__(*a)


def table(title: str, headers: list[str], rows: list[list[str]]):
    from rich.table import Table

    t = Table(title=title)
    for i, h in enumerate(headers):
        t.add_column(h, no_wrap=i < len(headers) - 1, overflow="ellipsis" if i < len(headers) - 1 else "fold")
    for r in rows:
        t.add_row(*r)
    return t
