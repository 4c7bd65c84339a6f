"""`tstack accel`: Gemmini-style accelerator model: whole-model latency and energy, GEMM mapping, design-space exploration. torch is imported inside commands so `tstack --help` stays fast."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Gemmini-style accelerator model: whole-model latency and energy, GEMM mapping, design-space exploration.")
