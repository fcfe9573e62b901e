"""``fleche init``: a ``fleche.toml`` for the project in the working directory."""

from __future__ import annotations

import click


@click.command("init", short_help="Write a fleche.toml here: results persist in .fleche/.")
@click.option("--force", is_flag=True, help="Replace an existing fleche.toml.")
@click.argument(
    "directory",
    default=".",
    required=False,
    type=click.Path(file_okay=False, exists=True),
)
def init(directory: str, force: bool) -> None:
    """Make DIRECTORY (default: here) a fleche project: results persist in DIRECTORY/.fleche/.

    Writes DIRECTORY/fleche.toml naming a local cache in .fleche/ as the
    default, so every @fleche function run from DIRECTORY or below keeps its
    results there, without a cache() call. Adds .fleche/ to DIRECTORY/.gitignore
    when there is one. An existing fleche.toml is left alone unless --force.
    """
    from fleche.config import init_project

    for line in init_project(directory, force=force):
        click.echo(line)
