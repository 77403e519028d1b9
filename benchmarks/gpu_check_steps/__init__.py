"""The steps of benchmarks/gpu_check.py (docs/GPU_CHECK.md), one module per concern."""
