"""Developer tools: benchmarks (``tools.bench``) and data utilities."""
