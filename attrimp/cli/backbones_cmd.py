"""`attrimp backbones list`: the registered ViT backbones as a table.

Describing a model needs its library (open_clip configs, a timm model built on the meta device),
so the libraries are imported inside the command, never at CLI start-up. A footer counts how the
listed models read their embedding (class token, average, attention head). The table fits
`WIDTH` columns (the family is the name's prefix, so it has no column of its own; long tag
lists wrap), on a terminal and in a pipe alike.
"""

from __future__ import annotations

from collections import Counter

import typer
from rich.console import Console
from rich.table import Table

from attrimp.progress import progress_bar

app = typer.Typer(no_args_is_help=True)

_MAX_TAGS = 3
#: the widest the table is drawn, terminal or not (a narrower terminal narrows it)
WIDTH = 100


def _fmt_tags(tags: list[str]) -> str:
    if not tags:
        return "-"
    shown = ", ".join(tags[:_MAX_TAGS])
    return shown + (f" (+{len(tags) - _MAX_TAGS})" if len(tags) > _MAX_TAGS else "")


@app.command("list")
def list_cmd(
    family: str = typer.Option(None, "--family", "-f", help="Only this family (clip, timm, ...)."),
    all_models: bool = typer.Option(
        False, "--all", help="Every model of the family, not only the featured ones."
    ),
) -> None:
    """List backbones: name, family, pretrained tags, default input size, width, depth.

    Example: attrimp backbones list --family timm --all
    """
    import backbones

    families = [backbones.get_family(family).name] if family else backbones.list_families()
    rows = []
    names = [n for fam in families for n in backbones.list_backbones(fam, all=all_models)]
    with progress_bar(True) as progress:
        task = progress.add_task("describing backbones", total=len(names))
        for name in names:
            fam, model = backbones.parse_name(name)
            try:
                info = backbones.get_family(fam).describe(model)
            except Exception as exc:  # one odd model must not hide the others
                info = {"error": str(exc).splitlines()[0][:60]}
            rows.append((name, fam, info))
            progress.advance(task)

    _print_table(rows)


def _print_table(rows: list[tuple[str, str, dict]]) -> None:
    """The table, at most `WIDTH` columns wide, and how to build a model on one of its rows."""
    table = Table(title="attrimp backbones", title_justify="left", show_lines=False)
    for col in ("name", "pretrained tags", "input", "width", "depth"):
        table.add_column(col, no_wrap=col not in ("name", "pretrained tags"), overflow="fold")
    for name, _fam, info in rows:
        size = info.get("input_size")
        table.add_row(
            name,
            info["error"] if "error" in info else _fmt_tags(info.get("tags") or []),
            f"{size[0]}x{size[1]}" if size else "?",
            str(info.get("width") or "?"),
            str(info.get("depth") or "?"),
        )
    console = Console()
    console = Console(width=min(console.width, WIDTH) if console.is_terminal else WIDTH)
    console.print(table)
    readouts = Counter(info.get("readout") for _, _, info in rows if info.get("readout"))
    if readouts:
        console.print(
            "Embedding: " + ", ".join(f"{n} {what}" for what, n in readouts.most_common()) + ".",
            highlight=False,
            markup=False,
        )
    console.print(
        f"{len(rows)} backbone(s). A model on one: attrimp.create_model('clip:ViT-B-16', "
        "pretrained=TAG_OR_FILE), or [model] backbone = 'clip:ViT-B-16' in a study config; "
        "docs/backbones.md.",
        highlight=False,
        markup=False,
    )
