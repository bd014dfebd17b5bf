"""`mnx`: the command line, a thin layer over the library; rendering of reports lives here."""

from .app import app, main

__all__ = ["app", "main"]
