"""What the command line draws: progress bars fed by the library's (stage, advance, total) callback, and tables.

The library never prints (it calls a progress callback and returns data); the CLI modules of the pipeline and of the
apps render with these."""

from __future__ import annotations

__all__ = ["Progress", "table", "console"]


def console():
    from rich.console import Console

    return Console(stderr=True)


class Progress:
    """Rich progress bars, one per stage, fed by the library's (stage, advance, total) callback."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.p = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("eta"), TimeRemainingColumn(), console=console(), disable=not enabled, transient=False)
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, advance: int, total: int) -> None:
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
