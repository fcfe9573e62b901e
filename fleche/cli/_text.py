"""Plain text for the inspection commands: counted nouns and aligned ``key  value`` lines."""

from __future__ import annotations

import click


def _n(count: int, noun: str) -> str:
    """``1 call``, ``2 calls``, ``10,000 calls``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _print_pairs(lines: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        click.echo(f"{k:<{width}}  {v}".rstrip())
