"""The Typer app: one module per command group, their shared options, error wording, output."""

from gradtool.cli.app import app, main

__all__ = ["app", "main"]
