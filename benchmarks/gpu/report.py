"""GPU readiness, part ``report``: the summary table of env.json and the parts' results, gpu.json and gpu.md."""

from __future__ import annotations

import json
from pathlib import Path

from common import PARTS, fmt


def cmd_report(args) -> int:
    folder = Path(args.results)
    status = dict(s.split("=", 1) for s in (args.status or []))
    env = json.loads((folder / "env.json").read_text()) if (folder / "env.json").exists() else {}
    parts = {}
    for p in PARTS:
        f = folder / f"{p}.json"
        parts[p] = json.loads(f.read_text()) if f.exists() else {"part": p, "status": "no results", "rows": [],
                                                                   "notes": []}
        rc = status.get(p)
        if rc is not None:
            parts[p]["exit"] = int(rc)
            if rc in ("124", "137"):
                parts[p]["status"] = "killed at its time cap (rows before that are kept)"
            elif rc != "0" and parts[p]["status"] == "done":
                parts[p]["status"] = f"done with exit {rc}"
            elif rc != "0":
                parts[p]["status"] = f"failed (exit {rc})"
    v = env.get("versions", {})
    head = (f"{env.get('gpu') or 'no GPU (CPU smoke)'}; torch {v.get('torch')}, transformers {v.get('transformers')}, "
            f"sentence-transformers {v.get('sentence-transformers')}; peak memory bandwidth "
            f"{fmt(env.get('peak_bw') and env['peak_bw'] / 1e12, '.2f')} TB/s ({env.get('peak_bw_source', 'n/a')}; "
            f"datasheet {fmt(env.get('datasheet_bw') and env['datasheet_bw'] / 1e12, '.2f')}), "
            f"device copy {fmt(env.get('copy_bw') and env['copy_bw'] / 1e12, '.2f')} TB/s"
            + ("; SMOKE MODE: tiny sizes, the figures mean nothing" if env.get("smoke") else ""))
    md = ["# GPU readiness (benchmarks/gpu.sh)", "", head, ""]
    lines = ["", "=" * 100, "SUMMARY  " + head, "=" * 100]

    e = parts["embed"]
    lines.append(f"embedding, passages/s ({e.get('meta', {}).get('dtype', '?')}) [{e['status']}]")
    lines.append(f"  {'model shape':22s} {'pool':4s} {'tok/psg':>7s} {'ragbatch':>9s} {'ST bs32':>9s} {'ST bs128':>9s} "
                 f"{'ratio':>6s} {'vs best':>7s} {'min cos':>8s}")
    md += [f"## Embedding, ragbatch `Embedder` vs sentence-transformers ({e['status']})", "",
           "| model shape | pooling | tokens/passage | ragbatch passages/s | ST bs32 | ST bs128 | ratio (vs bs32) | "
           "vs best ST | min cosine |", "|---|---|---|---|---|---|---|---|---|"]
    for r in e["rows"]:
        lines.append(f"  {r['model']:22s} {r['pooling']:4s} {r['tokens_per_passage']:7.1f} {r['ragbatch_per_s']:9.1f} "
                     f"{r['st32_per_s']:9.1f} {fmt(r['st128_per_s']):>9s} {r['ratio_vs_st32']:5.2f}x "
                     f"{r['ratio_vs_best_st']:6.2f}x {r['min_cos']:8.5f}")
        md.append(f"| {r['model']} | {r['pooling']} | {r['tokens_per_passage']:.0f} | {r['ragbatch_per_s']:.0f} | "
                  f"{r['st32_per_s']:.0f} | {fmt(r['st128_per_s'], '.0f')} | **{r['ratio_vs_st32']:.2f}×** | "
                  f"{r['ratio_vs_best_st']:.2f}× | {r['min_cos']:.5f} |")

    s = parts["search"]
    bare = {(r["rows"], r["dtype"], r["query_batch"]): r["qps"] for r in s["rows"] if r["part"] == "bare matmul+topk"}
    lines.append(f"exact search, k=10, dim 384; ratio = ragbatch / bare matmul+topk (FAISS row: ragbatch "
                 f"{s.get('meta', {}).get('store_shard_rows', '?')}-row shards, batch 1024 / FAISS) [{s['status']}]")
    lines.append(f"  {'rows':>10s} {'dtype':8s} {'layout':20s} {'qbatch':>6s} {'q/s':>9s} {'matrix GB/s':>11s} "
                 f"{'% peak':>6s} {'+scores GB/s':>12s} {'ratio':>6s} {'recall':>6s} {'tied':>5s}")
    md += ["", f"## Exact dense search ({s['status']})", "",
           "Ratio: ragbatch / the bare `topk(q @ X.T)` kernel on the same matrix and query batch (FAISS rows: "
           "ragbatch in store shards at batch 1024 / FAISS). Tied share (bare rows): queries whose k-th score ties "
           "a row outside the top k in one matrix; ragbatch re-sorts each such query (per shard) to break ties "
           "by row order.", "",
           "| rows | dtype | layout | query batch | queries/s | ms/batch | matrix GB/s | % of peak | "
           "matrix+scores GB/s | ratio | recall@10 vs fp32 | tied share |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        pk = r.get("peak_bw")
        pct = fmt(pk and 100 * r["matrix_gbs"] * 1e9 / pk)
        if r["part"] == "faiss":
            ours = next((o["qps"] for o in s["rows"] if o["part"] not in ("faiss", "bare matmul+topk")
                         and o["rows"] == r["rows"] and o["dtype"] == "float16" and o["query_batch"] >= 1024
                         and o["shards"] > 1), None)
            ratio = fmt(ours and ours / r["qps"], ".2f")
        elif r["part"] == "bare matmul+topk":
            ratio = "1.00"
        else:
            b = bare.get((r["rows"], r["dtype"], r["query_batch"]))
            ratio = fmt(b and r["qps"] / b, ".2f")
        lines.append(f"  {r['rows']:10d} {r['dtype']:8s} {r['layout']:20s} {r['query_batch']:6d} {r['qps']:9.0f} "
                     f"{r['matrix_gbs']:11.1f} {pct:>6s} {r['traffic_gbs']:12.1f} {ratio:>5s}x "
                     f"{fmt(r.get('recall_vs_fp32'), '.4f'):>6s} {fmt(r.get('tied_share'), '.2f'):>5s}")
        md.append(f"| {r['rows']:,} | {r['dtype']} | {r['layout']} | {r['query_batch']} | {r['qps']:,.0f} | "
                  f"{r['ms_per_batch']:.2f} | {r['matrix_gbs']:.1f} | {pct} | {r['traffic_gbs']:.1f} | {ratio}× | "
                  f"{fmt(r.get('recall_vs_fp32'), '.4f')} | {fmt(r.get('tied_share'), '.2f')} |")

    gp = parts["generate"]
    lines.append(f"generation, new tokens/s ({gp.get('meta', {}).get('dtype', '?')}, "
                 f"{gp.get('meta', {}).get('prompts', '?')} prompts) [{gp['status']}]")
    lines.append(f"  {'model shape':14s} {'mode':44s} {'tok/s':>8s} {'ratio':>6s} {'pad/real':>8s} {'same':>7s}")
    md += ["", f"## Generation, batched `generate_ids` vs one HF `generate` per prompt ({gp['status']})", "",
           "| model shape | mode | prompts | new tokens | seconds | tokens/s | ratio | padded/real | same as single |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in gp["rows"]:
        same = f"{r['same_as_single']}/{r['compared']}" if r.get("same_as_single") is not None else ""
        ratio = fmt(r.get("ratio_vs_single"), ".2f")
        lines.append(f"  {r['model']:14s} {r['mode']:44s} {r['tokens_per_s']:8.1f} {ratio:>5s}x "
                     f"{fmt(r.get('padding_ratio'), '.3f'):>8s} {same:>7s}")
        md.append(f"| {r['model']} | {r['mode']} | {r['prompts']} | {r['new_tokens']} | {r['seconds']:.2f} | "
                  f"{r['tokens_per_s']:.1f} | {ratio}× | {fmt(r.get('padding_ratio'), '.3f')} | {same} |")
    for p in PARTS:  # a part with no rows says so instead of leaving an empty table
        if not parts[p]["rows"]:
            lines.append(f"  ({p}: no rows; see its output above and the notes)")
    notes = [f"{p}: {n}" for p in PARTS for n in parts[p].get("notes", [])]
    if notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in notes]
        md += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    print("\n".join(lines))
    (folder / "gpu.json").write_text(json.dumps({"env": env, **parts}, indent=1, default=str) + "\n")
    (folder / "gpu.md").write_text("\n".join(md) + "\n")
    print(f"\nwritten: {folder / 'gpu.json'}, {folder / 'gpu.md'}")
    return 0
