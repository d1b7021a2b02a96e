"""Compare finished studies: do two backbones (datasets, expert banks, ...) rely on different
attribute groups, beyond the noise of one training run?

    >>> import attrimp
    >>> cmp = attrimp.compare_studies(["runs/vit", "runs/dinov2"], out="runs/cmp")  # doctest: +SKIP
    >>> cmp.summary                                                                # doctest: +SKIP

Each study folder (``attrimp study run``) already holds the paired effect this needs:
``tables/deltas.csv``, each query's AP with all experts minus its AP without one group (the
leave-one-out Δ). The folders are stacked into one table of paired effects — one row per
(run, query, group) — with the pseudo-group ``"all experts"``: each query's AP with every
expert minus its backbone-only AP, the arm's oracle gain, against which `studies.compare`
reads each group's effect relative to its own arm (baselines differ between backbones).
`studies.compare` does the statistics and `studies.write_comparison_report` the report; this
module only finds the arms, the seeds and whether the arms can be paired:

- **arms**: a study folder's ``arm.json`` (``{"arm": name, "seed": int}``, written by the
  ``[compare]`` runner) wins; else the caller's ``arms={folder: name}``; else runs whose
  configs are equal apart from the training seed (and name, description, device) are one arm,
  named by the setting that differs between arms (``timm:vit_small_patch16_224``,
  ``data.color=grayscale``), or by folder when no short name tells them apart.
- **pairing**: a fingerprint of each run's query set (sorted query ids and identities). Equal
  in every run: the arms are paired by query (identities shared, their noise cancels). Else
  unpaired, and identity ids are prefixed by their dataset (or query set) so two datasets'
  identity 12 never count as one person; arms on different schemas are compared on the groups
  both have (`studies.compare` lists the others).

The library is quiet (``logging``); ``progress=True`` prints each step. It does not lock
``out``: the caller that owns the folder does (the CLI, or the ``[compare]`` runner, which
already holds it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attrimp.errors import AttrimpError

logger = logging.getLogger(__name__)

#: the file the [compare] runner writes into each arm-seed study folder
ARM_FILE = "arm.json"
#: the pseudo-group holding each query's oracle gain (AP full minus AP backbone only)
ALL_EXPERTS = "all experts"
#: settings that never make two runs different arms (replicates may differ in them; the
#: ablation and analysis seeds do not change a leave-one-out Δ)
_NOT_AN_ARM = (
    "name",
    "description",
    "device",
    "compare",
    "train.seed",
    "ablation.seed",
    "analysis.seed",
)
#: the files a finished study folder holds
_NEEDED = ("config.json", "report.json", "tables/deltas.csv", "tables/per_query.parquet")


class StudyFolderError(AttrimpError):
    """A study folder that cannot be compared (missing, unfinished, not a study, one arm)."""


@dataclass
class _Run:
    """What the comparison reads from one finished study folder."""

    path: Path
    settings: dict[str, Any]  # flattened config, dotted keys
    dataset: str
    schema: str
    deltas: pd.DataFrame  # query, pid, group, delta_ap (with the "all experts" rows)
    fingerprint: str  # of the query set
    n_queries: int
    n_identities: int
    margin: float | None
    arm: str | None = None  # from arm.json
    seed: int | None = None


@dataclass
class StudyComparison:
    """What `compare_studies` found: the `studies.ComparisonResult`, the stacked table it was
    computed on, and where the report went (``out`` and ``report_html`` None when no folder
    was given)."""

    result: Any
    table: pd.DataFrame
    out: Path | None = None
    report_html: Path | None = None
    paired: bool = True
    setup: list[str] = field(default_factory=list)
    #: arm -> [(seed, study folder)]
    arms: dict[str, list[tuple[int, Path]]] = field(default_factory=dict)

    @property
    def effects(self) -> pd.DataFrame:
        """Each group's effect per arm (ΔAP and relative to the arm's oracle gain)."""
        return self.result.effects

    @property
    def differences(self) -> pd.DataFrame:
        """Between-arm differences per group: CI, interaction test, Holm p, verdict."""
        return self.result.differences

    @property
    def agreement(self) -> pd.DataFrame:
        """Rank agreement between arms beside the between-seed baseline."""
        return self.result.agreement

    @property
    def gains(self) -> pd.DataFrame:
        """Each arm's oracle gain (all experts minus backbone only), the effects' reference."""
        return self.result.gains

    @property
    def summary(self) -> list[str]:
        """The answer, one sentence per finding."""
        return list(self.result.summary)


def compare_studies(
    runs: Iterable[str | Path],
    out: str | Path | None = None,
    *,
    arms: Mapping[str | Path, str] | None = None,
    margin: float | None = None,
    alpha: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
    title: str | None = None,
    single_file: bool = False,
    progress: bool = False,
) -> StudyComparison:
    """Compare finished study folders arm against arm (module docstring); write the report
    into ``out`` when given.

    ``arms``: {study folder: arm name} for folders without an ``arm.json``. ``margin``: the
    equivalence margin of the 'negligible' verdict in ΔmAP (default: the studies' own
    ``analysis.margin`` when they agree). ``seed``: of every bootstrap (same seed, same report).
    """
    say = _Say(progress)
    runs = [Path(r) for r in runs]
    _check_out(out, runs)
    loaded = _load_runs(runs, say)
    members = _assign_arms(loaded, arms)
    say(f"arms: {_arm_list(members)}")
    table, paired, setup = _stack(loaded, members)
    for line in setup:
        say(line)
    margin = _margin(loaded) if margin is None else margin
    result = _compare(table, margin=margin, alpha=alpha, n_boot=n_boot, seed=seed, say=say)
    cmp = StudyComparison(result, table, paired=paired, setup=setup, arms=members)
    if out is not None:
        cmp.out = Path(out)
        cmp.report_html = write_report(
            cmp, title=title or _title(members), single_file=single_file, say=say
        )
    return cmp


class _Say:
    """Progress lines: printed (stderr) when asked for, else logged."""

    def __init__(self, show: bool) -> None:
        self.console = None
        if show:
            from rich.console import Console

            self.console = Console(stderr=True)

    def __call__(self, line: str) -> None:
        logger.info(line)
        if self.console is not None:
            self.console.print(f"compare: {line}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- reading folders
def _load_runs(runs: Iterable[str | Path], say: _Say) -> list[_Run]:
    paths = [Path(r) for r in runs]
    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise StudyFolderError(f"Study folder {str(p)!r} is given twice.")
        seen[key] = p
    if len(paths) < 2:
        raise StudyFolderError(
            f"A comparison needs at least two study folders; {len(paths)} given."
        )
    say(f"reading {len(paths)} study folders")
    return [load_run(p) for p in paths]


def load_run(path: str | Path) -> _Run:
    """One finished study folder, checked: refused in one sentence when it is missing, not a
    study, or not finished."""
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file, not a study folder"
        raise StudyFolderError(f"Study folder {str(path)!r} {what}.")
    if not (path / "config.json").is_file():
        raise StudyFolderError(
            f"{str(path)!r} is not a study folder (no config.json; `attrimp study run` writes one)."
        )
    _check_not_running(path)
    missing = [f for f in _NEEDED if not (path / f).is_file()]
    report = _read_json(path / "report.json") if "report.json" not in missing else {}
    if missing or "timings" not in report:
        what = ", ".join(missing) or "report.json's final timings"
        raise StudyFolderError(
            f"Study {str(path)!r} is not finished (no {what}); finish it with "
            "`attrimp study run` (it resumes) before comparing."
        )
    deltas = _deltas(path)
    queries = _query_set(path)
    data = report.get("data") or {}
    marker = _arm_file(path)
    settings = _settings(_read_json(path / "config.json"))
    return _Run(
        path=path,
        settings=settings,
        dataset=str(data.get("dataset") or settings.get("data.dataset") or "unknown"),
        schema=str(data.get("schema") or settings.get("data.schema") or ""),
        deltas=pd.concat([deltas, _oracle_gain(path, queries)], ignore_index=True),
        fingerprint=_fingerprint(queries),
        n_queries=int(queries["query"].nunique()),
        n_identities=int(queries["pid"].nunique()),
        margin=_float_or_none(settings.get("analysis.margin")),
        arm=marker[0] if marker else None,
        seed=marker[1] if marker else None,
    )


def _check_not_running(path: Path) -> None:
    """Refuse a folder a study is writing right now (its lock held): its report.json may be
    an earlier run's while the tables change. Probed with a shared lock on a read-only
    handle, so the folder is never written; where that cannot be done, nothing is checked."""
    from attrimp.io import LOCK_FILE

    try:
        import fcntl

        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except (ImportError, OSError):  # no lock file (or no flock): nothing is running there
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StudyFolderError(
            f"Study {str(path)!r} is being written by another attrimp process; wait for it "
            "to finish before comparing."
        ) from None
    except OSError:
        return
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudyFolderError(f"{str(path)!r} cannot be read as JSON ({exc}).") from None
    if not isinstance(doc, dict):
        raise StudyFolderError(f"{str(path)!r} holds no JSON object.")
    return doc


def _deltas(path: Path) -> pd.DataFrame:
    """The leave-one-out Δ per query and group (``tables/deltas.csv``)."""
    file = path / "tables" / "deltas.csv"
    cols = ["query", "pid", "group", "delta_ap"]
    try:
        df = pd.read_csv(file, dtype={"query": str, "group": str})
    except (OSError, ValueError) as exc:
        raise StudyFolderError(f"{str(file)!r} cannot be read ({exc}).") from None
    absent = [c for c in cols if c not in df.columns]
    if absent:
        raise StudyFolderError(f"{str(file)!r} has no column {absent[0]!r}.")
    if df.empty:
        raise StudyFolderError(
            f"{str(file)!r} is empty: the study ran no leave-one-out design, which a "
            "comparison reads."
        )
    return df[cols]


def _query_set(path: Path) -> pd.DataFrame:
    """The query rows of configurations ``full`` and ``backbone`` (query, pid, config, ap,
    valid) from ``tables/per_query.parquet``."""
    file = path / "tables" / "per_query.parquet"
    cols = ["config", "query", "pid", "ap", "valid"]
    try:
        df = pd.read_parquet(file, columns=cols, filters=[("config", "in", ["full", "backbone"])])
    except (OSError, ValueError, KeyError) as exc:
        raise StudyFolderError(f"{str(file)!r} cannot be read ({exc}).") from None
    if not (df["config"] == "full").any():
        raise StudyFolderError(f"{str(file)!r} has no rows of configuration 'full'.")
    return df.astype({"query": str})


def _oracle_gain(path: Path, pq: pd.DataFrame) -> pd.DataFrame:
    """The "all experts" rows: each valid query's AP(full) − AP(backbone only); none when
    the study ran no backbone configuration."""
    full = pq[(pq["config"] == "full") & pq["valid"].astype(bool)].set_index("query")
    back = pq[pq["config"] == "backbone"].set_index("query")["ap"]
    if back.empty:
        logger.info("%s has no backbone-only configuration: no oracle gain", path)
        return pd.DataFrame(columns=["query", "pid", "group", "delta_ap"])
    both = full.join(back.rename("ap_backbone"), how="inner")
    return pd.DataFrame(
        {
            "query": both.index.to_numpy(),
            "pid": both["pid"].to_numpy(),
            "group": ALL_EXPERTS,
            "delta_ap": (both["ap"] - both["ap_backbone"]).to_numpy(),
        }
    )


def _fingerprint(pq: pd.DataFrame) -> str:
    """A hash of the query set: its sorted (query id, identity) pairs, from config ``full``."""
    full = pq[pq["config"] == "full"]
    pairs = sorted(set(zip(full["query"].astype(str), full["pid"].astype(str), strict=True)))
    text = "\n".join(f"{q}\t{p}" for q, p in pairs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _arm_file(path: Path) -> tuple[str, int] | None:
    """``arm.json``'s (arm, seed), when the folder has one."""
    file = path / ARM_FILE
    if not file.is_file():
        return None
    doc = _read_json(file)
    arm, seed = doc.get("arm"), doc.get("seed")
    if not isinstance(arm, str) or not arm or isinstance(seed, bool) or not isinstance(seed, int):
        raise StudyFolderError(
            f'{str(file)!r} must hold {{"arm": name, "seed": integer}}, not {doc}.'
        )
    return arm, seed


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """The config as flat dotted keys, every default filled in (through `attrimp.config`, so a
    run written before a setting existed compares equal to one that has its default); the raw
    file when it no longer parses (a plug-in not installed here)."""
    from attrimp.config import config_from_dict

    try:
        config = config_from_dict(config, source="config.json").to_dict()
    except AttrimpError as exc:
        logger.info("config.json compared as written: %s", exc)
    return _flatten(config)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            flat.update(_flatten(v, f"{key}."))
        else:
            flat[key] = v
    return flat


