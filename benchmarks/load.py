"""Loading throughput (pages/s, MB/s) of a generated 200-page PDF and 1,000 HTML pages, next to embedding.

The goal of issue 12: loading is never more than 10% of index wall time. Both corpora are generated here
(fpdf2, tasks/demo/docs.py); each is loaded through the project's own loaders (tasks/ingest/loaders/), chunked with
the embedder's tokenizer, and a sample of its chunks is embedded to give chunks/s, from which the share of
loading in load + chunk + embed is computed. BeautifulSoup + markdownify (when installed) is measured on
the same HTML as the peer the HTML loader was chosen against.

    python benchmarks/load.py [--pages 200] [--html 1000] [--embed-sample 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.paths import configure_environment  # noqa: E402

configure_environment()

from tasks.demo.docs import html_page, pdf_bytes  # noqa: E402
from tasks.indexing.embed import load_embedder, resolve_embedder  # noqa: E402
from tasks.ingest.chunk import ChunkSettings, chunk_document  # noqa: E402
from tasks.ingest.loaders import loader_for  # noqa: E402

WORDS = ("harbour authority channel dredging budget vessel crane terminal berth cargo tide pilot quay ferry "
         "container schedule inspection safety report board").split()


def _prose(seed: int, words: int) -> str:
    out = [WORDS[(seed * 7 + i * 13) % len(WORDS)] for i in range(words)]
    return " ".join(out).capitalize() + f". Record {seed}."


def measure(name: str, files: list[tuple[str, bytes]], model, config, sample: int, units: str) -> dict:
    loader = loader_for(Path(files[0][0]).suffix)
    mb = sum(len(b) for _, b in files) / 1e6
    t0 = time.perf_counter()
    docs = [d for rel, raw in files for d in loader.load(rel, raw, 0.0)[0]]
    load_s = time.perf_counter() - t0
    n_units = sum(len(d.page_offsets or [1]) for d in docs)
    t1 = time.perf_counter()
    chunks = [c for d in docs for c in chunk_document(d, model.tokenizer, ChunkSettings(), config.max_length)]
    chunk_s = time.perf_counter() - t1
    texts = [c.text for c in chunks][:sample]
    model.embed_passages(texts[:16], progress=False)  # warm-up
    t2 = time.perf_counter()
    model.embed_passages(texts, progress=False)
    per_s = len(texts) / (time.perf_counter() - t2)
    embed_s = len(chunks) / per_s
    share = load_s / (load_s + chunk_s + embed_s)
    row = {"corpus": name, "files": len(files), "MB": round(mb, 2), units: n_units, "load_s": round(load_s, 2),
           f"{units}_per_s": round(n_units / load_s, 1), "MB_per_s": round(mb / load_s, 2), "chunks": len(chunks),
           "chunk_s": round(chunk_s, 2), "embed_chunks_per_s": round(per_s, 1), "embed_s_est": round(embed_s, 1),
           "load_share": round(share, 4)}
    print(json.dumps(row), flush=True)
    return row


def bs4_peer(pages: list[bytes]) -> dict | None:
    try:
        import bs4
        import markdownify
    except ImportError:
        return None
    t0 = time.perf_counter()
    for raw in pages:
        soup = bs4.BeautifulSoup(raw, "lxml")
        for tag in soup(["script", "style", "nav", "header", "footer", "aside"]):
            tag.decompose()
        markdownify.markdownify(str(soup.body))
    s = time.perf_counter() - t0
    row = {"peer": "bs4+markdownify", "pages": len(pages), "load_s": round(s, 2),
           "pages_per_s": round(len(pages) / s, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--html", type=int, default=1000)
    ap.add_argument("--embed-sample", type=int, default=256, help="chunks embedded to measure chunks/s")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    config = resolve_embedder("all-MiniLM-L6-v2")
    model = load_embedder(config, "cpu")
    t0 = time.perf_counter()
    pdf = pdf_bytes([" ".join(_prose(p * 10 + j, 40) for j in range(8)) for p in range(args.pages)], title="Big")
    print(f"generated a {args.pages}-page PDF ({len(pdf) / 1e6:.2f} MB) in {time.perf_counter() - t0:.1f}s")
    html = [html_page(f"Page {i}", [_prose(i * 10 + j, 30) for j in range(10)]).encode() for i in range(args.html)]
    rows = [measure("pdf", [("big.pdf", pdf)], model, config, args.embed_sample, "pages"),
            measure("html", [(f"p{i}.html", b) for i, b in enumerate(html)], model, config, args.embed_sample,
                    "pages")]
    peer = bs4_peer(html)
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows,
                                         "html_peer": peer}, indent=2) + "\n")


if __name__ == "__main__":
    main()
