"""`python -m sbrt_check` runs the CLI."""

from .cli import main

main()
