"""What a refresh changed: the old and the new result table compared question by question.

A question is ``new`` (its id appears), ``removed`` (its id is gone from the question files), ``edited`` (its text
changed), ``evidence`` (the passages it was given changed: some left, some entered, or a passage's text changed)
or ``same``. For each: whether its answers were generated again (their keys changed), whether the RAG answer
changed and, with gold answers, its verdict before and after. Each passage that left or entered is named with its
document and what happened to that document between the two store generations (``DOC_CHANGES``, read from the
current manifest's ``added_at``/``changed_at``: storage/store/schema.py): that is why the evidence changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.reporting.cards import ChunkTable, build_card
from tasks.reporting.marks import word_diff

STATUSES = ("new", "removed", "edited", "evidence", "same")
# What happened to a passage's document between the generation a row was answered at and the refreshed one.
# "unchanged": the document did not change; its passage moved because another one left or entered.
DOC_CHANGES = ("added", "changed", "removed", "unchanged", "unknown")
# The change report's filters (storage/reports/templates/changes.html.j2), each a predicate on a change record.
FILTERS = {
    "answer changed": lambda c: c["answer_changed"],
    "evidence changed, answer the same": lambda c: c["status"] == "evidence" and not c["answer_changed"],
    "verdict changed": lambda c: c["verdict_changed"],
}

Manifest = dict[str, tuple[int | None, int | None]]  # doc id → (added_at, changed_at) of the current generation


@dataclass
class Change:
    question_id: str
    status: str
    question: str
    left: list[str] = field(default_factory=list)  # "chunk id (doc id, what happened to it)", passages no longer given
    entered: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)  # "changed: doc id", one per document that caused the change
    regenerated: bool = False  # an answer key changed (or was unknown): generated again, not reused
    answer_changed: bool = False
    old_rag_answer: str = ""
    new_rag_answer: str = ""
    old_generation: int | None = None
    new_generation: int | None = None
    old_verdict: str | None = None  # with gold answers: tasks/evaluation/evaluate.py's verdict, else None
    new_verdict: str | None = None
    verdict_changed: bool = False

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def doc_change(doc_id: str, since: int | None, manifest: Manifest | None) -> str:
    """What happened to ``doc_id`` after generation ``since`` (one of ``DOC_CHANGES``)."""
    if manifest is None or since is None:
        return "unknown"
    if doc_id not in manifest:
        return "removed"
    added, changed = manifest[doc_id]
    if added is None or changed is None:
        return "unknown"  # a manifest written before the stamps
    return "added" if added > since else "changed" if changed > since else "unchanged"


def compare_tables(old: list[dict[str, Any]], new: list[dict[str, Any]],
                   manifest: Manifest | None = None) -> list[Change]:
    """One :class:`Change` per question of either table, in the new table's order, then the removed ones.
    ``manifest``: the refreshed generation's documents, to say why evidence changed (None: "unknown")."""
    before = {r["question_id"]: r for r in old}
    out = []
    for r in new:
        o = before.get(r["question_id"])
        if o is None:
            out.append(Change(r["question_id"], "new", r["question"], regenerated=True, answer_changed=True,
                              new_rag_answer=r["rag_answer"], new_generation=r.get("store_generation"),
                              new_verdict=_verdict(r)))
            continue
        hashed = bool(o.get("chunk_hashes")) and bool(r.get("chunk_hashes"))  # else compare by id alone
        was, now = _passages(o, hashed), _passages(r, hashed)
        evidence = was != now
        status = "edited" if o["question"] != r["question"] else "evidence" if evidence else "same"
        keys_known = bool(o.get("rag_key")) and bool(o.get("no_rag_key"))
        since = o.get("store_generation")
        left = [(p, doc_change(p[1], since, manifest)) for p in was if p not in now]
        entered = [(p, doc_change(p[1], since, manifest)) for p in now if p not in was]
        answer_changed = (o["rag_answer"], o["no_rag_answer"]) != (r["rag_answer"], r["no_rag_answer"])
        c = Change(
            r["question_id"], status, r["question"],
            left=[_name(p, why) for p, why in left], entered=[_name(p, why) for p, why in entered],
            documents=sorted({f"{why}: {p[1]}" for p, why in left + entered if why != "unchanged"}),
            regenerated=not keys_known or (o["rag_key"], o["no_rag_key"]) != (r["rag_key"], r["no_rag_key"]),
            answer_changed=answer_changed, old_rag_answer=o["rag_answer"], new_rag_answer=r["rag_answer"],
            old_generation=since, new_generation=r.get("store_generation"))
        if status != "same" or answer_changed:  # the same evidence and answers give the same verdict
            c.old_verdict, c.new_verdict = _verdict(o), _verdict(r)
            c.verdict_changed = c.old_verdict != c.new_verdict
        out.append(c)
    ids = {r["question_id"] for r in new}
    out += [Change(o["question_id"], "removed", o["question"], old_rag_answer=o["rag_answer"],
                   old_generation=o.get("store_generation"), old_verdict=_verdict(o))
            for o in old if o["question_id"] not in ids]
    return out


def summarize_changes(changes: list[Change]) -> dict[str, int]:
    """Counts for the refresh's summary line and artifact; with gold answers, one count per verdict transition
    ("verdict grounded → misled")."""
    s = {status: sum(c.status == status for c in changes) for status in STATUSES}
    kept = [c for c in changes if c.status != "removed"]
    s["regenerated"] = sum(c.regenerated for c in kept)
    s["answers_changed"] = sum(c.answer_changed for c in kept)
    s["evidence_changed_answer_same"] = sum(FILTERS["evidence changed, answer the same"](c.to_record())
                                            for c in changes)
    s["verdicts_changed"] = sum(c.verdict_changed for c in kept)
    for c in kept:
        if c.verdict_changed:
            key = f"verdict {c.old_verdict} → {c.new_verdict}"
            s[key] = s.get(key, 0) + 1
    return s


def change_view(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The change report's entries: every question that is not ``same`` with unchanged answers, each with the word
    diff of its old and new RAG answer and the names of the filters it passes (``FILTERS``)."""
    return [dict(c, diff=word_diff(c["old_rag_answer"] or "", c["new_rag_answer"] or ""),
                 filters=[name for name, keep in FILTERS.items() if keep(c)])
            for c in records if listed(c)]


def listed(record: dict[str, Any]) -> bool:
    """Whether a change record is shown (page, ``show --changes``): every question but the unchanged ones."""
    return record["status"] != "same" or record["answer_changed"]


def _verdict(row: dict[str, Any]) -> str | None:
    """The row's verdict from its card (tasks/reporting/cards.py), when it has gold answers."""
    return build_card(row, ChunkTable()).get("v") if row.get("gold_answers") else None


def _passages(row: dict[str, Any], hashed: bool) -> list[tuple[str, str, str]]:
    """(chunk id, doc id, content hash) of each passage; without ``hashed`` (a table written before the hashes)
    the hash is left out of the comparison."""
    hashes = row.get("chunk_hashes") if hashed else None
    hashes = hashes or [""] * len(row["chunk_ids"])
    return list(zip(row["chunk_ids"], row["doc_ids"], hashes, strict=True))


def _name(p: tuple[str, str, str], why: str) -> str:
    return f"{p[0]} ({p[1]}, {why})"
