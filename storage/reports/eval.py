"""Evaluation reports: a per-question Parquet table, a Markdown summary, a self-contained HTML page, PNG plots.

The HTML page is rendered from a Jinja2 template (storage/reports/html.py); this module prepares its data.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_path, write_bytes_atomic, write_json_atomic
from storage.reports.escape import md_code, md_text
from storage.reports.html import render


def write_eval_report(
    out_dir: str | Path,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    curve: list[float],
    examples: dict[str, list[dict[str, Any]]],
    config: dict[str, Any],
    answer_report: str = "",
    documents: list[dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write every file of an eval report; ``answer_report`` names the answer run's page to link to;
    ``documents``: evaluation's per-document table (``documents.parquet`` and a section of the summary)."""
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "questions": out / "questions.parquet",
        "summary_md": out / "summary.md",
        "html": out / "report.html",
        "recall_png": out / "recall_at_k.png",
        "failures_png": out / "failures.png",
        "summary_json": out / "summary.json",
        "config": out / "eval.config.json",
    }
    with atomic_path(paths["questions"]) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    recall_png = _recall_plot(curve)
    answers = "rag_em" in summary
    failures_png = _failure_plot(summary) if answers else b""
    write_bytes_atomic(paths["recall_png"], recall_png)
    if answers:
        write_bytes_atomic(paths["failures_png"], failures_png)
    else:
        paths.pop("failures_png")
    if documents:
        paths["documents"] = out / "documents.parquet"
        with atomic_path(paths["documents"]) as tmp:
            pq.write_table(pa.Table.from_pylist(documents), tmp)
    write_json_atomic(paths["summary_json"], {"summary": summary, "recall_curve": curve})
    write_json_atomic(paths["config"], config)
    md = summary_markdown(summary, examples, config) + documents_markdown(documents or [])
    write_bytes_atomic(paths["summary_md"], md.encode())
    write_bytes_atomic(paths["html"], _html(summary, examples, config, recall_png, failures_png,
                                            answer_report, documents or []).encode())
    return paths


def documents_markdown(documents: list[dict[str, Any]], limit: int = 20) -> str:
    """The documents that most often turn a right closed-book answer into a wrong one, first (evaluation sorts)."""
    if not documents:
        return ""
    counts = [k for k in documents[0] if k not in ("doc_id", "questions", "right_to_wrong")]
    lines = ["", "## Which documents mislead", "",
             "Each document given as context: in how many questions, how many right-without-retrieval answers it "
             "turned wrong, and the verdicts. All rows: `documents.parquet`.", "",
             "| document | questions | right → wrong | " + " | ".join(counts) + " |",
             "|---|---|---|" + "---|" * len(counts)]
    lines += [f"| {md_code(d['doc_id'])} | {d['questions']} | {d['right_to_wrong']} | "
              + " | ".join(str(d[c]) for c in counts) + " |" for d in documents[:limit]]
    return "\n".join(lines) + "\n"


def metric_table(summary: dict[str, Any]) -> list[tuple[str, str]]:
    keys = [k for k in summary if k.startswith("recall@")] + ["mrr@10", "ndcg@10"]
    rows = [(k, f"{summary[k]:.3f}") for k in keys]
    if "recall@10 vs exact dense" in summary:  # --retriever ann or a quantized matrix
        rows.append(("recall@10 vs exact float32 dense search", f"{summary['recall@10 vs exact dense']:.4f}"))
    if "rag_em" not in summary:
        return rows
    for m, label in (("em", "exact match"), ("f1", "token F1"), ("contains", "gold answer contained")):
        rows.append((f"{label}: without → with retrieval", f"{summary[f'no_rag_{m}']:.3f} → {summary[f'rag_{m}']:.3f}"))
    rows.append(("faithfulness of the RAG answer (lexical support)", f"{summary['faithfulness']:.3f}"))
    return rows


def _generation(config: dict[str, Any]) -> str:
    """"bfloat16, prompt extract, snapped, padded/real 1.07": how the answers were generated."""
    g = config.get("generation") or {}
    parts = [str(config.get("generator_dtype") or g.get("dtype") or "?"), f"prompt {g.get('prompt', '?')}"]
    if g.get("snap"):
        parts.append("snapped")
    if config.get("padding_ratio"):
        parts.append(f"padded/real {config['padding_ratio']}")
    return ", ".join(parts)


