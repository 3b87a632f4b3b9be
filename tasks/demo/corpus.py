"""The demo corpus: HELM's model descriptions, fetched from the package registry.

No data-set hub is reachable here, but ``crfm-helm``'s wheel carries ``model_metadata.yaml``: 623
models with a creator, release date, parameter count and a prose description. We download the
wheel (never install it: it pulls half of PyPI), read that one file out of the zip, and turn it into
one JSONL document per model. The facts in it (training-token counts, context lengths, creators of
obscure models) are ones a small LM does not know, so answers with and without retrieval differ.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from storage.atomic import write_bytes_if_changed
from storage.paths import demo_dir, downloads_dir
from tasks.fetch import FetchError, pip_download

log = logging.getLogger(__name__)

HELM_SPEC = "crfm-helm==0.5.16"
HELM_METADATA_MEMBER = "helm/config/model_metadata.yaml"
HELM_METADATA_FILENAME = "helm_model_metadata.yaml"
CORPUS_FILENAME = "helm_models.jsonl"
DEMO_QUESTIONS = Path(__file__).resolve().parents[2] / "data" / "demo_questions.jsonl"

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
# [text](url), allowing one level of parentheses inside the url (Wikipedia-style links).
_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(\s*[^()\s]*(?:\([^()\s]*\)[^()\s]*)*\s*\)")
# Marks a converted link so that parentheses holding nothing but links ("([paper](…), [blog](…))")
# can be dropped: "(paper, blog)" is noise to a retriever and a reader alike.
_L, _R = "\x02", "\x03"
_LINKS_ONLY = rf"\s*{_L}[^{_R}]*{_R}(?:\s*(?:,|;|and)?\s*{_L}[^{_R}]*{_R})*\s*"
_LINKS_GROUP = re.compile(rf"\s*\({_LINKS_ONLY}\)")
# HELM leaves some of those groups unclosed: "… tokens. ([paper](…) Turbo is …".
_LINKS_GROUP_UNCLOSED = re.compile(rf"\s*\({_LINKS_ONLY}(?=\s|$)")
_ISO_DATE = re.compile(r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})\s*$")


class DemoDataError(RuntimeError):
    """The demo data could not be fetched or read; the message says what to do."""


def fetch_helm_metadata() -> Path:
    """Download the ``crfm-helm`` wheel (once) and copy its model metadata YAML to ``downloads_dir()``."""
    wheel = fetch_wheel(HELM_SPEC, downloads_dir())
    dest = downloads_dir() / HELM_METADATA_FILENAME
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(HELM_METADATA_MEMBER)
            except KeyError:
                raise DemoDataError(
                    f"{wheel}: has no {HELM_METADATA_MEMBER}; is {HELM_SPEC} the right version?"
                ) from None
    except zipfile.BadZipFile as exc:
        raise DemoDataError(f"{wheel}: not a readable wheel ({exc}); delete it and run again") from exc
    write_bytes_if_changed(dest, data)
    return dest


def build_demo_corpus(dest_dir: Path | None = None, *, metadata_path: Path | None = None) -> Path:
    """Write ``helm_models.jsonl`` (one document per model, sorted by id) and return its folder.

    ``metadata_path`` defaults to the YAML that :func:`fetch_helm_metadata` fetches. The file is only
    rewritten when its content changes, so a second build leaves it (and its mtime) alone.
    """
    dest_dir = Path(dest_dir) if dest_dir is not None else demo_dir() / "corpus"
    metadata_path = Path(metadata_path) if metadata_path is not None else fetch_helm_metadata()
    records, stats = helm_documents(metadata_path)
    if not records:
        raise DemoDataError(f"{metadata_path}: no model with a usable description")
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    dest_dir.mkdir(parents=True, exist_ok=True)
    changed = write_bytes_if_changed(dest_dir / CORPUS_FILENAME, lines.encode("utf-8"))
    log.info(
        "demo corpus: %d documents in %s (%s)%s",
        len(records),
        dest_dir / CORPUS_FILENAME,
        ", ".join(f"{k}: {v}" for k, v in sorted(stats.items())) or "nothing skipped",
        "" if changed else " — unchanged",
    )
    return dest_dir


def helm_documents(metadata_path: Path) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The corpus records for a HELM ``model_metadata.yaml``, sorted by id, plus counts of what was fixed
    or dropped (duplicate names, unreadable dates, entries without a usable description)."""
    try:
        doc = yaml.load(Path(metadata_path).read_text(encoding="utf-8"), Loader=_YamlLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DemoDataError(f"{metadata_path}: cannot read the HELM model metadata ({exc})") from exc
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, list):
        raise DemoDataError(f"{metadata_path}: expected a top-level 'models' list")
    stats: Counter[str] = Counter()
    by_id: dict[str, dict[str, Any]] = {}
    for entry in models:
        record = _record(entry, stats)
        if record is None:
            continue
        if record["id"] in by_id:
            # HELM 0.5.16 lists inceptionai/jais-family-6p7b-chat twice (identically); keep the first.
            stats["duplicate names dropped"] += 1
            continue
        by_id[record["id"]] = record
    return [by_id[k] for k in sorted(by_id)], stats


