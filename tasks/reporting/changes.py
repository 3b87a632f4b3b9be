"""What a refresh changed: the old and the new result table compared question by question.

A question is ``new`` (its id appears), ``removed`` (its id is gone from the question files), ``edited`` (its text
changed), ``evidence`` (the passages it was given changed: some left, some entered, or a passage's text changed)
or ``same``. For each, whether its answers were generated again (their keys changed) and whether the RAG answer
changed; passages that left and entered are named with their documents.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("new", "removed", "edited", "evidence", "same")


@dataclass
class Change:
    question_id: str
    status: str
    question: str
    left: list[str] = field(default_factory=list)  # "chunk id (doc id)" of passages no longer given
    entered: list[str] = field(default_factory=list)
    regenerated: bool = False  # an answer key changed (or was unknown): generated again, not reused
    answer_changed: bool = False
    old_rag_answer: str = ""
    new_rag_answer: str = ""

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def compare_tables(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[Change]:
    """One :class:`Change` per question of either table, in the new table's order, then the removed ones."""
    before = {r["question_id"]: r for r in old}
    out = []
    for r in new:
        o = before.get(r["question_id"])
        if o is None:
            out.append(Change(r["question_id"], "new", r["question"], regenerated=True, answer_changed=True,
                              new_rag_answer=r["rag_answer"]))
            continue
        hashed = bool(o.get("chunk_hashes")) and bool(r.get("chunk_hashes"))  # else compare by id alone
        was, now = _passages(o, hashed), _passages(r, hashed)
        evidence = was != now
        status = "edited" if o["question"] != r["question"] else "evidence" if evidence else "same"
        keys_known = bool(o.get("rag_key")) and bool(o.get("no_rag_key"))
        regenerated = not keys_known or (o["rag_key"], o["no_rag_key"]) != (r["rag_key"], r["no_rag_key"])
        out.append(Change(
            r["question_id"], status, r["question"],
            left=[_name(p) for p in was if p not in now], entered=[_name(p) for p in now if p not in was],
            regenerated=regenerated,
            answer_changed=(o["rag_answer"], o["no_rag_answer"]) != (r["rag_answer"], r["no_rag_answer"]),
            old_rag_answer=o["rag_answer"], new_rag_answer=r["rag_answer"]))
    ids = {r["question_id"] for r in new}
    out += [Change(o["question_id"], "removed", o["question"], old_rag_answer=o["rag_answer"])
            for o in old if o["question_id"] not in ids]
    return out


def summarize_changes(changes: list[Change]) -> dict[str, int]:
    """Counts for the refresh's summary line and artifact."""
    s = {status: sum(c.status == status for c in changes) for status in STATUSES}
    s["regenerated"] = sum(c.regenerated for c in changes if c.status != "removed")
    s["answers_changed"] = sum(c.answer_changed for c in changes if c.status != "removed")
    s["evidence_changed_answer_same"] = sum(c.status == "evidence" and not c.answer_changed for c in changes)
    return s


def _passages(row: dict[str, Any], hashed: bool) -> list[tuple[str, str, str]]:
    """(chunk id, doc id, content hash) of each passage; without ``hashed`` (a table written before the hashes)
    the hash is left out of the comparison."""
    hashes = row.get("chunk_hashes") if hashed else None
    hashes = hashes or [""] * len(row["chunk_ids"])
    return list(zip(row["chunk_ids"], row["doc_ids"], hashes, strict=True))


def _name(p: tuple[str, str, str]) -> str:
    return f"{p[0]} ({p[1]})"
