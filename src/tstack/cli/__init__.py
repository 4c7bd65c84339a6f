"""The `tstack` command line: a thin room that parses, calls the API and hands records to report/."""

from tstack.cli.core import app, main, run

__all__ = ["app", "main", "run"]
