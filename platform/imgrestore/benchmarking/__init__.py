"""The platform's benchmark (`python pipelines/benchmark.py`): restoration quality against baselines on a
held-out set, and the throughput and memory of every stage, written to docs/benchmarks.md.

    runner.py      the stages, run in order; BenchConfig / BenchResult
    quality.py     baselines, the seed's recipe and split, scoring on the held-out set
    throughput.py  embedding, UMAP / HDBSCAN, Tune trial time, 512 px inference
    render.py      the two markdown sections
    report.py      machine line, memory sampling, markdown helpers
"""
