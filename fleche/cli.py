"""The ``fleche`` command line."""

from __future__ import annotations

import click

from fleche._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="fleche")
def main() -> None:
    """Inspect and manage fleche caches."""