def _float_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _check_out(out: str | Path | None, runs: list[Path]) -> None:
    if out is None:
        return
    target = Path(out).resolve()
    for r in runs:
        if r.resolve() == target:
            raise StudyFolderError(
                f"The output folder {str(out)!r} is one of the compared study folders; "
                "choose another."
            )


# --------------------------------------------------------------------------- arms and seeds
def _assign_arms(
    runs: list[_Run], arms: Mapping[str | Path, str] | None
) -> dict[str, list[tuple[int, Path]]]:
    """arm -> [(seed, folder)], sorted by seed; each run's ``arm``/``seed`` set. An
    ``arm.json`` wins, then ``arms``, then runs whose settings agree apart from the seed."""
    given = {Path(k).resolve(): str(v) for k, v in (arms or {}).items()}
    unknown = set(given) - {r.path.resolve() for r in runs}
    if unknown:
        raise StudyFolderError(
            f"The arm for {str(sorted(unknown)[0])!r} names a folder that is not among the "
            "compared study folders."
        )
    free: list[_Run] = []
    for r in runs:
        if r.arm is None and r.path.resolve() in given:
            r.arm = given[r.path.resolve()]
        if r.seed is None:
            r.seed = _train_seed(r)
        if r.arm is None:
            free.append(r)
    _name_by_settings(free, named=len(free) < len(runs))
    members: dict[str, list[tuple[int, Path]]] = {}
    for r in runs:
        members.setdefault(str(r.arm), []).append((int(r.seed), r.path))
    _check_arms(members, runs)
    return {a: sorted(m, key=lambda x: x[0]) for a, m in members.items()}