def summary_markdown(summary: dict[str, Any], examples: dict[str, list[dict[str, Any]]], config: dict[str, Any]) -> str:
    """The Markdown summary; every string from the data or the config is escaped (storage/reports/escape.py)."""
    c = md_code
    lines = [f"# ragbatch evaluation: {md_text(config.get('dataset', ''))}", "",
             f"{summary['questions']} questions; retriever {c(config.get('retriever'))}, embedder "
             f"{c(config.get('embedder'))}, generator {c(config.get('generator'))} ({md_text(_generation(config))}), "
             f"k = {md_text(config.get('context_k'))} chunks of context.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {md_text(k)} | {md_text(v)} |" for k, v in metric_table(summary)]
    if "rag_em" not in summary:
        tail = ["", "Retrieval only: no answers were generated.", "", "![recall@k](recall_at_k.png)", ""]
        return "\n".join(lines + tail)
    lines += ["", "## What retrieval changed", "",
              f"Answers that differ: {summary['differ']} — "
              + ", ".join(f"{v} {summary[v]}" for v in examples) + ".", "",
              "| by | improved | worsened | unchanged |", "|---|---|---|---|",
              f"| token F1 | {summary['f1_improved']} | {summary['f1_worsened']} | {summary['f1_unchanged']} |",
              f"| exact match | {summary['em_improved']} | {summary['em_worsened']} | {summary['em_unchanged']} |",
              "", "## Where wrong RAG answers broke", "",
              f"{summary['rag_wrong']} wrong RAG answers: "
              + ", ".join(f"{s} {summary['fail_' + s]}" for s in _stages(summary)) + ".", "",
              "![recall@k](recall_at_k.png) ![failures](failures.png)", ""]
    for v, shown in examples.items():
        lines += [f"## Examples: {v}", ""]
        if not shown:
            lines += ["(none)", ""]
        for ex in shown:
            lines += [f"- **{md_text(ex['question'])}** (gold: {md_text(' | '.join(ex['gold_answers'][:3]))})",
                      f"  - without retrieval: {md_text(ex['no_rag_answer'])}",
                      f"  - with retrieval: {md_text(ex['rag_answer'])}"]
            lines += [f"  - \\[{i}\\] {md_code(cid)}: {md_text(t, 240)}" for i, (cid, t) in enumerate(ex["chunks"], 1)]
        lines.append("")
    return "\n".join(lines)


def _stages(summary: dict[str, Any]) -> list[str]:
    """The stages a summary counts failures of (``fail_<stage>``), in its order: evaluation defines them."""
    return [k.removeprefix("fail_") for k in summary if k.startswith("fail_")]


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _recall_plot(curve: list[float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ks = list(range(1, len(curve) + 1))
    ax.plot(ks, curve, marker="o", markersize=3)
    ax.set_xscale("log")
    ax.set_xlabel("k (chunks retrieved)")
    ax.set_ylabel("mean recall@k")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title("Retrieval: recall@k")
    return _png(fig)


def _failure_plot(summary: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    stages = _stages(summary)
    counts = [summary[f"fail_{s}"] for s in stages]
    bars = ax.bar(stages, counts, color=["#c97b2a", "#3a78b5", "#7a4fa0"])
    ax.bar_label(bars)
    ax.set_ylabel("wrong RAG answers")
    ax.set_title(f"Where {summary['rag_wrong']} wrong RAG answers broke")
    return _png(fig)


def _html(summary, examples, config, recall_png: bytes, failures_png: bytes, answer_report: str = "",
          documents: list[dict[str, Any]] | None = None, limit: int = 50) -> str:
    """The page, rendered from storage/reports/templates/eval.html.j2 (autoescaped); this only prepares its data."""
    def src(data: bytes) -> str:
        return f"data:image/png;base64,{base64.b64encode(data).decode()}"

    answers = "rag_em" in summary
    images = [("recall@k", src(recall_png))] + ([("failures by stage", src(failures_png))] if answers else [])
    return render("eval.html.j2", summary=summary, config=config, answers=answers, metrics=metric_table(summary),
                  generation=_generation(config), images=images, examples=examples, verdicts=list(examples),
                  answer_report=answer_report, config_json=json.dumps(config, indent=2, default=str),
                  documents=(documents or [])[:limit], documents_total=len(documents or []),
                  document_counts=[k for k in (documents or [{}])[0] if k not in ("doc_id", "questions",
                                                                                  "right_to_wrong")])
