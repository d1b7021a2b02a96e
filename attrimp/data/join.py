"""Joining an identity-level attribute file to the identities found in the image folders.

The join is where real datasets lose data quietly (an identity with no annotation row, a row
with no images, a pid annotated twice), so every mismatch is either a `DataError` that names the
identities or, under ``missing_policy="skip"``, a counted line in the loader's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attrimp.data.records import DISTRACTOR_PID, JUNK_PID, DataReport, describe_ids
from attrimp.errors import DataError
from attrimp.model.schema import AttributeSchema

MISSING_POLICIES = ("error", "skip")


@dataclass
class IdentityAttributes:
    """Identity-level annotations: one row per identity (pid), its split and multi-hot vector."""

    schema: AttributeSchema
    pids: np.ndarray  # int64 [n]
    splits: list[str]  # "train" / "test" as the file says
    multihot: np.ndarray  # float32 [n, n_slots]
    source: Path


def read_identity_attributes(path: str | Path, dataset: str) -> IdentityAttributes:
    """Read an identity-level attribute file (.mat as released, or CSV) through the annotations
    loader, which owns every format quirk; here we only need pid, split and multi-hot."""
    from attrimp.data.annotations import load_attribute_file

    path = Path(path)
    table = load_attribute_file(path, dataset=dataset)
    pids = table.frame["pid"].to_numpy(np.int64)
    splits = [str(s) for s in table.frame["split"]]
    multihot = np.asarray(table.multihot, dtype=np.float32)
    # One identity on several rows (the annotations loader reports identical repeats): the
    # images can only take one vector, so rows that disagree are an error, identical ones fold.
    keep: dict[int, int] = {}
    clash: list[int] = []
    for i, p in enumerate(pids.tolist()):
        if p not in keep:
            keep[p] = i
        elif not np.array_equal(multihot[keep[p]], multihot[i]):
            clash.append(p)
    if clash:
        raise DataError(
            f"Attribute file {str(path)!r} gives {len(set(clash))} identities different "
            f"attributes on different rows ({describe_ids(sorted(set(clash)))}); an "
            "identity-level file needs one value per identity."
        )
    rows = list(keep.values())
    return IdentityAttributes(
        table.schema, pids[rows], [splits[i] for i in rows], multihot[rows], path
    )


def join_identity_attributes(
    image_pids: dict[str, set[int]],
    table: IdentityAttributes,
    *,
    missing_policy: str,
    report: DataReport,
) -> tuple[dict[int, np.ndarray], set[int]]:
    """Match the identities seen in each image split to the table's rows.

    Returns ``(pid -> multi-hot, pids to drop)``. Distractors (pid 0) and junk (-1) need no
    annotation. ``image_pids`` maps split name (train/query/gallery) to the pids it holds.
    """
    if missing_policy not in MISSING_POLICIES:
        raise DataError(
            f"missing_policy must be one of {', '.join(MISSING_POLICIES)}, not {missing_policy!r}."
        )
    src = str(table.source)
    row = {int(p): i for i, p in enumerate(table.pids)}
    seen = set().union(*image_pids.values()) - {DISTRACTOR_PID, JUNK_PID}
    without = sorted(seen - row.keys())
    drop = _identities_without_rows(without, image_pids, src, missing_policy, report)
    _rows_without_images(sorted(set(row) - seen), src, missing_policy, report)
    _warn_split_mismatch(image_pids, table, row, drop, report)
    attrs = {p: table.multihot[row[p]] for p in seen if p in row}
    return attrs, drop


def _identities_without_rows(
    without: list[int], image_pids: dict[str, set[int]], src: str, policy: str, report
) -> set[int]:
    """Identities with images but no attribute row: an error, or (``skip``) the pids to drop."""
    if not without:
        return set()
    where = ", ".join(s for s, ids in image_pids.items() if set(without) & ids)
    if policy == "error":
        raise DataError(
            f"{len(without)} identities with images (in {where}) have no row in the attribute "
            f"file {src!r}: {describe_ids(without)}; pass missing_policy='skip' "
            "(--missing-policy skip) to leave their images out, counted in the report."
        )
    report.add("identities_without_attributes", len(without))
    report.warn(
        f"Left out the images of {len(without)} identities that the attribute file does not "
        f"annotate: {describe_ids(without)}."
    )
    return set(without)


def _rows_without_images(unused: list[int], src: str, policy: str, report) -> None:
    """Attribute rows of identities with no image: an error, or (``skip``) counted and ignored."""
    if not unused:
        return
    if policy == "error":
        raise DataError(
            f"The attribute file {src!r} annotates {len(unused)} identities that have no "
            f"image: {describe_ids(unused)}; pass missing_policy='skip' (--missing-policy "
            "skip) to ignore those rows, counted in the report."
        )
    report.add("attributes_without_images", len(unused))
    report.warn(
        f"Ignored {len(unused)} attribute rows whose identity has no image: {describe_ids(unused)}."
    )


def _warn_split_mismatch(
    image_pids: dict[str, set[int]], table: IdentityAttributes, row: dict, drop: set[int], report
) -> None:
    """The file's own split should agree with the folders: a train identity annotated as test
    usually means a file of another dataset or version. Worth a warning, not a refusal."""
    mismatched = sorted(
        p
        for split, ids in image_pids.items()
        for p in ids
        if p in row
        and p not in drop
        and table.splits[row[p]] in ("train", "test")
        and table.splits[row[p]] != ("train" if split == "train" else "test")
    )
    if mismatched:
        report.add("split_mismatch_identities", len(set(mismatched)))
        report.warn(
            f"{len(set(mismatched))} identities sit in a different split in the attribute file "
            f"than in the image folders: {describe_ids(sorted(set(mismatched)))}."
        )
