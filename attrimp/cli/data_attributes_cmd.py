"""`attrimp data fetch-attributes` and `attrimp data priors`: the identity-level attribute files.

Heavy imports (scipy, pandas, matplotlib) happen inside the commands so `attrimp --help` stays
instant. User mistakes raise `AttrimpError`s, which the CLI prints as one sentence (exit 2).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from attrimp.errors import ConfigError, DataError

console = Console(soft_wrap=True)


def fetch_attributes(
    dataset: str = typer.Argument(
        ...,
        help="A dataset with a public attribute file: market1501, dukemtmc or a plug-in's.",
        show_default=False,
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write the attribute file into."),
    url: str | None = typer.Option(
        None,
        "--url",
        help="Download from this URL (a mirror, or file://) instead of the public one.",
    ),
) -> None:
    """Download a dataset's public attribute annotation file and verify its sha256.

    Example: attrimp data fetch-attributes market1501 --out data/  (offline: --url file:///path/market_attribute.mat)
    """
    from attrimp.data.annotations import fetch_attribute_file

    spec = _dataset(dataset, "fetch-attributes").attribute_source
    path, downloaded = fetch_attribute_file(spec, out, url=url, progress=True)
    state = "downloaded and verified" if downloaded else "already present, checksum verified"
    console.print(f"{path}: {state} (sha256 {spec.sha256[:12]}…).", highlight=False)
    console.print(f"Licence: {spec.licence}.", highlight=False)


def priors(
    dataset: str = typer.Option(
        ...,
        "--dataset",
        help="market1501, dukemtmc, manifest or a plug-in dataset.",
        show_default=False,
    ),
    attributes: Path = typer.Option(
        ...,
        "--attributes",
        help="The attribute file (.mat or CSV), or for `manifest` the manifest CSV "
        "(path, pid, camid, split + attribute columns).",
        show_default=False,
    ),
    out: Path = typer.Option(..., "--out", help="Folder for priors.csv and priors.png."),
    schema: Path | None = typer.Option(
        None, "--schema", help="Schema TOML (required for manifest; overrides a built-in one)."
    ),
) -> None:
    """Prior of every value of every attribute group per split (Figure 4): priors.csv + priors.png.

    Example: attrimp data priors --dataset market1501 --attributes data/market_attribute.mat --out runs/priors
    """
    from attrimp.data.priors import write_priors
    from attrimp.model.schema import load_schema

    ds = _dataset(dataset, "priors")
    if ds.schema is None and schema is None:
        raise ConfigError(
            f"--dataset {ds.name} needs --schema, the TOML that describes its columns."
        )
    if not attributes.is_file():
        raise DataError(_missing_input(ds, attributes))
    table = ds.read_attributes(attributes, load_schema(schema) if schema is not None else None)
    for line in table.report.lines():
        console.print(line, highlight=False)
    csv_path, png_path = write_priors(table, out)
    console.print(f"Wrote {csv_path} and {png_path}.", highlight=False)


def _dataset(name: str, command: str):
    """The registered dataset ``name`` that supports ``command``; else one sentence listing
    those that do (the registry decides, so a plug-in dataset is offered here too)."""
    from attrimp.data.datasets import DATASETS, dataset_names

    key = name.lower().replace("-", "")
    if command == "fetch-attributes":
        able = dataset_names(fetch=True)
        if key not in able:
            raise ConfigError(
                f"No public attribute file is known for {name!r}; choose {' or '.join(able)}."
            )
    else:
        able = dataset_names(priors=True)
        if key not in able:
            raise ConfigError(f"Unknown dataset {name!r}; use {', '.join(able)}.")
    return DATASETS.load(key)


def _missing_input(ds, path: Path) -> str:
    """The sentence for a missing --attributes file: which command produces it."""
    if ds.attribute_source is None:
        return (
            f"The manifest {str(path)!r} does not exist: it is your CSV of path, pid, camid, split "
            "and attribute columns (docs/data.md)."
        )
    return (
        f"The attribute file {str(path)!r} does not exist: `attrimp data fetch-attributes {ds.name} "
        f"--out {str(path.parent)!r}` downloads it (add --url for a mirror or a file:// copy)."
    )


def register(app: typer.Typer) -> None:
    """Attach `fetch-attributes` and `priors` to the `attrimp data` group."""
    app.command("fetch-attributes")(fetch_attributes)
    app.command("priors")(priors)
