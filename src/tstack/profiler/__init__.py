"""NLP-Perf: run the workload for real, time it, count cache misses, calibrate and validate the cost model.

Needs PyTorch (the `torch` extra); the analytic core does not import this package.
"""