def _train_seed(r: _Run) -> int:
    seed = r.settings.get("train.seed", 0)
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else 0


def _arm_key(r: _Run) -> str:
    """The settings that make an arm: all but the replicate's seed, name and description."""
    kept = {
        k: v
        for k, v in r.settings.items()
        if not any(k == n or k.startswith(f"{n}.") for n in _NOT_AN_ARM)
    }
    return json.dumps(kept, sort_keys=True, default=str)


def _name_by_settings(runs: list[_Run], *, named: bool) -> None:
    """Group ``runs`` by settings; name each group by the settings that differ between the
    groups (``timm:...`` for a backbone, ``key=value`` otherwise), by folder when that name
    is long or not unique."""
    if not runs:
        return
    groups: dict[str, list[_Run]] = {}
    for r in runs:
        groups.setdefault(_arm_key(r), []).append(r)
    if len(groups) == 1 and not named:
        seeds = [r.seed for r in runs]
        why = (
            "differ only in their training seed"
            if len(set(seeds)) == len(seeds)
            else "have the same settings"
        )
        raise StudyFolderError(
            f"The {len(runs)} runs {why}: they are one arm; compare runs whose settings "
            "differ, or name the arms (--arm NAME=RUN, or arms= in Python)."
        )
    members = list(groups.values())
    settings = [json.loads(k) for k in groups]
    keys = sorted({k for s in settings for k in s})
    differ = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings}) > 1]
    names = [_setting_name(s, differ) for s in settings]
    if len(set(names)) < len(names) or any(not n or len(n) > 60 for n in names):
        names = [_folder_name(m) for m in members]
    for name, m in zip(names, members, strict=True):
        for r in m:
            r.arm = name


