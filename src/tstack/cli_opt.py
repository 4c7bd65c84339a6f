"""`tstack opt`: NLP-Opt: partitioned and zero-skipping attention/FFN kernels, their benchmarks and accuracy on MiniLM. torch is imported inside commands so `tstack --help` stays fast."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="NLP-Opt: partitioned and zero-skipping attention/FFN kernels, their benchmarks and accuracy on MiniLM.")
