"""Top-level model commands: `attrimp train` / `attrimp ablate` (ablate_cmd) and
`attrimp evaluate` (evaluate_cmd)."""

from __future__ import annotations

import typer

from attrimp.cli import ablate_cmd, evaluate_cmd, train_cmd


def register(app: typer.Typer) -> None:
    evaluate_cmd.register(app)
    train_cmd.register(app)
    ablate_cmd.register(app)