def _setting_name(settings: dict[str, Any], differ: list[str]) -> str:
    """'timm:vit_small_patch16_224' for the backbone, 'data.color=grayscale' for others."""
    if len(differ) > 3:
        return ""
    parts = []
    for k in differ:
        v = settings.get(k)
        text = "default" if v is None else v if isinstance(v, str) else json.dumps(v)
        parts.append(str(text) if k == "model.backbone" else f"{k}={text}")
    return ", ".join(parts)


def _folder_name(runs: list[_Run]) -> str:
    """A group's folder name: the one folder's, else the folders' common parent's."""
    if len(runs) == 1:
        return runs[0].path.resolve().name
    common = Path(os.path.commonpath([str(r.path.resolve()) for r in runs]))
    return common.name or runs[0].path.resolve().name


def _check_arms(members: dict[str, list[tuple[int, Path]]], runs: list[_Run]) -> None:
    if len(members) < 2:
        arm = next(iter(members))
        raise StudyFolderError(f"Every run is arm {arm!r}: a comparison needs at least two arms.")
    for arm, m in members.items():
        seeds = [s for s, _ in m]
        for s in set(seeds):
            twice = [str(p) for t, p in m if t == s]
            if len(twice) > 1:
                raise StudyFolderError(
                    f"Runs {twice[0]!r} and {twice[1]!r} are both seed {s} of arm {arm!r}: "
                    "replicates of an arm need different training seeds."
                )


