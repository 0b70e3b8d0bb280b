"""The command line: parse options, run the layers, print, exit. The only package that does.

One module per command (`check`, `dvh`, `audit`, `stores`: review/merge/dashboard, `listen`), the
options they share in `options`, the app and `main` in `application`. Every command module
imports only typer and `options` at module level and the rest inside its command, so
`sbrt-check check` never imports the audit, the store, the node, pynetdicom or the HTML report.
"""

from . import audit, check, dvh, listen, stores  # noqa: F401  (each registers its command on the app)
from .application import app, main

__all__ = ["app", "main"]
