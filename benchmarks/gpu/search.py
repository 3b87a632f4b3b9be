"""GPU readiness, part ``search``: exact dense search (LoadedGeneration.search) at 1M and 10M x 384.

Matmul + topk per shard and the exact merge, fp16 and bf16, in store shards and as one matrix, at query batches
1024 and 32: queries/s, GB/s and the share of the device's memory bandwidth, against the bare ``topk(q @ X.T)``
kernel on the same matrix; FAISS GpuIndexFlatIP too where faiss has GPU support. Writes ``RESULTS/search.json``.
"""

from __future__ import annotations

import functools
import types

from common import (
    Deadline,
    Results,
    device_name,
    dtype_name,
    fmt,
    free,
    guarded,
    peak_bandwidth,
    pick_device,
    stub_tantivy,
    timed,
)


class _Rows:
    """LoadedGeneration.search needs only ``chunks.num_rows``."""

    def __init__(self, n: int):
        self.num_rows = n


def core_search(shards, offsets, queries, k: int, query_batch: int):
    """Fallback when tasks.retrieval.search cannot be imported: the same per-shard matmul + topk and merge, no tie
    checks."""
    import torch

    rows, scores = [], []
    for q0 in range(0, queries.shape[0], query_batch):
        q = queries[q0:q0 + query_batch]
        cs, cr = [], []
        for shard, off in zip(shards, offsets, strict=True):
            v, i = torch.topk(q.to(shard.device, shard.dtype) @ shard.T, min(k, shard.shape[0]), dim=1)
            cs.append(v.float().cpu())
            cr.append(i.cpu() + off)
        s, r = torch.cat(cs, 1), torch.cat(cr, 1)
        top = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
        rows.append(r.gather(1, top))
        scores.append(s.gather(1, top))
    return torch.cat(rows), torch.cat(scores)