def _arm_list(members: dict[str, list[tuple[int, Path]]]) -> str:
    return "; ".join(
        f"{a} (seed{'s' if len(m) > 1 else ''} {', '.join(str(s) for s, _ in m)})"
        for a, m in members.items()
    )


def _title(members: dict[str, list[tuple[int, Path]]]) -> str:
    return "Comparison: " + " vs ".join(members)


def _margin(runs: list[_Run]) -> float | None:
    """The studies' own equivalence margin (``analysis.margin``) when they all agree."""
    margins = {r.margin for r in runs}
    return margins.pop() if len(margins) == 1 else None


# --------------------------------------------------------------------------- the stacked table
def _stack(
    runs: list[_Run], members: dict[str, list[tuple[int, Path]]]
) -> tuple[pd.DataFrame, bool, list[str]]:
    """The paired-effects table (arm, seed, query, pid, group, delta_ap), whether the arms are
    paired by query, and the setup sentences for the report."""
    sets = _query_sets(runs)
    paired = len(sets) == 1
    parts = []
    for r in runs:
        d = r.deltas.assign(arm=r.arm, seed=r.seed)
        if not paired:  # identities of different query sets never count as one person
            label = sets[_set_key(r)]
            d = d.assign(pid=label + ":" + d["pid"].astype(str), query=label + ":" + d["query"])
        parts.append(d)
    table = pd.concat(parts, ignore_index=True)[
        ["arm", "seed", "query", "pid", "group", "delta_ap"]
    ]
    setup = [_compared_sentence(members, runs), _pairing_sentence(runs, sets)]
    groups = _unshared_sentence(table)
    if groups:
        setup.append(groups)
    setup.append(_seeds_sentence(members))
    return table, paired, setup


def _set_key(r: _Run) -> tuple[str, str, str]:
    """What makes two runs' queries the same units: dataset, schema and query-set hash."""
    return (r.dataset, r.schema, r.fingerprint)


def _query_sets(runs: list[_Run]) -> dict[tuple[str, str, str], str]:
    """Each query set (`_set_key`) -> a label: its dataset's name, with the schema when two
    sets share the name, numbered when that is not enough either."""
    keys = list(dict.fromkeys(_set_key(r) for r in runs))
    labels = {}
    for key in keys:
        dataset, schema, _ = key
        same_name = [k for k in keys if k[0] == dataset]
        same_schema = [k for k in same_name if k[1] == schema]
        if len(same_name) == 1:
            labels[key] = dataset
        elif len(same_schema) == 1:
            labels[key] = f"{dataset}/{schema}"
        else:
            labels[key] = f"{dataset}#{1 + same_name.index(key)}"
    return labels


