"""Gemmini-style accelerator model: hardware description, GEMM mapping and timing, nonlinear units, energy, fusion, DSE."""
