"""A progress bar over the whole run, on standard error.

``rich.progress`` when rich is installed (the ``bench`` extra), else a plain text bar.
The bar counts estimated seconds: each section has an estimate and a number of steps,
and jumps to its end when it finishes, so that a wrong estimate does not accumulate.
Results go to standard output through :meth:`NoBar.print`, which keeps the bar intact
when both share a terminal.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

try:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
except ImportError:  # the bench extra is not installed
    Progress = None  # type: ignore[assignment,misc]


def make_bar(total: float, enabled: bool = True) -> Any:
    """The best bar available: rich's, a plain one, or none (``enabled=False``)."""
    if not enabled:
        return NoBar(total)
    if Progress is not None:
        return RichBar(total)
    return PlainBar(total)


class NoBar:
    """The bookkeeping of a bar, drawing nothing: results printed as they come."""

    def __init__(self, total: float) -> None:
        self.total = max(total, 1.0)
        self.done = 0.0
        self.name = ""
        self._step = 0.0
        self._section_end = 0.0

    def __enter__(self) -> NoBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def section(self, name: str, seconds: float, steps: int) -> None:
        """A section starts: about ``seconds`` long, in ``steps`` steps."""
        self.name = name
        self._step = seconds / max(steps, 1)
        self._section_end = self.done + seconds
        self.draw()

    def advance(self) -> None:
        """One step of the current section is done."""
        self.done = min(self.done + self._step, self._section_end)
        self.draw()

    def finish_section(self) -> None:
        """The current section is done, whatever its estimate said."""
        self.done = self._section_end
        self.draw()

    def draw(self) -> None:
        """Show the state (nothing here)."""

    def print(self, text: str) -> None:
        """Print a result line on standard output."""
        print(text, flush=True)


class RichBar(NoBar):
    """``rich.progress`` on standard error."""

    def __init__(self, total: float) -> None:
        super().__init__(total)
        self._same_terminal = sys.stdout.isatty() and sys.stderr.isatty()
        self._progress = Progress(
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._progress.add_task("starting", total=self.total)

    def __enter__(self) -> RichBar:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def draw(self) -> None:
        self._progress.update(self._task, description=self.name, completed=self.done)

    def print(self, text: str) -> None:
        if self._same_terminal:
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)


class PlainBar(NoBar):
    """``[#####.........]  35% background 0:42`` redrawn on standard error; one line per
    section when standard error is not a terminal."""

    WIDTH = 30

    def __init__(self, total: float) -> None:
        super().__init__(total)
        self._started = time.monotonic()
        self._tty = sys.stderr.isatty()

    def section(self, name: str, seconds: float, steps: int) -> None:
        super().section(name, seconds, steps)
        if not self._tty:
            percent = 100 * self.done / self.total
            print(f"[{percent:3.0f}%] {name} ...", file=sys.stderr, flush=True)

    def print(self, text: str) -> None:
        if self._tty:
            sys.stderr.write("\r\033[K")
        print(text, flush=True)
        self.draw()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tty:
            sys.stderr.write("\n")

    def draw(self) -> None:
        if not self._tty:
            return
        filled = int(self.WIDTH * self.done / self.total)
        elapsed = int(time.monotonic() - self._started)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"{100 * self.done / self.total:3.0f}% {self.name:<12} "
            f"{elapsed // 60}:{elapsed % 60:02d}\033[K"
        )
        sys.stderr.flush()
