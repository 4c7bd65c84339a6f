"""`python -m tstack.cli`."""

from tstack.cli.core import main

main()
