"""The Prefect UI in a real browser: a real server, the served deployments, a run triggered through a deployment.

Debian's chromium (``/usr/bin/chromium``; scripts/test.sh installs it when run as root) driven by Playwright for
Python (no downloaded browser). The screenshots are saved in the test's tmp dir and copied to ``out/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, SMALLEST_GENERATOR, write_corpus
from helpers import launch_chromium, needs_chromium
from storage.paths import PREFECT_OFFLINE_ENV

pytestmark = [needs_chromium, pytest.mark.browser]
PREFECT = str(Path(sys.executable).with_name("prefect"))
QUESTION = "What is the capital of France?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30) -> None:
    """Stop a process group this test started."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait(what: str, check, timeout: float, log: Path, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}\n{_tail(log)}")
        try:
            got = check()
            if got:
                return got
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    raise AssertionError(f"{what}: not ready after {timeout:.0f}s\n{_tail(log)}")


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _post(url: str, body: dict):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_answer_deployment_run_and_its_artifact_in_the_ui(tmp_path):
    from playwright.sync_api import sync_playwright

    t0 = time.monotonic()
    port = _free_port()
    base, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_OFFLINE_ENV)
    # The UI asks the API at PREFECT_SERVER_API_PORT (4200 by default), whatever --port says.
    env.update(PREFECT_HOME=str(tmp_path / "server-home"), PREFECT_SERVER_API_PORT=str(port))
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                              env=env, stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    serve = None
    try:
        _wait("prefect server", lambda: _get(f"{api}/health") is True, 120, server_log, server)
        t_server = time.monotonic() - t0

        docs = write_corpus(tmp_path / "docs", {
            "paris.txt": "Paris is the capital and most populous city of France.",
            "rome.txt": "Rome is the capital city of Italy.",
            "nile.txt": "The Nile is a major north-flowing river in northeastern Africa.",
        })
        inbox, results, store = tmp_path / "inbox", tmp_path / "results", tmp_path / "store"
        write_corpus(inbox, {"questions.jsonl": json.dumps({"id": "q1", "question": QUESTION}) + "\n"})
        client_env = dict(env, PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "client-home"))
        serve = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve", "--docs", str(docs), "--store", str(store), "--inbox",
             str(inbox), "--results", str(results), "--cron", "", "--inbox-every", "0", "--generator",
             SMALLEST_GENERATOR, "-k", "1"],
            cwd=ROOT, env=client_env, stdout=serve_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait("served deployments", lambda: len(_post(f"{api}/deployments/filter", {})) == 2, 90, serve_log, serve)

        # Trigger both runs by hand, exactly as the README says (each runs in a fresh process started by serve).
        for name, params in (("index/reindex", []), ("answer-inbox/inbox", ["-p", 'changes={"max_new_tokens": 8}'])):
            run = subprocess.run([PREFECT, "deployment", "run", name, *params, "--watch", "--watch-timeout", "240"],
                                 cwd=ROOT, env=client_env, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0 and "Completed" in run.stdout, f"{run.stdout}\n{run.stderr}\n{_tail(serve_log)}"
        assert (results / "questions.parquet").exists(), _tail(serve_log)
        t_runs = time.monotonic() - t0

        runs = {r["name"]: r for r in _post(f"{api}/flow_runs/filter", {})}
        answer_run = next(r for n, r in runs.items() if n.startswith("answer-questions-"))
        assert answer_run["state_type"] == "COMPLETED" and any(n.startswith("inbox-inbox-") for n in runs)
        arts = {a["key"]: a for a in _post(f"{api}/artifacts/filter", {}) if a.get("key")}
        assert arts["answers"]["flow_run_id"] == answer_run["id"] and QUESTION in arts["answers"]["data"]
        assert "index-diff" in arts and "inbox" in arts

        shots = tmp_path / "screenshots"
        shots.mkdir()
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url)
                    if r.url.split(":")[0] in ("http", "https", "ws", "wss") and not r.url.startswith(base) else None)
            # Runs list → the answer run → its Artifacts tab → the `answers` card.
            page.goto(f"{base}/runs", wait_until="networkidle")
            page.get_by_text(answer_run["name"]).first.click(timeout=60_000)
            page.wait_for_url(f"**/runs/flow-run/{answer_run['id']}**", timeout=30_000)
            page.locator("li.p-tab#artifacts").click(timeout=30_000)
            card = page.locator(".artifact-card, a").filter(has_text="answers").filter(has_text="With/without")
            card.first.wait_for(timeout=30_000)
            page.wait_for_timeout(1000)  # let the run graph settle
            page.screenshot(path=shots / "ui-screenshot.png")
            # The artifact itself: the with/without table rendered from its Markdown.
            card.first.click()
            page.wait_for_url("**/artifacts/artifact/**", timeout=30_000)
            page.get_by_text(QUESTION).first.wait_for(timeout=30_000)
            assert page.get_by_text("with retrieval", exact=True).count() >= 1
            page.wait_for_timeout(1000)  # the page fades in
            page.screenshot(path=shots / "ui-artifact.png", full_page=True)
            # Every flow's artifact is listed: the index diff, the inbox summary, the answers.
            page.goto(f"{base}/artifacts", wait_until="networkidle")
            for key in ("index-diff", "inbox", "answers"):
                page.get_by_text(key, exact=True).first.wait_for(timeout=30_000)
            browser.close()
        assert outside == []  # the UI (v1, offline settings) asked nothing outside this server
        out = ROOT / "out"
        out.mkdir(exist_ok=True)
        for shot in shots.iterdir():
            assert shot.stat().st_size > 10_000
            shutil.copy(shot, out / shot.name)

        # Stopping serve pauses its deployments.
        _stop(serve)
        deps = _post(f"{api}/deployments/filter", {})
        assert len(deps) == 2 and all(d["paused"] for d in deps), deps
        print(f"server up in {t_server:.0f}s, both deployment runs done at {t_runs:.0f}s, "
              f"total {time.monotonic() - t0:.0f}s; screenshots in {shots} and {out}")
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)
