"""The platform's benchmark (`python pipelines/benchmark.py`): restoration quality against the classical
restorers on a held-out set (the search's champion, its ablations, the seed's recipe), and the throughput and
memory of every stage, written to docs/benchmarks.md.

    runner.py          the stages, run in order; BenchConfig / BenchResult
    quality.py         test set, classical and colour-prior predictors, the seed's split, ablations, 1-CPU runs
    throughput.py      embedding, UMAP / HDBSCAN, Tune trial time, 512 px inference
    render_quality.py  the quality section's markdown
    render.py          the throughput section's markdown (and the entry point for both)
    report.py          machine line, memory sampling, markdown helpers
"""
