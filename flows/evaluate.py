"""The evaluation flow: index the data set's passages, answer its questions, score each stage separately."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.answer import answer_flow, report_task
from flows.index import index_flow
from flows.naming import run_name
from storage.atomic import write_bytes_atomic
from storage.outputs import check_outputs
from storage.reports.eval import metric_table, write_eval_report
from storage.runs.results import ResultRow, read_results
from tasks.config import GenerationConfig, IndexConfig, RetrievalConfig, apply_changes, to_dict, with_changes
from tasks.evaluation.datasets import EvalDataset, EvalQuestion, load_eval_dataset
from tasks.evaluation.evaluate import (
    ChunkRef,
    document_table,
    examples_by_verdict,
    recall_curve,
    relevant_chunks,
    score_all,
    summarize,
)
from tasks.generation.prompts import get_prompt
from tasks.retrieval.search import chunks_of_documents, deep_search, search


@dataclass
class EvalReport:
    out_dir: str
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@task(name="load-dataset", cache_policy=NO_CACHE)
def load_dataset_task(dataset: str, corpus: str | None, limit: int | None, sample: int | None,
                      seed: int) -> EvalDataset:
    ds = load_eval_dataset(dataset, corpus=corpus, limit=limit, sample=sample, seed=seed)
    get_run_logger().info("%s: %d questions, corpus %s (%s)", ds.name, len(ds.questions), ds.corpus,
                          "; ".join(ds.notes) or "all questions")
    return ds


@task(name="deep-retrieval", cache_policy=NO_CACHE)
def deep_retrieval_task(store: str, questions: list[EvalQuestion], depth: int, retrieval: RetrievalConfig,
                        device: str | None) -> tuple[list[list[ChunkRef]], list[list[ChunkRef]]]:
    """The ranking to ``depth`` for every question, and all indexed chunks of its evidence documents.

    With a reranker, its top ``rerank_depth`` come first, followed by the rest of the retriever's ranking
    (tasks.retrieval.search.deep_search: the base retriever runs once).
    """
    results, _ = deep_search(store, [q.question for q in questions], retrieval, depth=depth, device=device)
    rankings = [[ChunkRef(c, d, s, e, t) for c, d, (s, e), t in zip(r.chunk_ids, r.doc_ids, r.spans, r.texts,
                                                                      strict=True)] for r in results]
    evidence_ids = {d for q in questions for d in q.evidence_doc_ids}
    by_doc: dict[str, list[ChunkRef]] = {}
    for c in chunks_of_documents(store, evidence_ids, device, retrieval.matrix_dtype):
        by_doc.setdefault(c["doc_id"], []).append(
            ChunkRef(c["chunk_id"], c["doc_id"], c["char_start"], c["char_end"], c["text"]))
    evidence = [[c for d in q.evidence_doc_ids for c in by_doc.get(d, [])] for q in questions]
    return rankings, evidence


@task(name="dense-agreement", cache_policy=NO_CACHE)
def dense_agreement_task(store: str, questions: list[EvalQuestion], retriever: str, k: int, device: str | None,
                         matrix_dtype: str | None) -> float:
    """Mean share of exact float32 dense search's top-k that ``retriever`` (``ann``, or ``dense`` held in another
    matrix dtype) also returns: its recall@k against exact search on the same queries."""
    qs = [q.question for q in questions]
    exact, _ = search(store, qs, k=k, retriever="dense", device=device, matrix_dtype="float32")
    approx, _ = search(store, qs, k=k, retriever=retriever, device=device, matrix_dtype=matrix_dtype)
    shares = [len(set(a.chunk_ids) & set(e.chunk_ids)) / len(e.chunk_ids) for a, e in zip(approx, exact, strict=True)
              if e.chunk_ids]
    value = sum(shares) / len(shares) if shares else 0.0
    get_run_logger().info("%s (matrix %s) recall@%d against exact float32 search: %.4f", retriever,
                          matrix_dtype or "auto", k, value)
    return value


@flow(name="evaluate", flow_run_name=run_name("eval", "out_dir"))
def eval_flow(
    dataset: str,
    store: str,
    out_dir: str,
    ks: list[int] | None = None,
    corpus: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    index: IndexConfig | None = None,
    retrieval: RetrievalConfig | None = None,
    generation: GenerationConfig | None = None,
    depth: int = 100,
    device: str | None = None,
    answers: bool = True,
    use_cache: bool = True,
    **changes: Any,
) -> EvalReport:
    """Retrieval (recall@k, MRR@10, nDCG@10) and answers (EM/F1 with vs without) measured separately.

    ``index`` builds the store from the data set's passages; ``retrieval.k`` chunks are the generator's context.
    ``changes`` are loose settings of the three configs (``context_k=2, generator=..., max_new_tokens=8``).
    """
    t0 = time.perf_counter()
    ic, rc, gs = apply_changes(changes, index or IndexConfig(), retrieval or RetrievalConfig(),
                               generation or GenerationConfig())
    gs = with_changes(gs, prompt=get_prompt(gs.prompt).name)
    ks = sorted(set(ks or [1, 5, 10]))
    out = Path(out_dir).expanduser().resolve()
    inputs = [p for p in (dataset, corpus) if p and Path(p).expanduser().exists()]
    check_outputs([out], inputs=inputs, stores=[store])  # before any work (storage/outputs.py)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset_task(dataset, corpus, limit, sample, seed)
    idx = index_flow(str(ds.corpus), store, ic, device=device)
    qfile = out / "questions.jsonl"
    write_bytes_atomic(qfile, "".join(json.dumps({"id": q.id, "question": q.question, "answers": list(q.answers)})
                                      + "\n" for q in ds.questions).encode())
    ans = None
    if answers:
        ans = answer_flow([str(qfile)], store, str(out / "answers.parquet"), rc, gs, device=device,
                          use_cache=use_cache)
    rankings, evidence = deep_retrieval_task(store, ds.questions, max(depth, max(ks), rc.k), rc, device)
    by_id = {r["question_id"]: r for r in read_results(ans.out).to_pylist()} if ans else {}
    rows = score_all(ds.questions, rankings, evidence, by_id if ans else None, ks)
    summary = summarize(rows, ks)
    if rc.retriever == "ann" or rc.matrix_dtype not in ("auto", "float32"):
        summary["recall@10 vs exact dense"] = dense_agreement_task(
            store, ds.questions, "ann" if rc.retriever == "ann" else "dense", 10, device, rc.matrix_dtype)
    relevants = [relevant_chunks(q, ev) | relevant_chunks(q, rk)
                 for q, rk, ev in zip(ds.questions, rankings, evidence, strict=True)]
    curve = recall_curve([[c.chunk_id for c in rk] for rk in rankings], relevants, max(depth, max(ks)))
    examples = examples_by_verdict(rows, by_id) if ans else {}
    documents = document_table(rows, by_id) if ans else []
    config = {"flow": "evaluate", "dataset": ds.name, "dataset_notes": ds.notes, "questions": len(rows),
              "store": store, "retriever": rc.retriever, "rerank": rc.rerank, "embedder": ic.embedder,
              "generator": gs.generator, "context_k": rc.k, "ks": ks, "indexing": to_dict(ic),
              "retrieval": to_dict(rc), "generation": to_dict(gs), "answers": answers, "depth": depth,
              "answers_from_cache": ans.from_cache if ans else None,
              "generator_dtype": ans.dtype if ans else None, "seconds_answering": ans.seconds if ans else None,
              "padding_ratio": round(ans.padding_ratio, 3) if ans else None,
              "documents": ds.documents, "index": {"added": idx.added, "changed": idx.changed,
                                                   "unchanged": idx.unchanged, "removed": idx.removed},
              "created_at": datetime.now().isoformat()}
    answer_report = ""
    if ans:  # the answer run's page again, now with eval's verdicts and diagnoses (it knows the whole index)
        labels = {r["question_id"]: {k: r[k] for k in ("verdict", "failure_stage", "failure_detail")} for r in rows}
        answer_report = Path(report_task(ans.out, [ResultRow.from_record(r) for r in by_id.values()], config,
                                         labels)[0]).name
    files = write_eval_report(out, rows, summary, curve, examples, config, answer_report, documents)
    create_table_artifact(key="eval-metrics", table=[{"metric": k, "value": v} for k, v in metric_table(summary)],
                          description=f"Evaluation of {ds.name} ({len(rows)} questions)")
    get_run_logger().info("evaluation: %s", {k: round(v, 3) if isinstance(v, float) else v
                                              for k, v in summary.items()})
    return EvalReport(str(out), summary, {k: str(v) for k, v in files.items()}, time.perf_counter() - t0)


def run_eval(dataset: str, store: str | Path, out_dir: str | Path, **kw) -> EvalReport:
    """Call the flow with absolute paths against :func:`flows.runners.prefect_api`."""
    from flows.runners import prefect_api

    with prefect_api():
        from storage.fs import store_location

        return eval_flow(dataset, store_location(store),
                         str(Path(out_dir).expanduser().resolve()), **kw)
