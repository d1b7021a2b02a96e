"""`attrimp data ...`: attribute files and priors (data_attributes_cmd), images and the
synthetic world (data_images_cmd)."""

from __future__ import annotations

import typer

from attrimp.cli import data_attributes_cmd, data_images_cmd

app = typer.Typer(no_args_is_help=True)
data_attributes_cmd.register(app)
data_images_cmd.register(app)
