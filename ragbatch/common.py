"""What every command of the CLI shares: the consoles, the common options, and one way to fail."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from ragbatch.show import safe

# emoji=False: ":smile:" or "root:x:0:0" in a document must print as written; every user-controlled string
# printed with markup on goes through safe() (a path or id like "[/x]" would raise MarkupError).
console = Console(emoji=False)
err = Console(stderr=True, emoji=False)

STORE_HELP = "Index store: a folder, file:// or s3://BUCKET/PREFIX URL"
StoreOption = Annotated[str, typer.Option("--store", "-s", help=STORE_HELP)]
Device = Annotated[str | None, typer.Option(help="cuda / cpu (default: cuda when present)")]
Runner = Annotated[str, typer.Option("--runner", help="Task runner: threads | dask")]
DaskAddress = Annotated[str | None, typer.Option(
    "--dask-address", help="An existing Dask scheduler (tcp://host:8786); default: a local cluster")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Generate every answer, reusing none from the answer "
                                                        "cache (and storing none)")]
DaskWorkers = Annotated[int, typer.Option(
    "--dask-workers", help="Local Dask workers (with --dask-address: batches in flight, one per worker)")]


def check_output_file(out: Path) -> None:
    """Refuse an output path that cannot take the table before any work (not after an hour of generation)."""
    out = out.expanduser()
    if out.is_dir():
        fail(typer.BadParameter(f"--out {out}: is a directory; name the .parquet file to write"))
    parent = out.resolve().parent
    if parent.exists() and not parent.is_dir():
        fail(typer.BadParameter(f"--out {out}: {parent} is not a directory"))


def check_numbers(**options: tuple[float, float | None, float | None]) -> None:
    """Refuse out-of-range numeric options up front, before Prefect's start-up (name=(value, low, high))."""
    for name, (value, low, high) in options.items():
        flag = "-k" if name == "k" else "--" + name.replace("_", "-")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
            fail(typer.BadParameter(f"{flag} {value:g}: must be {bounds}"))


def fail(exc: BaseException) -> NoReturn:
    from flows.stopping import RunStopped

    if isinstance(exc, RunStopped):  # a signal stopped it between batches: what was kept is said, 128 + signal
        err.print(f"[yellow]stopped:[/] {safe(str(exc))}")
        raise typer.Exit(code=128 + exc.signum)
    err.print(f"[bold red]error:[/] {safe(str(exc))}")
    raise typer.Exit(code=2)
