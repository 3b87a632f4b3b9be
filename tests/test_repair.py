"""Issue 22, finding 8: a damaged store can be repaired (real flows, real stores, local and S3 on loopback).

After one shard was deleted (or index.json named a missing one), `verify` named it and `search` refused, but a
re-run of `index` reported "unchanged 4", exited 0 and left the store broken. `index --repair` verifies first,
re-embeds the documents of the missing or corrupt shards and commits a consistent generation.
"""

from __future__ import annotations

from typer.testing import CliRunner

from conftest import write_corpus
from storage.store import open_store

DOCS = {f"d{i}.txt": f"Document {i} tells of river number {i} and its {i * 7} bridges." for i in range(4)}


def _search_ok(store: str) -> list[str]:
    from tasks.retrieval.search import search

    (res,), _ = search(store, ["river number 2 bridges"], k=1, retriever="dense")
    return res.doc_ids


def _damage_and_repair(store: str, docs, delete) -> None:
    from flows.index import run_index
    from ragbatch.cli import app

    run_index(docs, store, batch_docs=1)  # one shard per document
    victim = next(r["shard"] for r in open_store(store).manifest().to_pylist() if r["doc_id"] == "d2.txt")
    delete(victim)
    rep = open_store(store).verify()
    assert rep.problems and rep.damaged_shards == [victim]
    res = CliRunner().invoke(app, ["verify", "--store", store])
    assert res.exit_code == 1 and "--repair" in " ".join(res.output.split()), res.output
    plain = run_index(docs, store, batch_docs=1)
    assert plain.unchanged == 4 and plain.repaired == 0 and open_store(store).verify().problems  # trusts the commit
    fixed = run_index(docs, store, batch_docs=1, repair=True)
    assert (fixed.repaired, fixed.changed, fixed.unchanged, fixed.chunks_embedded) == (1, 1, 3, 1)
    after = open_store(store).verify()
    assert after.problems == [] and after.damaged_shards == [] and after.documents == 4
    assert _search_ok(store) == ["d2.txt"]
    again = run_index(docs, store, batch_docs=1, repair=True)
    assert (again.repaired, again.unchanged, again.chunks_embedded) == (0, 4, 0)


def test_repair_a_local_store(prefect_harness, tmp_path):
    store = tmp_path / "store"
    docs = write_corpus(tmp_path / "docs", DOCS)
    _damage_and_repair(str(store), docs, lambda name: next((store / "shards").glob(f"{name}*.safetensors")).unlink())


def test_repair_an_s3_store(prefect_harness, s3, tmp_path):
    import boto3

    url = f"s3://{s3.bucket()}/store"
    bucket = url.split("/")[2]
    client = boto3.client("s3", endpoint_url=s3.env["AWS_ENDPOINT_URL"])

    def delete(name: str) -> None:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"store/shards/{name}")["Contents"]]
        client.delete_object(Bucket=bucket, Key=next(k for k in keys if k.endswith(".safetensors")))

    _damage_and_repair(url, write_corpus(tmp_path / "docs", DOCS), delete)
