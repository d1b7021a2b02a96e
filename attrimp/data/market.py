"""Market-1501 and DukeMTMC-reID folder layouts, joined by identity to their attribute files.

Layout (both datasets, and the synthetic world): ``bounding_box_train/``, ``query/`` and
``bounding_box_test/`` (the gallery) hold images whose names carry identity and camera:
Market ``0002_c1s1_000451_03.jpg`` (pid 2, camera 1, sequence 1, frame 451, box 3) and Duke
``0001_c2_f0046182.jpg`` (pid 1, camera 2, frame 46182).

Protocol decisions, each explicit and tested:
- junk images (pid ``-1``) are excluded from every split and counted in the report;
- distractors (pid ``0000``) are kept in the gallery only; they have no annotation, so their
  attribute vector is all zeros (every group "unknown": the oracle router turns all their
  experts off). A distractor in the train or query folder is treated like a bad file name;
- camera ids are 0-based in records (``c1`` -> 0), as in torchreid;
- training identities are relabelled ``0..N-1`` in pid order for the classifier
  (``ReIDData.pid_to_label`` keeps the mapping);
- non-image files (Market ships ``Thumbs.db``) are ignored and counted.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from attrimp.data.join import (
    MISSING_POLICIES,
    join_identity_attributes,
    read_identity_attributes,
)
from attrimp.data.records import (
    DISTRACTOR_PID,
    JUNK_PID,
    DataReport,
    ImageRecord,
    ReIDData,
    describe_ids,
)
from attrimp.errors import DataError
from attrimp.model.schema import load_schema

DATASETS = ("market1501", "dukemtmc")
FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}

_PATTERNS = {
    "market1501": (re.compile(r"^(-?\d+)_c(\d+)s\d+_\d+_\d+$"), "0002_c1s1_000451_03.jpg"),
    "dukemtmc": (re.compile(r"^(-?\d+)_c(\d+)_f\d+$"), "0001_c2_f0046182.jpg"),
}
# Folder names the datasets unpack to; `root` may point at their parent.
_SUBFOLDERS = {
    "market1501": ("Market-1501-v15.09.15", "Market-1501", "market1501", "Market1501"),
    "dukemtmc": ("DukeMTMC-reID", "dukemtmc-reid", "DukeMTMC-ReID", "dukemtmc"),
}


def _canonical(dataset: str) -> str:
    key = dataset.lower().replace("-", "").replace("_", "")
    if key in ("market1501", "market"):
        return "market1501"
    if key in ("dukemtmc", "dukemtmcreid", "duke"):
        return "dukemtmc"
    raise DataError(f"Unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}.")


def parse_image_name(name: str, dataset: str = "market1501") -> tuple[int, int]:
    """``'0002_c1s1_000451_03.jpg'`` -> ``(2, 1)``: identity and 1-based camera from a file name.

    Raises `DataError` naming the file and the expected pattern.
    """
    dataset = _canonical(dataset)
    pattern, example = _PATTERNS[dataset]
    m = pattern.match(Path(name).stem)
    if not m:
        raise DataError(
            f"Cannot read identity and camera from the file name {name!r}; {dataset} names look "
            f"like {example!r}."
        )
    pid, cam = int(m.group(1)), int(m.group(2))
    if pid < JUNK_PID:
        raise DataError(f"The file name {name!r} carries the identity {pid}, below -1 (junk).")
    if cam < 1:
        raise DataError(f"The file name {name!r} carries camera c{cam}; cameras count from c1.")
    return pid, cam


def resolve_root(root: str | Path, dataset: str) -> Path:
    """The folder that holds the three split folders: ``root`` itself or its dataset subfolder."""
    root = Path(root)
    dataset = _canonical(dataset)
    if not root.is_dir():
        raise DataError(f"The dataset folder {str(root)!r} does not exist.")
    if (root / FOLDERS["train"]).is_dir() or (root / FOLDERS["query"]).is_dir():
        return root
    for sub in _SUBFOLDERS[dataset]:
        if (root / sub / FOLDERS["query"]).is_dir():
            return root / sub
    return root


def load_reid_dataset(
    root: str | Path,
    dataset: str = "market1501",
    attributes: str | Path | None = None,
    *,
    missing_policy: str = "error",
    bad_names: str = "error",
) -> ReIDData:
    """Read a Market-1501 / DukeMTMC-reID folder and join its identity-level attribute file.

    ``missing_policy``: identities with images but no attribute row, or rows with no images —
    ``"error"`` (default) names them; ``"skip"`` leaves them out, counted in ``data.report``.
    ``bad_names``: file names that do not parse (or a distractor outside the gallery) —
    ``"error"`` or a counted ``"skip"``. Without ``attributes`` every image gets the all-unknown
    vector of the dataset's schema (a warning says so). Images are not decoded here: a broken
    file fails when read (naming it) or in ``attrimp data summary --verify``.
    """
    dataset = _canonical(dataset)
    for name, value in (("missing_policy", missing_policy), ("bad_names", bad_names)):
        if value not in MISSING_POLICIES:
            raise DataError(f"{name} must be one of {', '.join(MISSING_POLICIES)}, not {value!r}.")
    root = resolve_root(root, dataset)
    report = DataReport()
    raw: dict[str, list[tuple[Path, int, int]]] = {}
    for split, folder in FOLDERS.items():
        raw[split] = _scan_folder(root, folder, split, dataset, bad_names, report)
    if not any(raw.values()):
        raise DataError(
            f"The dataset folder {str(root)!r} holds no images in {', '.join(FOLDERS.values())}."
        )

    if attributes is not None:
        schema, attrs, raw = _join_attributes(raw, attributes, dataset, missing_policy, report)
        source = Path(attributes)
    else:
        schema = load_schema(dataset)
        attrs, source = {}, None
        report.warn("No attribute file given: every identity's attributes are unknown.")
    records, pid_to_label = _records(raw, attrs, schema)
    _check_query_matches(records["query"], records["gallery"], report)
    return ReIDData(
        name=dataset,
        root=root,
        schema=schema,
        train=records["train"],
        query=records["query"],
        gallery=records["gallery"],
        pid_to_label=pid_to_label,
        report=report,
        identity_attributes=attrs,
        attribute_source=source,
    )


def _join_attributes(raw: dict, attributes: str | Path, dataset: str, missing_policy: str, report):
    """The attribute file's schema, each identity's attribute vector, and the scanned images
    less those of identities the file does not annotate (with ``missing_policy="skip"``)."""
    table = read_identity_attributes(attributes, dataset)
    image_pids = {s: {pid for _, pid, _ in items} for s, items in raw.items()}
    attrs, drop = join_identity_attributes(
        image_pids, table, missing_policy=missing_policy, report=report
    )
    if drop:
        n_before = sum(len(v) for v in raw.values())
        raw = {s: [x for x in items if x[1] not in drop] for s, items in raw.items()}
        report.add("images_without_attributes", n_before - sum(len(v) for v in raw.values()))
    return table.schema, attrs, raw


def _records(raw: dict, attrs: dict, schema) -> tuple[dict[str, list[ImageRecord]], dict]:
    """Image records per split (an identity without attributes gets the all-unknown vector)
    and the classifier label of each training identity (in increasing pid order)."""
    unknown = np.zeros(schema.n_slots, dtype=np.float32)
    train_pids = sorted({pid for _, pid, _ in raw["train"]})
    pid_to_label = {pid: i for i, pid in enumerate(train_pids)}
    records: dict[str, list[ImageRecord]] = {}
    for split, items in raw.items():
        records[split] = [
            ImageRecord(
                path=path,
                pid=pid,
                camid=cam - 1,
                split=split,
                label=pid_to_label[pid] if split == "train" else -1,
                attributes=attrs.get(pid, unknown),
            )
            for path, pid, cam in items
        ]
    return records, pid_to_label


def _scan_folder(
    root: Path, folder: str, split: str, dataset: str, bad_names: str, report: DataReport
) -> list[tuple[Path, int, int]]:
    path = root / folder
    if not path.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"The {dataset} folder {str(root)!r} has no {folder!r} folder (it has: "
            f"{', '.join(present) if present else 'no folders'})."
        )
    items: list[tuple[Path, int, int]] = []
    for f in sorted(path.iterdir()):
        if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
            report.add("ignored_non_image_files")
            continue
        try:
            pid, cam = parse_image_name(f.name, dataset)
            if pid == DISTRACTOR_PID and split != "gallery":
                raise DataError(
                    f"The {split} image {str(f)!r} belongs to the distractor identity 0000, "
                    "which only the gallery may hold."
                )
        except DataError as e:
            if bad_names == "error":
                raise DataError(
                    f"{e} (pass bad_names='skip' to count and skip such files)"
                ) from None
            report.add("skipped_bad_names")
            report.warn(f"Skipped {str(f)!r}: {e}")
            continue
        if pid == JUNK_PID:
            report.add(f"junk_images_{split}")
            continue
        if pid == DISTRACTOR_PID:
            report.add("distractor_images")
        items.append((f, pid, cam))
    if not items:
        report.warn(f"The folder {str(path)!r} holds no usable image.")
    return items


def _check_query_matches(
    query: list[ImageRecord], gallery: list[ImageRecord], report: DataReport
) -> None:
    """Queries that cannot be matched under the standard protocol: worth a counted warning."""
    by_pid: dict[int, set[int]] = {}
    for r in gallery:
        by_pid.setdefault(r.pid, set()).add(r.camid)
    q_pids = {r.pid for r in query}
    absent = sorted(q_pids - by_pid.keys())
    if absent:
        n_img = sum(r.pid in set(absent) for r in query)
        report.add("query_identities_absent_from_gallery", len(absent))
        report.warn(
            f"{len(absent)} query identities ({n_img} query images) have no gallery image: "
            f"{describe_ids(absent)}; evaluation skips such queries."
        )
    same_cam_only = sorted(
        {r.pid for r in query if r.pid in by_pid and not (by_pid[r.pid] - {r.camid})}
    )
    if same_cam_only:
        report.add("query_identities_only_same_camera", len(same_cam_only))
        report.warn(
            f"{len(same_cam_only)} query identities have gallery images only from the query's "
            f"own camera, which the protocol removes: {describe_ids(same_cam_only)}."
        )
