"""Peers for `reimagen bench kb`, run on the very workload reimagen measured.

Usage:
    reimagen bench kb --export /tmp/kb-workload --json > reimagen.json
    python3 training/bench_peers.py /tmp/kb-workload [EF_CONSTRUCTION EF] > peers.json

Reads captions.txt, queries.txt, vectors.f32 and query_vectors.f32 (little-endian f32, 512-d),
then measures tantivy (Python binding) BM25 and hnswlib HNSW (M=16, ef_construction=200 and
ef=100 unless given) the way reimagen is measured: ingest time, p50/p99 latency at k=10, recall@10 against
exact search on the first 200 queries.
"""

import json
import sys
import tempfile
import time

import hnswlib
import numpy as np
import tantivy

DIM = 512


def percentiles(samples_ms):
    s = np.sort(np.array(samples_ms))
    return {"p50_ms": float(s[int(round((len(s) - 1) * 0.5))]), "p99_ms": float(s[int(round((len(s) - 1) * 0.99))])}


def main(folder, ef_construction=200, ef=100):
    captions = open(f"{folder}/captions.txt").read().splitlines()
    queries = open(f"{folder}/queries.txt").read().splitlines()
    vectors = np.fromfile(f"{folder}/vectors.f32", dtype="<f4").reshape(-1, DIM)
    qvectors = np.fromfile(f"{folder}/query_vectors.f32", dtype="<f4").reshape(-1, DIM)

    # tantivy BM25
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("caption", stored=False)
    builder.add_integer_field("n", stored=True)
    schema = builder.build()
    tmp = tempfile.mkdtemp()
    index = tantivy.Index(schema, path=tmp)
    t0 = time.perf_counter()
    writer = index.writer(heap_size=64_000_000, num_threads=1)
    for i, c in enumerate(captions):
        writer.add_document(tantivy.Document(caption=c, n=i))
    writer.commit()
    writer.wait_merging_threads()
    bm25_ingest = time.perf_counter() - t0
    index.reload()
    searcher = index.searcher()
    bm25 = []
    for q in queries:
        words = " ".join(q.split()[:-1])  # drop the unique "qN" tag reimagen adds
        t = time.perf_counter()
        parsed = index.parse_query(words, ["caption"])
        searcher.search(parsed, 10).hits
        bm25.append((time.perf_counter() - t) * 1e3)

    # hnswlib
    t0 = time.perf_counter()
    graph = hnswlib.Index(space="ip", dim=DIM)
    graph.init_index(max_elements=len(vectors), ef_construction=ef_construction, M=16)
    graph.add_items(vectors, np.arange(len(vectors)), num_threads=2)
    hnsw_ingest = time.perf_counter() - t0
    graph.set_ef(ef)
    graph.set_num_threads(1)
    lat = []
    for q in qvectors:
        t = time.perf_counter()
        graph.knn_query(q.reshape(1, -1), k=10)
        lat.append((time.perf_counter() - t) * 1e3)
    n = min(200, len(qvectors))
    truth = np.argsort(-(qvectors[:n] @ vectors.T), axis=1)[:, :10]
    found, _ = graph.knn_query(qvectors[:n], k=10)
    recall = float(np.mean([len(set(found[i]) & set(truth[i])) / 10 for i in range(n)]))

    json.dump(
        {
            "pairs": len(captions),
            "tantivy_py": {"ingest_secs": bm25_ingest, **percentiles(bm25)},
            "hnswlib": {"ingest_secs": hnsw_ingest, "recall_at_10": recall, "ef": ef, "ef_construction": ef_construction, **percentiles(lat)},
        },
        sys.stdout,
        indent=2,
    )
    print()


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:4]))
