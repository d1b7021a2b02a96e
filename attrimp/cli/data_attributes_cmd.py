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

PRIOR_DATASETS = ("market1501", "dukemtmc", "manifest")


def fetch_attributes(
    dataset: str = typer.Argument(..., help="market1501 or dukemtmc.", show_default=False),
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
    from attrimp.data.annotations import SOURCES, fetch_attribute_file

    path, downloaded = fetch_attribute_file(dataset, out, url=url, progress=True)
    spec = SOURCES[dataset.lower().replace("-", "")]
    state = "downloaded and verified" if downloaded else "already present, checksum verified"
    console.print(f"{path}: {state} (sha256 {spec.sha256[:12]}…).", highlight=False)
    console.print(f"Licence: {spec.licence}.", highlight=False)


def priors(
    dataset: str = typer.Option(
        ..., "--dataset", help="market1501, dukemtmc or manifest.", show_default=False
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
    from attrimp.data.annotations import load_attribute_file, load_manifest_attributes
    from attrimp.data.priors import write_priors
    from attrimp.model.schema import load_schema

    key = dataset.lower().replace("-", "")
    if key not in PRIOR_DATASETS:
        raise ConfigError(f"Unknown dataset {dataset!r}; use {', '.join(PRIOR_DATASETS)}.")
    if key == "manifest" and schema is None:
        raise ConfigError("--dataset manifest needs --schema, the TOML that describes its columns.")
    if not attributes.is_file():
        raise DataError(_missing_input(key, attributes))
    chosen = load_schema(schema) if schema is not None else key
    if key == "manifest":
        table = load_manifest_attributes(attributes, chosen)
    else:
        table = load_attribute_file(attributes, chosen)
    for line in table.report.lines():
        console.print(line, highlight=False)
    csv_path, png_path = write_priors(table, out)
    console.print(f"Wrote {csv_path} and {png_path}.", highlight=False)


def _missing_input(key: str, path: Path) -> str:
    """The sentence for a missing --attributes file: which command produces it."""
    if key == "manifest":
        return (
            f"The manifest {str(path)!r} does not exist: it is your CSV of path, pid, camid, split "
            "and attribute columns (docs/data.md)."
        )
    return (
        f"The attribute file {str(path)!r} does not exist: `attrimp data fetch-attributes {key} "
        f"--out {str(path.parent)!r}` downloads it (add --url for a mirror or a file:// copy)."
    )


def register(app: typer.Typer) -> None:
    """Attach `fetch-attributes` and `priors` to the `attrimp data` group."""
    app.command("fetch-attributes")(fetch_attributes)
    app.command("priors")(priors)
