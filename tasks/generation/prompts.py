"""Prompt templates as data (``tasks/generation/prompts.toml``), checked at load, turned into chat messages.

The templates were chosen by measurement on a SQuAD-dev tuning sample (``benchmarks/prompts.py``), not by
taste, so they live in a file beside the model presets where a variant can be added and measured without
touching code. Both arms of a question share the same instructions; the RAG arm only adds its passages, so
the no-retrieval answer stays a fair baseline.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass, fields
from pathlib import Path

import tomllib

PROMPTS_FILE = Path(__file__).with_name("prompts.toml")
Message = dict[str, str]


class PromptError(ValueError):
    """A prompt template in the prompts file is malformed."""


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt variant. ``{question}``, ``{passages}``, ``{n}``, ``{doc_id}``, ``{text}`` are filled in."""

    name: str
    system: str  # shared by both arms
    user: str  # the no-RAG user turn: must hold {question}
    rag_user: str  # the RAG user turn: must hold {question} and {passages}
    passage: str = "[{n}] {text}"  # one numbered passage: {n}, {doc_id}, {text}
    separator: str = "\n"  # between passages
    empty: str = "(none found)"  # the {passages} of a question with no retrieved chunk
    example_question: str = ""  # an optional worked example, shown to both arms as an earlier exchange
    example_passage: str = ""
    example_answer: str = ""
    note: str = ""  # what this variant tries (documentation only)

    def messages(self, question: str, contexts: list[tuple[str, str]] | None) -> list[Message]:
        """Chat messages for one question; ``contexts`` are (doc_id, text) passages, None for no retrieval."""
        msgs: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        if self.example_question:
            ctx = None if contexts is None else [("example", self.example_passage)]
            msgs += [{"role": "user", "content": self._user(self.example_question, ctx)},
                     {"role": "assistant", "content": self.example_answer}]
        msgs.append({"role": "user", "content": self._user(question, contexts)})
        return msgs

    def _user(self, question: str, contexts: list[tuple[str, str]] | None) -> str:
        question = question.strip()
        if contexts is None:
            return self.user.format(question=question)
        passages = self.separator.join(
            self.passage.format(n=i, doc_id=doc_id, text=" ".join(text.split()))
            for i, (doc_id, text) in enumerate(contexts, 1)
        )
        return self.rag_user.format(question=question, passages=passages or self.empty)


def _placeholders(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def _check(name: str, raw: dict) -> PromptTemplate:
    known = {f.name for f in fields(PromptTemplate)} - {"name"}
    if unknown := set(raw) - known:
        raise PromptError(f"{PROMPTS_FILE}: prompt {name!r} has unknown keys {sorted(unknown)}")
    if missing := {"system", "user", "rag_user"} - set(raw):
        raise PromptError(f"{PROMPTS_FILE}: prompt {name!r} lacks {sorted(missing)}")
    rules = {"user": ({"question"}, {"question"}), "rag_user": ({"question", "passages"}, {"question", "passages"}),
             "passage": (set(), {"n", "doc_id", "text"})}
    for key, (need, allowed) in rules.items():
        got = _placeholders(raw.get(key, ""))
        if need - got or got - allowed:
            raise PromptError(f"{PROMPTS_FILE}: prompt {name!r} field {key!r} must use {sorted(need)} "
                              f"(may use {sorted(allowed)}); it uses {sorted(got)}")
    return PromptTemplate(name=name, **raw)


@functools.cache
def load_prompts(path: Path = PROMPTS_FILE) -> tuple[str, dict[str, PromptTemplate]]:
    """(default template name, all templates by name) from the prompts file."""
    data = tomllib.loads(path.read_text())
    templates = {name: _check(name, raw) for name, raw in data.get("templates", {}).items()}
    default = data.get("default")
    if default not in templates:
        raise PromptError(f"{path}: default prompt {default!r} is not one of {sorted(templates)}")
    return default, templates


def get_prompt(name: str | None = None) -> PromptTemplate:
    """The template called ``name`` (default: the file's ``default``), or a clear error listing the others."""
    default, templates = load_prompts()
    key = name or default
    if key not in templates:
        raise PromptError(f"unknown prompt {key!r}; {PROMPTS_FILE.name} has {', '.join(sorted(templates))}")
    return templates[key]