def _compared_sentence(members: dict[str, list[tuple[int, Path]]], runs: list[_Run]) -> str:
    arms = ", ".join(f"{a!r}" for a in members)
    return (
        f"Compared: {len(runs)} finished studies in {len(members)} arms ({arms}), on each "
        "query's leave-one-group-out ΔAP and its oracle gain (AP with all experts minus "
        "backbone only)."
    )


def _pairing_sentence(runs: list[_Run], sets: dict[tuple[str, str, str], str]) -> str:
    r0 = runs[0]
    if len(sets) == 1:
        return (
            f"Paired: every run has the same data and query set ({r0.dataset}, "
            f"{r0.n_queries} queries of {r0.n_identities} identities), so the arms are "
            "compared query by query, identities shared."
        )
    if len({k[:2] for k in sets}) == len(sets):
        return (
            f"Unpaired: the runs use different datasets ({', '.join(sets.values())}), so the "
            "arms are compared unpaired, identities kept apart by dataset."
        )
    return (
        f"Unpaired: runs on the same dataset have different query sets ({', '.join(sets.values())}:"
        " another split or world), so the arms are compared unpaired, each query set's "
        "identities kept apart."
    )


def _unshared_sentence(table: pd.DataFrame) -> str:
    """The groups some arm lacks (different schemas): compared on the shared ones only."""
    per_arm = {a: set(g) - {ALL_EXPERTS} for a, g in table.groupby("arm", sort=False)["group"]}
    shared = set.intersection(*per_arm.values())
    if all(g == shared for g in per_arm.values()):
        return ""
    extra = "; ".join(
        f"{', '.join(sorted(g - shared))} only in {a!r}" for a, g in per_arm.items() if g - shared
    )
    return (
        f"Compared on the {len(shared)} attribute groups every arm has "
        f"({', '.join(sorted(shared))}); not compared: {extra}."
    )


def _seeds_sentence(members: dict[str, list[tuple[int, Path]]]) -> str:
    parts = []
    for a, m in members.items():
        seeds = ", ".join(str(s) for s, _ in m)
        parts.append(
            f"{a!r}: {len(m)} training runs (seeds {seeds})"
            if len(m) > 1
            else f"{a!r}: one training run (seed {seeds})"
        )
    tail = (
        ""
        if min(len(m) for m in members.values()) > 1
        else "; with one run per arm, a difference includes training noise"
    )
    return f"Seeds per arm — {'; '.join(parts)}{tail}."


# --------------------------------------------------------------------------- statistics, report
def _compare(
    table: pd.DataFrame, *, margin: float | None, alpha: float, n_boot: int, seed: int, say: _Say
) -> Any:
    """`studies.compare` in its paired-effects mode (group column, oracle gain as the
    reference)."""
    import studies

    relative = ALL_EXPERTS if (table["group"] == ALL_EXPERTS).any() else None
    groups = table.loc[table["group"] != ALL_EXPERTS, "group"].nunique()
    gain = " and the oracle gain" if relative is not None else ""
    say(f"comparing {table['arm'].nunique()} arms on {groups} groups{gain} (studies.compare)")
    return studies.compare(
        table,
        by="arm",
        outcome="delta_ap",
        cluster="pid",
        seed="seed",
        group="group",
        relative_to=relative,
        margin=margin,
        alpha=alpha,
        n_boot=n_boot,
        random_state=seed,
    )


def write_report(
    cmp: StudyComparison, *, title: str, single_file: bool = False, say: _Say | None = None
) -> Path:
    """`studies.write_comparison_report` into ``cmp.out``, linking each arm-seed's own report
    (relative links, so the folders can move together)."""
    import studies

    out = Path(cmp.out)
    links = {
        arm: [(f"seed {s}", _href(p / "report.html", out)) for s, p in m]
        for arm, m in cmp.arms.items()
    }
    html = studies.write_comparison_report(
        cmp.result,
        out,
        title=title,
        setup=list(cmp.setup),
        arm_reports=links,
        single_file=single_file,
    )
    if say is not None:
        say(f"report: {html}")
    return Path(html)


def _href(target: Path, out: Path) -> str:
    """``target`` relative to ``out`` with forward slashes (a link inside report.html)."""
    return Path(os.path.relpath(target.resolve(), out.resolve())).as_posix()
