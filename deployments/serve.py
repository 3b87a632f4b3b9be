"""Serve the pipeline's deployments against a Prefect server (``PREFECT_API_URL``): one long-running process.

- ``index/reindex``: re-index DOCS into STORE on a cron schedule (default nightly, ``0 2 * * *``); when that
  changed any document, every table the inbox answered (RESULTS' ledger) is refreshed (``ragbatch refresh``).
- ``answer-inbox/inbox``: answer every new question file in INBOX into RESULTS (every ``inbox_every`` seconds,
  and whenever triggered by hand).

    prefect server start --host 127.0.0.1            # another terminal; UI at http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    ragbatch serve --docs DOCS --store STORE [--inbox INBOX --results RESULTS --cron "0 2 * * *"]
    python -m deployments.serve --docs DOCS --store STORE ...          # the same without the CLI

Each run executes in a fresh process started by ``serve``. Stopping ``serve`` (Ctrl-C, SIGTERM) pauses its
deployments; starting it again resumes them. This module only schedules: the work is in ``flows/``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from storage.fs import store_location
from storage.paths import configure_environment, home
from tasks.config import GenerationConfig, IndexConfig, RetrievalConfig, to_dict

configure_environment()

DEFAULT_CRON = "0 2 * * *"
DEFAULT_INBOX_EVERY = 300  # seconds between inbox runs; 0 = only when triggered
INDEX_DEPLOYMENT = "reindex"
INBOX_DEPLOYMENT = "inbox"


def default_inbox() -> Path:
    return home() / "inbox"


def default_results() -> Path:
    return home() / "results"


def build_deployments(
    docs: str | Path,
    store: str | Path,
    inbox: str | Path | None = None,
    results: str | Path | None = None,
    *,
    cron: str | None = DEFAULT_CRON,
    inbox_every: float = DEFAULT_INBOX_EVERY,
    index: IndexConfig | None = None,
    retrieval: RetrievalConfig | None = None,
    generation: GenerationConfig | None = None,
    device: str | None = None,
) -> list[Any]:
    """The two ``RunnerDeployment`` objects (absolute paths as parameters; ``cron=None``: no schedule).

    A config given is a parameter of its deployment (``index`` of the re-index one, ``retrieval`` and ``generation``
    of the inbox one), saved as plain JSON; one not given leaves the flow's defaults.
    """
    from prefect.deployments.runner import EntrypointType

    from flows.inbox import inbox_flow
    from flows.index import index_flow

    def absolute(p: str | Path) -> str:
        return str(Path(p).expanduser().resolve())

    store_s = store_location(store)  # a path or an s3:// URL
    index_params: dict[str, Any] = {"docs_dir": absolute(docs), "store": store_s}
    inbox_params: dict[str, Any] = {
        "inbox": absolute(inbox or default_inbox()), "results": absolute(results or default_results()),
        "store": store_s,
    }
    for params, key, value in ((index_params, "config", index), (index_params, "device", device),
                               (inbox_params, "retrieval", retrieval), (inbox_params, "generation", generation),
                               (inbox_params, "device", device)):
        if value is not None:
            params[key] = value if isinstance(value, str) else to_dict(value)
    index_params["refresh_results"] = inbox_params["results"]  # a re-index refreshes the inbox's answers
    Path(inbox_params["inbox"]).mkdir(parents=True, exist_ok=True)
    Path(inbox_params["results"]).mkdir(parents=True, exist_ok=True)
    reindex = index_flow.to_deployment(
        name=INDEX_DEPLOYMENT, cron=cron or None, parameters=index_params, concurrency_limit=1,
        entrypoint_type=EntrypointType.MODULE_PATH, tags=["ragbatch"],
        description=f"Re-index {index_params['docs_dir']} into {store_s} (incremental)",
    )
    answer = inbox_flow.to_deployment(
        name=INBOX_DEPLOYMENT, interval=inbox_every or None, parameters=inbox_params, concurrency_limit=1,
        entrypoint_type=EntrypointType.MODULE_PATH, tags=["ragbatch"],
        description=f"Answer new question files in {inbox_params['inbox']} into {inbox_params['results']}",
    )
    return [reindex, answer]


def require_server() -> str:
    """The Prefect API URL; deployments need a running server (a temporary one would vanish with serve)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise RuntimeError(
            "PREFECT_API_URL is not set: start a server (`prefect server start --host 127.0.0.1`) and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    return url


def serve_deployments(docs: str | Path, store: str | Path, **kw: Any) -> None:
    """Register both deployments and run until stopped (stopping pauses them; serving again resumes them)."""
    from prefect import serve

    require_server()
    # Runs start in fresh processes: give them the same absolute data dir whatever their working directory.
    os.environ["RAGBATCH_HOME"] = str(home())
    serve(*build_deployments(docs, store, **kw))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", required=True, help="documents folder the re-index deployment indexes")
    ap.add_argument("--store", required=True, help="index store (a path every run can reach)")
    ap.add_argument("--inbox", default=None, help="question inbox (default $RAGBATCH_HOME/inbox)")
    ap.add_argument("--results", default=None, help="results folder (default $RAGBATCH_HOME/results)")
    ap.add_argument("--cron", default=DEFAULT_CRON, help=f"re-index schedule (default '{DEFAULT_CRON}'; '' = none)")
    ap.add_argument("--inbox-every", type=float, default=DEFAULT_INBOX_EVERY,
                    help="seconds between inbox runs (0 = only when triggered)")
    ap.add_argument("--device", default=None)
    groups = {"index": IndexConfig, "retrieval": RetrievalConfig, "generation": GenerationConfig}
    for group, cls in groups.items():
        _config_arguments(ap.add_argument_group(group), group, cls, skip={"retrieval.embedder"})
    a = vars(ap.parse_args(argv))
    configs = {}
    for group, cls in groups.items():
        given = {f.name: a[f"{group}.{f.name}"] for f in fields(cls) if a.get(f"{group}.{f.name}") is not None}
        configs[group] = cls(**given) if given else None
    serve_deployments(a["docs"], a["store"], inbox=a["inbox"], results=a["results"], cron=a["cron"],
                      inbox_every=a["inbox_every"], device=a["device"], **configs)


def _config_arguments(ap: Any, group: str, cls: type, skip: set[str]) -> None:
    """One ``--field-name`` option per config field (``-k`` for k), default None: the config's own."""
    defaults = cls()
    for f in fields(cls):
        if f"{group}.{f.name}" in skip:
            continue
        value = getattr(defaults, f.name)
        kind: Any = (argparse.BooleanOptionalAction if isinstance(value, bool) else None)
        parse = (None if kind else (lambda t: [float(w) for w in t.split(",")]) if isinstance(value, tuple)
                 else type(value) if value is not None else str)
        flags = ["-k"] if f.name == "k" else ["--" + f.name.replace("_", "-")]
        extra: dict[str, Any] = {"action": kind} if kind else {"type": parse}
        ap.add_argument(*flags, dest=f"{group}.{f.name}", default=None, help=f"default: {value}", **extra)


if __name__ == "__main__":
    main()