def random_matrix(rows: int, dim: int, dtype, device: str, seed: int = 0):
    """Unit rows, made on the device block by block (no host copy, no float32 copy of the whole matrix)."""
    import torch

    out = torch.empty(rows, dim, dtype=dtype, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    step = 1 << 20
    for i in range(0, rows, step):
        blk = torch.randn(min(step, rows - i), dim, generator=g, device=device)
        out[i:i + step] = torch.nn.functional.normalize(blk, dim=1).to(dtype)
    return out


def cmd_search(args) -> int:
    import torch

    device = pick_device(args.smoke)
    dl = Deadline(args.budget)
    dim, k = 384, 10
    sizes = [4096, 16384] if args.smoke else [1_000_000, 10_000_000]
    # float32 is exact: ragbatch scores it with the kernel it measures fastest on the device (a 16-bit one on a
    # GPU, as a rule) and rescores the rows near the cut-off (tasks/retrieval/backends/rescore.py, issue 23)
    dtypes = ["float32", "float16", "bfloat16"]
    # (queries, query batch): ragbatch's default batch of 1024 (throughput) and a small batch of 32
    # (interactive use), where reading the matrix, not the matmul, bounds the time.
    qplans = [(128, 1024), (64, 32)] if args.smoke else [(4096, 1024), (256, 32)]
    repeats = 1 if args.smoke else 3
    res = Results(args.results, "search", device=device_name(device), dim=dim, k=k, smoke=args.smoke)
    stub_tantivy(res)
    try:
        from tasks.retrieval.search import LoadedGeneration
        try:
            from storage.store import COMPACT_SHARD_ROWS as store_shard
        except ImportError:
            store_shard = 65536
    except Exception as exc:
        res.note(f"the search module could not be imported ({type(exc).__name__}: {exc}); timing the same matmul + "
                 "topk core routine copied in benchmarks/gpu/search.py instead")
        LoadedGeneration, store_shard = None, 65536
    if args.smoke:
        store_shard = 4096
    peak, peak_src = peak_bandwidth()
    ctx = types.SimpleNamespace(device=device, dl=dl, dim=dim, k=k, qplans=qplans, repeats=repeats, res=res,
                                LoadedGeneration=LoadedGeneration, store_shard=store_shard, peak=peak, exact=None)
    res.data["meta"].update(peak_bw=peak, peak_bw_source=peak_src, store_shard_rows=store_shard,
                            implementation="tasks.retrieval.search.LoadedGeneration.search" if LoadedGeneration else
                            "core_search copy")
    print(f"exact search on {device_name(device)}: dim {dim}, k {k}; peak bandwidth "
          f"{fmt(peak and peak / 1e12, '.2f')} TB/s ({peak_src}); best of {repeats}")
    print(f"{'rows':>10s} {'dtype':8s} {'layout':18s} {'qbatch':>6s} {'queries':>7s} {'q/s':>9s} {'ms/batch':>8s} "
          f"{'matrix GB/s':>11s} {'% peak':>6s} {'+scores GB/s':>12s} {'% peak':>6s} {'recall':>6s} {'tied':>5s}")
    g = torch.Generator().manual_seed(1)
    ctx.q_all = torch.nn.functional.normalize(torch.randn(max(q for q, _ in qplans), dim, generator=g), dim=1)
    # ragbatch measurements still to do, to share the time left between them (each sizes itself to its share)
    ctx.remaining = len(sizes) * len(dtypes) * 2 * len(qplans)
    ctx.exact_by_rows = {}
    try:  # exact float32 top-k of a few queries at the smaller size, for recall of the half-precision matrices
        ctx.exact_by_rows[sizes[0]] = exact_topk(sizes[0], ctx)
    except Exception as exc:
        res.note(f"exact float32 reference at {sizes[0]} rows failed: {type(exc).__name__}: {exc}")
    free(device)
    for dt in dtypes:  # exact float32 at both sizes first, then float16 (the GPU default), then bfloat16
        for rows in sizes:
            ctx.exact = ctx.exact_by_rows.get(rows)
            if dl.left() < (3 if args.smoke else 15):
                res.note(f"{rows} rows {dt}: skipped, the part's time cap is near")
                ctx.remaining -= 2 * len(qplans)
                continue
            with guarded(res, f"{rows} rows {dt}"):
                search_matrix(rows, getattr(torch, dt), ctx)
            free(device)
    res.finish()
    return 0 if res.data["rows"] else 1


def exact_topk(rows: int, ctx):
    import torch

    x32 = random_matrix(rows, ctx.dim, torch.float32, ctx.device)
    return torch.topk(ctx.q_all[:256].to(ctx.device) @ x32.T, ctx.k, dim=1).indices.cpu()


def search_row(ctx, row: dict) -> None:
    ctx.res.add(row)
    pk = row["peak_bw"]
    print(f"{row['rows']:10d} {row['dtype']:8s} {row['layout']:18s} {row['query_batch']:6d} {row['queries']:7d} "
          f"{row['qps']:9.0f} {row['ms_per_batch']:8.2f} {row['matrix_gbs']:11.1f} "
          f"{fmt(pk and 100 * row['matrix_gbs'] * 1e9 / pk):>6s} "
          f"{row['traffic_gbs']:12.1f} {fmt(pk and 100 * row['traffic_gbs'] * 1e9 / pk):>6s} "
          f"{fmt(row.get('recall_vs_fp32'), '.4f'):>6s} {fmt(row.get('tied_share'), '.2f'):>5s}", flush=True)


def ragbatch_search(index, q, k: int, qb: int):
    hits = index.search(q, k, query_batch=qb)
    return hits.rows, hits.scores


def search_matrix(rows: int, dtype, ctx) -> None:
    """One random matrix: ragbatch in both shard layouts and both query batches, the bare kernel, FAISS."""
    import torch

    x = random_matrix(rows, ctx.dim, dtype, ctx.device)
    dt, elem, k = dtype_name(dtype), x.element_size(), ctx.k
    for layout, per in ((f"{ctx.store_shard}-row shards", ctx.store_shard), ("one matrix", rows)):
        shards = [x[i:i + per] for i in range(0, rows, per)]
        offsets = list(range(0, rows, per))
        if ctx.LoadedGeneration is not None:
            try:
                index = ctx.LoadedGeneration(store=None, generation=1, embedder={}, shards=shards, offsets=offsets,
                                       chunks=_Rows(rows))
            except TypeError:
                index = ctx.LoadedGeneration(None, 1, {}, shards, offsets, _Rows(rows))
            call = functools.partial(ragbatch_search, index)  # call(queries, k, query_batch)
            scoring = getattr(getattr(index, "dense", None), "scoring", None)
            if scoring is not None:  # exact float32: the matrix the kernel reads is its own copy
                layout = f"{layout}, exact via {scoring.kernel.name}"
                elem = scoring.blocks[0].element_size()
        else:
            call = functools.partial(core_search, shards, offsets)
        for nq, qb in ctx.qplans:
            slot = max(1.0, (ctx.dl.left() - 5) / max(ctx.remaining, 1))  # seconds this measurement may take
            ctx.remaining -= 1
            if ctx.dl.left() < 5:
                ctx.res.note(f"{rows} {dt} {layout} query batch {qb}: skipped, the part's time cap is near")
                continue
            q = ctx.q_all[:nq].to(ctx.device)
            call(q[:8], k, 8)  # warm-up: kernels, allocator
            # one timed batch first; it sizes the rest (ties at the k-th score make ragbatch re-sort those
            # queries one by one, which at half precision and millions of rows can cost seconds per batch)
            t1, (hit_rows, _) = timed(ctx.device, call, q[:qb], k, qb)
            n_batches = max(1, min(-(-nq // qb), int(slot / 2 / t1)))
            nq = min(nq, n_batches * qb)
            best = t1 if nq <= qb else float("inf")
            for _ in range(max(0, min(ctx.repeats, int((slot - t1) / (t1 * n_batches))))):
                t, (hit_rows, _) = timed(ctx.device, call, q[:nq], k, qb)
                best = min(best, t)
            if best == float("inf"):  # no time for a full run: the one timed batch is the figure
                best, nq = t1, min(qb, nq)
            batches = -(-nq // qb)
            mat = rows * ctx.dim * elem * batches
            traffic = mat + 3 * rows * min(qb, nq) * elem * batches  # scores: written, read by topk and tie check
            row = {"part": "ragbatch" if ctx.LoadedGeneration else "core copy", "rows": rows, "dtype": dt,
                   "layout": layout, "shards": len(shards), "queries": nq, "query_batch": qb, "seconds": best,
                   "qps": nq / best, "ms_per_batch": 1e3 * best / batches, "matrix_gbs": mat / best / 1e9,
                   "traffic_gbs": traffic / best / 1e9, "peak_bw": ctx.peak}
            if ctx.exact is not None:
                m = min(ctx.exact.shape[0], hit_rows.shape[0])
                got = hit_rows[:m].cpu()
                row["recall_vs_fp32"] = sum(len(set(a.tolist()) & set(b.tolist()))
                                            for a, b in zip(got, ctx.exact[:m], strict=True)) / (m * k)
            search_row(ctx, row)
    # the bare kernel, for reference: one matmul + topk over the whole matrix, nothing else
    for _, qb in ctx.qplans:
        if ctx.dl.left() < 5:
            continue
        q = ctx.q_all[:qb].to(ctx.device, dtype)
        bare_topk(q, x, k)
        best = min(timed(ctx.device, bare_topk, q, x, k)[0] for _ in range(ctx.repeats))
        mat = rows * ctx.dim * elem
        search_row(ctx, {"part": "bare matmul+topk", "rows": rows, "dtype": dt, "layout": "bare matmul+topk",
                         "shards": 1, "queries": q.shape[0], "query_batch": qb, "seconds": best,
                         "qps": q.shape[0] / best, "ms_per_batch": 1e3 * best, "matrix_gbs": mat / best / 1e9,
                         "traffic_gbs": (mat + 2 * rows * q.shape[0] * elem) / best / 1e9, "peak_bw": ctx.peak,
                         "tied_share": tied_share(q, x, k)})
    if dtype == torch.float16:
        faiss_gpu(ctx.res, x, ctx.q_all, k, ctx.device, ctx.dl, ctx.peak)


def bare_topk(q, x, k: int):
    import torch

    return torch.topk(q @ x.T, k, dim=1)


def tied_share(q, x, k: int) -> float:
    """Share of queries whose k-th score is tied with a row outside the top k (in one matrix): the queries
    ragbatch's exact tie-breaking re-sorts one by one."""
    import torch

    s = q @ x.T
    vals = torch.topk(s, k, dim=1).values
    thr = vals[:, -1:]
    return float(((s == thr).sum(1) > (vals == thr).sum(1)).float().mean())


def faiss_gpu(res: Results, x, q_all, k: int, device: str, dl: Deadline, peak) -> None:
    """FAISS GpuIndexFlatIP (float16 storage) on the same rows, only where faiss has GPU support."""
    if res.data.get("faiss_checked") is None:
        res.data["faiss_checked"] = True
        try:
            import faiss
        except ImportError:
            res.note("FAISS GPU: skipped, faiss is not installed here (carry a faiss-gpu wheel to include it)")
            res.data["faiss"] = None
            return
        if not hasattr(faiss, "StandardGpuResources") or getattr(faiss, "get_num_gpus", lambda: 0)() < 1:
            res.note(f"FAISS GPU: skipped, faiss {getattr(faiss, '__version__', '?')} here has no GPU support")
            res.data["faiss"] = None
            return
        res.data["faiss"] = faiss.__version__
    if not res.data.get("faiss") or dl.left() < 30:
        return
    import faiss

    with guarded(res, f"FAISS GPU at {x.shape[0]} rows"):
        rows, dim = x.shape
        gres = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = 0
        cfg.useFloat16 = True
        index = faiss.GpuIndexFlatIP(gres, dim, cfg)
        for i in range(0, rows, 1 << 20):
            index.add(x[i:i + (1 << 20)].float().cpu().numpy())
        qn = q_all.numpy()
        index.search(qn[:16], k)
        best = min(timed(device, index.search, qn, k)[0] for _ in range(3))
        mat = rows * dim * 2
        row = {"part": "faiss", "rows": rows, "dtype": "float16", "layout": "GpuIndexFlatIP", "shards": 1,
               "queries": len(qn), "query_batch": len(qn), "seconds": best, "qps": len(qn) / best,
               "ms_per_batch": 1e3 * best, "matrix_gbs": mat / best / 1e9, "traffic_gbs": mat / best / 1e9,
               "peak_bw": peak}
        res.add(row)
        print(f"{rows:10d} float16  {'FAISS GpuIndexFlatIP':18s} {len(qn):6d} {row['qps']:9.0f} "
              f"{row['ms_per_batch']:8.2f} {row['matrix_gbs']:11.1f}", flush=True)