def _record(entry: Any, stats: Counter[str]) -> dict[str, Any] | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
        stats["entries without a name dropped"] += 1
        return None
    name = entry["name"].strip()
    title = _clean_inline(str(entry.get("display_name") or name))
    creator = _clean_inline(str(entry.get("creator_organization_name") or ""))
    description = clean_description(str(entry.get("description") or ""))
    if not description:
        stats["entries without a description dropped"] += 1
        return None
    # A few IBM entries spell the key "release", some as non-padded or impossible strings ("2024-18-4").
    raw_date = entry.get("release_date", entry.get("release"))
    release = _parse_date(raw_date)
    if raw_date is not None and release is None:
        stats["unreadable release dates"] += 1
    params = entry.get("num_parameters")
    # DALL-E 3 says 0: unknown, not zero.
    if isinstance(params, bool) or not isinstance(params, int) or params <= 0:
        if params is not None:
            stats["unusable parameter counts"] += 1
        params = None
    return {
        "id": name,
        "text": _paragraph(title, creator, release, params, description),
        "title": title,
        "creator": creator,
        "release_date": release.isoformat() if release else None,
        "num_parameters": params,
    }


def _paragraph(
    title: str, creator: str, release: dt.date | None, params: int | None, description: str
) -> str:
    """Spell the metadata out as prose so that it is retrievable and quotable like the description."""
    head = title.rstrip(".")
    if creator:
        head += f" was created by {creator.rstrip('.')}"
        if release:
            head += f" and released on {_date_words(release)}"
    elif release:
        head += f" was released on {_date_words(release)}"
    parts = [head + "."]
    if params:
        parts.append(f"It has {parameters_in_words(params)} parameters.")
    if _bare(description) != _bare(title):  # some descriptions only repeat the name ("Reka-Core")
        parts.append(description)
    return " ".join(parts)


def parameters_in_words(n: int) -> str:
    """8000000000 -> "8 billion", 2517652480 -> "about 2.52 billion" (three significant digits)."""
    units = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
    for i, (size, word) in enumerate(units):
        if n < size:
            continue
        value = float(f"{n / size:.3g}")
        if value >= 1000 and i > 0:  # 999.9 billion rounds up to 1 trillion
            size, word = units[i - 1]
            value = float(f"{n / size:.3g}")
        about = "" if value * size == n else "about "
        return f"{about}{value:g} {word}"
    return str(n)


def clean_description(text: str) -> str:
    """Markdown links to their text, link-only asides dropped, backticks and extra spaces removed."""
    text = _LINK.sub(lambda m: f"{_L}{m.group(1).strip()}{_R}", text)
    text = _LINKS_GROUP.sub("", text)
    text = _LINKS_GROUP_UNCLOSED.sub("", text)
    text = text.replace(_L, "").replace(_R, "").replace("`", "")
    # "… outputs. ([paper](…))." leaves "outputs.."; real ellipses ("...") stay.
    text = re.sub(r"(?<!\.)\.\.(?!\.)", ".", text)
    text = _clean_inline(re.sub(r"\s+,", ",", text))
    if text and text[-1] not in ".!?\"'":
        text += "."
    return text


def _bare(text: str) -> str:
    return re.sub(r"\W+", "", text).lower()


def _clean_inline(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _parse_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and (m := _ISO_DATE.match(value)):
        try:
            return dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            return None
    return None


def _date_words(d: dt.date) -> str:
    return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"


class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loading; the C loader when PyYAML has it (the file is 5,600 lines)."""


def fetch_wheel(spec: str, dest: Path) -> Path:
    """``pip download`` one pinned wheel into ``dest`` unless it is already there and readable."""
    try:
        return pip_download(spec, dest)
    except FetchError as exc:
        raise DemoDataError(str(exc)) from exc


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_demo_corpus())
