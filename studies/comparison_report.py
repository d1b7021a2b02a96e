"""The comparison report of `studies.compare` (and of `attrimp study compare`): report.json, the
same page as report.md and report.html, the tables as CSV and two figures.

    >>> cmp = studies.compare(df, by="backbone", outcome="ap", cluster="pid", seed="seed")  # doctest: +SKIP
    >>> studies.write_comparison_report(cmp, "out/", setup=["Two backbones, 3 seeds each."])  # doctest: +SKIP

It answers first, like the study report: the title, the setup, then the answer (the result's
summary, one sentence per finding: each difference found, what was not found with its smallest
detectable difference, the one-run warning, the agreement beside its between-seed baseline).
Then the two figures (every group's effect per arm side by side; each arm pair's difference with
its verdict and the ±margin band), the differences, effects, agreement and oracle-gain tables,
links to each arm's own report, and the groups not every arm has.

report.json is built first and both pages are rendered from it alone (the project's rule: they
cannot disagree); the page is a `studies.page.Page`, rendered by the report stack of the other
reports (`studies.page`, `studies.plots`, `studies.format`), and every file is written through
`attrimp.io`'s atomic writers. Deterministic: no timestamps, NaN written as null.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attrimp.io import atomic_write_bytes, atomic_write_frame, atomic_write_text
from studies.errors import StudyInputError
from studies.format import CI, MINUS, format_cell, format_ci, format_effect
from studies.page import (
    Box,
    Bullets,
    Definitions,
    Image,
    Link,
    Links,
    Page,
    Section,
    Table,
    Text,
    to_html,
    to_markdown,
)
from studies.report import clean_value

#: the report.json layout; a new optional key keeps /1, a renamed or removed key bumps it
SCHEMA_VERSION = "studies.comparison/1"

#: the single-file export's name, beside report.html
SINGLE_FILE = "report-single.html"

#: the tables written under tables/ (and kept in report.json under the same keys)
TABLES = ("effects", "differences", "agreement", "gains")

#: the columns of each table when the result has none of it (an empty CSV keeps its header)
_EMPTY_COLUMNS = {
    "gains": ["arm", "gain", "ci_low", "ci_high", "seed_sd", "n_seeds"],
}

#: what "effect" means, by the result's mode (`studies.ComparisonResult.mode`)
EFFECT_MEANING = {
    "groups": "the mean of the group's per-query effects (e.g. ΔAP = AP with every expert minus "
    "AP with the group's experts off: positive = the group helps)",
    "levels": "the mean outcome of the rows at the group's level (shown beside the group) minus "
    "the mean of its other rows",
}

#: terms of the page, explained once (the effect's own line is `_glossary`'s)
GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "relative effect",
        "the effect as a share of the arm's own oracle gain (the outcome with every expert minus "
        "the backbone alone): arms with different baselines compare on one scale.",
    ),
    (
        "difference",
        "the first arm's effect minus the second's, with the 95% CI of its own test (difference "
        "± t quantile × standard error, so the interval and p agree); the arms' effects carry "
        "bootstrap CIs (identities resampled, and the seeds within each arm where there are "
        "several).",
    ),
    (
        "test",
        "the arm × group interaction test: with several seeds per arm a t test whose error has "
        "two parts, how the seeds' effects spread (training noise) and how the seed-pooled "
        "difference varies over identities (the people sampled); with one run per arm a "
        "cluster-robust Wald test by identity, whose difference then includes training noise.",
    ),
    (
        "verdict",
        "differs: Holm-adjusted p below alpha over every group and arm pair; negligible: inside "
        "±margin by two one-sided tests; inconclusive: neither, with the minimum detectable "
        "difference (MDD, 80% power at the Holm level) saying how large a difference could "
        "have hidden.",
    ),
    (
        "agreement",
        "Kendall τ-b and Spearman ρ between two arms' signed effects over the groups (1 = the "
        "same order). Read it against the between-seed baseline (two training runs of one arm), "
        "best through τ between single runs, which is equally noisy on both sides.",
    ),
)


def _glossary(mode: Any) -> list[tuple[str, str]]:
    """The glossary with the effect explained for the result's mode (both where unknown)."""
    if mode in EFFECT_MEANING:
        meaning = EFFECT_MEANING[mode]
    else:
        meaning = (
            f"in a table of paired effects, {EFFECT_MEANING['groups']}; in a table of rows "
            f"with attributes, {EFFECT_MEANING['levels']}"
        )
    effect = (
        "effect",
        f"a group's effect on the outcome in one arm, averaged over the arm's training runs "
        f"(seeds): {meaning}.",
    )
    return [effect, *GLOSSARY]


_PAIRED_WORDS = {
    True: "the arms share their identities (paired: each identity's noise cancels)",
    False: "the arms have different identities (unpaired)",
}


# --------------------------------------------------------------------------- report.json


def _records(df: pd.DataFrame | None) -> list[dict[str, Any]]:
    return clean_value(df) if isinstance(df, pd.DataFrame) else []


def _table(result: Any, name: str) -> pd.DataFrame:
    """One of the result's tables (an empty frame with the known columns where it has none)."""
    df = getattr(result, name, None)
    if isinstance(df, pd.DataFrame) and (len(df.columns) or name not in _EMPTY_COLUMNS):
        return df
    return pd.DataFrame(columns=_EMPTY_COLUMNS.get(name, []))


def result_dict(result: Any) -> dict[str, Any]:
    """The result as JSON-safe data: its own ``to_dict()`` where it has one, else every table as
    records plus summary, arms, unshared groups and pairing (the same keys)."""
    to_dict = getattr(result, "to_dict", None)
    if callable(to_dict):
        out = dict(clean_value(to_dict()))
    else:
        out = {name: _records(_table(result, name)) for name in TABLES}
        out.update(
            summary=list(getattr(result, "summary", []) or []),
            arms=[str(a) for a in getattr(result, "arms", []) or []],
            unshared=getattr(result, "unshared", {}) or {},
            paired=getattr(result, "paired", None),
        )
    for name in TABLES:  # a result without gains still has the key
        out.setdefault(name, [])
    out.setdefault("unshared", {})
    out.setdefault("paired", getattr(result, "paired", None))
    for key in ("alpha", "margin"):
        if key not in out and getattr(result, key, None) is not None:
            out[key] = getattr(result, key)
    return clean_value(out)


def _links(arm_reports: Mapping[str, Sequence[tuple[str, str]]] | None) -> dict[str, list]:
    out: dict[str, list] = {}
    for arm, items in (arm_reports or {}).items():
        rows = []
        for item in items:
            if len(item) != 2:
                raise StudyInputError(
                    f"arm_reports[{arm!r}] holds {item!r}; each link is a (label, href) pair."
                )
            rows.append({"label": str(item[0]), "href": str(item[1])})
        out[str(arm)] = rows
    return out


def build_comparison_report(
    result: Any,
    *,
    title: str = "Comparison",
    setup: Sequence[str] = (),
    arm_reports: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> dict[str, Any]:
    """The report.json dictionary: ``schema_version``, ``title``, ``setup``, ``links`` (arm ->
    [{label, href}]), then the result's own data (`result_dict`)."""
    if isinstance(setup, str):
        setup = [setup]
    head = {
        "schema_version": SCHEMA_VERSION,
        "title": str(title),
        "setup": [str(s) for s in setup],
        "links": _links(arm_reports),
    }
    return head | result_dict(result)


def dumps(report: Mapping[str, Any]) -> str:
    """Canonical JSON text: strict (NaN and inf become null), indented, newline-terminated."""
    return json.dumps(clean_value(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- reading it back


def _frame(report: Mapping[str, Any], name: str) -> pd.DataFrame:
    """A table of report.json as a DataFrame (numbers as floats, null as NaN)."""
    df = pd.DataFrame(report.get(name) or [])
    for c in df.columns:
        if c in ("arm", "arm_a", "arm_b", "attribute", "level", "test", "verdict", "kind"):
            continue
        num = pd.to_numeric(df[c], errors="coerce")
        if num.notna().sum() == df[c].notna().sum():
            df[c] = num.astype(float)
    return df


def group_order(differences: pd.DataFrame, effects: pd.DataFrame | None = None) -> list[str]:
    """The groups by their largest |difference| over the arm pairs, largest first (untestable
    groups last, in table order): the order of both figures and of the tables."""
    if differences is not None and not differences.empty and "difference" in differences:
        size = pd.to_numeric(differences["difference"], errors="coerce").abs()
        key = size.groupby(differences["attribute"].astype(str), sort=False).max()
        ranked = key.sort_values(ascending=False, kind="stable", na_position="last")
        order = list(ranked.index)
    else:
        order = []
    if effects is not None and not effects.empty:
        order += [str(a) for a in dict.fromkeys(effects["attribute"]) if str(a) not in order]
    return order


def _alpha(report: Mapping[str, Any]) -> float:
    """The alpha of the verdicts: the result's own, else the one its not-found sentence names,
    else 0.05."""
    if isinstance(report.get("alpha"), (int, float)):
        return float(report["alpha"])
    for s in report.get("summary") or []:
        m = re.search(r"alpha ([0-9.eE-]+)\)", s)
        if m:
            try:
                return float(m.group(1))
            except ValueError:
                pass
    return 0.05


# --------------------------------------------------------------------------- cell text


def _num(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return x


def _effect_ci(v: Any, lo: Any, hi: Any) -> str:
    """``+0.059 [+0.027, +0.097]`` (the interval left out where a bound is missing)."""
    x = _num(v)
    if not np.isfinite(x):
        return ""
    ci = format_ci(CI(_num(lo), _num(hi)))
    return f"{format_effect(x)} {ci}".strip()


def _pct(v: float) -> str:
    """A share as a signed percentage with one decimal (``+48.2%``, true minus)."""
    text = f"{100 * v:+.1f}%"
    return MINUS + text[1:] if text.startswith("-") else text


def _pct_ci(v: Any, lo: Any, hi: Any) -> str:
    x = _num(v)
    if not np.isfinite(x):
        return ""
    a, b = _num(lo), _num(hi)
    ci = f" [{_pct(a)}, {_pct(b)}]" if np.isfinite(a) and np.isfinite(b) else ""
    return _pct(x) + ci


#: display column -> the machine column whose kind formats it (`studies.format.column_kind`)
_KINDS = {
    "Holm p": "p_holm",
    "p (interaction)": "p_interaction",
    "MDD": "mdd",
    "seed SD": "seed_sd",
    "seeds": "n_seeds",
    "groups": "n_groups",
    "τ between single runs": "kendall_tau",
}


def _fmt(key: str, value: Any) -> str:
    return format_cell(_KINDS.get(key, key), value)


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any()


def _level(r: Mapping[str, Any]) -> str:
    lv = r.get("level")
    if (
        lv is None
        or (isinstance(lv, float) and not np.isfinite(lv))
        or str(lv) == str(r.get("attribute"))
    ):
        return ""
    return str(lv)


def _sorted(df: pd.DataFrame, order: Sequence[str], *first: str) -> pd.DataFrame:
    if df.empty:
        return df
    rank = {a: i for i, a in enumerate(order)}
    key = df["attribute"].astype(str).map(lambda a: rank.get(a, len(rank)))
    cols = [c for c in first if c in df.columns]
    return df.assign(_k=key).sort_values([*cols, "_k"], kind="stable").drop(columns="_k")


#: arm names up to this long head the differences table's columns ("effect (vit)"); longer
#: ones would make it too wide to show the difference without scrolling, so the columns are
#: "effect (first)" / "(second)" and the text above the table names the arms
NAME_IN_HEADER = 16


def differences_rows(diffs: pd.DataFrame, order: Sequence[str]) -> list[dict[str, Any]]:
    """The differences table as a reader sees it: group, level, each arm's effect, the
    difference with its CI, the test, Holm p, the verdict and the MDD (two arms: the effect
    columns named by arm; more: an "arms" column and the first / second arm's effect)."""
    if diffs.empty:
        return []
    pairs = list(dict.fromkeys(zip(diffs["arm_a"].astype(str), diffs["arm_b"].astype(str))))
    single = len(pairs) == 1
    one = single and max(len(a) for a in pairs[0]) <= NAME_IN_HEADER  # arms named in headers
    rel = _has(diffs, "relative_a") or _has(diffs, "relative_b")
    out = []
    for r in _sorted(diffs, order).to_dict("records"):
        a, b = str(r["arm_a"]), str(r["arm_b"])
        ea, eb = (
            (f"effect ({a})", f"effect ({b})") if one else ("effect (first)", "effect (second)")
        )
        row: dict[str, Any] = {"group": str(r["attribute"]), "level": _level(r)}
        if not single:
            row["arms"] = f"{a} − {b}"
        row[ea] = _effect_ci(r.get("effect_a"), None, None)
        row[eb] = _effect_ci(r.get("effect_b"), None, None)
        if rel:
            ra, rb = (
                (f"relative ({a})", f"relative ({b})")
                if one
                else ("relative (first)", "relative (second)")
            )
            row[ra] = _pct_ci(r.get("relative_a"), None, None)
            row[rb] = _pct_ci(r.get("relative_b"), None, None)
        row["difference [95% CI]"] = _effect_ci(
            r.get("difference"), r.get("ci_low"), r.get("ci_high")
        )
        row["test"] = str(r.get("test") or "")
        row["Holm p"] = _num(r.get("p_holm"))
        row["verdict"] = str(r.get("verdict") or "")
        row["MDD"] = _num(r.get("mdd"))
        out.append(row)
    return _without_blank(out, "level")


def _without_blank(rows: list[dict[str, Any]], *cols: str) -> list[dict[str, Any]]:
    """``rows`` without the columns ``cols`` that are blank in every row (a paired-effects
    table has no levels)."""
    blank = [c for c in cols if all(r.get(c) in ("", None) for r in rows)]
    return [{k: v for k, v in r.items() if k not in blank} for r in rows]


def _one_test(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """The rows without their "test" column when every row ran the same test, and that test
    (said once above the table instead of on every row)."""
    tests = {r.get("test") for r in rows}
    if len(tests) != 1:
        return rows, None
    return [{k: v for k, v in r.items() if k != "test"} for r in rows], str(tests.pop())


def effects_rows(effects: pd.DataFrame, order: Sequence[str]) -> list[dict[str, Any]]:
    """Each arm's effect per group with its CI, relative to its gain where known, the
    seed-to-seed SD and the number of seeds."""
    if effects.empty:
        return []
    rel = _has(effects, "relative")
    sd = _has(effects, "seed_sd")
    out = []
    for r in _sorted(effects, order).to_dict("records"):
        row: dict[str, Any] = {
            "arm": str(r["arm"]),
            "group": str(r["attribute"]),
            "level": _level(r),
        }
        row["effect [95% CI]"] = _effect_ci(r.get("effect"), r.get("ci_low"), r.get("ci_high"))
        if rel:
            row["share of oracle gain [95% CI]"] = _pct_ci(
                r.get("relative"), r.get("relative_low"), r.get("relative_high")
            )
        if sd:
            row["seed SD"] = _num(r.get("seed_sd"))
        n = _num(r.get("n_seeds"))
        row["seeds"] = int(n) if np.isfinite(n) else None
        out.append(row)
    # the arm column groups rows of one arm; the group order holds within it
    arms = list(dict.fromkeys(str(a) for a in effects["arm"]))
    return _without_blank(sorted(out, key=lambda x: arms.index(x["arm"])), "level")


def agreement_rows(agree: pd.DataFrame) -> list[dict[str, Any]]:
    """Between-arm agreement rows, then each arm's between-seed baseline."""
    out = []
    for r in agree.to_dict("records"):
        between = str(r.get("kind")) == "between arms"
        what = f"{r['arm_a']} vs {r['arm_b']}" if between else f"seeds of {r['arm_a']} (baseline)"
        row: dict[str, Any] = {"compared": what}
        row["Kendall τ-b"] = _effect_ci(r.get("kendall_tau"), r.get("tau_low"), r.get("tau_high"))
        row["Spearman ρ"] = _effect_ci(r.get("spearman_rho"), r.get("rho_low"), r.get("rho_high"))
        row["τ between single runs"] = _num(r.get("tau_one_run"))
        n = _num(r.get("n_groups"))
        row["groups"] = int(n) if np.isfinite(n) else None
        out.append(row)
    return out


def gains_rows(gains: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for r in gains.to_dict("records"):
        row: dict[str, Any] = {"arm": str(r.get("arm"))}
        row["oracle gain [95% CI]"] = _effect_ci(r.get("gain"), r.get("ci_low"), r.get("ci_high"))
        if _has(gains, "seed_sd"):
            row["seed SD"] = _num(r.get("seed_sd"))
        n = _num(r.get("n_seeds"))
        row["seeds"] = int(n) if np.isfinite(n) else None
        out.append(row)
    return out


# --------------------------------------------------------------------------- the page


def _facts(report: Mapping[str, Any], effects: pd.DataFrame) -> str:
    """What was compared, in one line: the arms with their training runs, the groups, pairing."""
    arms = [str(a) for a in report.get("arms") or []]
    if not effects.empty and "n_seeds" in effects:
        seeds = effects.drop_duplicates("arm").set_index("arm")["n_seeds"]
    else:
        seeds = pd.Series(dtype=float)

    def runs(a: str) -> str:
        n = _num(seeds.get(a))
        if not np.isfinite(n):
            return a
        return f"{a} ({int(n)} training run{'s' if n != 1 else ''})"

    groups = effects["attribute"].nunique() if not effects.empty else 0
    text = f"Compared: {', '.join(runs(a) for a in arms)}, on {groups} attribute group(s)"
    paired = report.get("paired")
    if isinstance(paired, bool):
        text += f"; {_PAIRED_WORDS[paired]}"
    return text + "."


def _unshared_items(report: Mapping[str, Any]) -> list[str]:
    return [
        f"{arm}: {', '.join(str(g) for g in groups)}"
        for arm, groups in (report.get("unshared") or {}).items()
        if groups
    ]


def _md_target(href: str) -> str:
    """The Markdown twin of a report.html link (``…/report.md``); other targets unchanged."""
    base, _, anchor = href.partition("#")
    if base.endswith(".html"):
        base = base[: -len(".html")] + ".md"
    return base + (f"#{anchor}" if anchor else "")


#: what the links to the arms' reports say about where those pages are
ARMS_WHERE = (
    "These pages are files beside this report (each arm's studies in its own folder): copy "
    "those folders with report.html to keep the links working."
)


def _arm_links_section(report: Mapping[str, Any], *, single: bool) -> Section | None:
    """Links to each arm's own report(s); in the single-file page, where nothing beside the
    page exists, the paths are listed as text instead of links."""
    links = report.get("links") or {}
    if not any(links.values()):
        return None
    if single:
        items = [f"{arm}, {k['label']}: {k['href']}" for arm, ks in links.items() for k in ks]
        note = Text(
            "Each arm's own report is a file beside the comparison report (not inside this "
            "single file); the paths are relative to the comparison's folder.",
            note=True,
        )
        return Section("Each arm's own reports", [note, Bullets(items)])
    items = [
        Link(
            f"{arm}: {k['label']}",
            markdown=_md_target(k["href"]),
            html=k["href"],
            text=f"the {arm} arm's own report",
        )
        for arm, ks in links.items()
        for k in ks
    ]
    return Section("Each arm's own reports", [Links(items, where=ARMS_WHERE)])


def comparison_page(
    report: Mapping[str, Any], figures: Sequence[str] = (), *, single: bool = False
) -> Page:
    """The whole page in reading order, from report.json alone: the setup, the answer, the
    glossary, the figures with the differences table, the effects, the agreement, the oracle
    gains, the arms' own reports, the groups not compared. ``figures`` names the figures drawn
    (``forest``, ``differences``); ``single``: the page of the single-file export."""
    effects = _frame(report, "effects")
    diffs = _frame(report, "differences")
    order = group_order(diffs, effects)
    figs = set(figures)
    # the caller's setup says what was compared; without one, the page says it from the data
    intro: list[Any] = [Text(s) for s in report.get("setup") or []]
    intro = intro or [Text(_facts(report, effects))]
    answer = [Text(s) for s in report.get("summary") or []] or [Text("No comparison was made.")]
    sections = [
        Section("Answer", [Box(answer)]),
        Section("How to read this report", [Definitions(_glossary(report.get("mode")))]),
        _forest_section(effects, "forest" in figs),
        _differences_section(diffs, order, "differences" in figs),
        *_table_sections(report, effects, order),
    ]
    links = _arm_links_section(report, single=single)
    if links is not None:
        sections.append(links)
    unshared = _unshared_items(report)
    if unshared:
        note = Text("Not compared: each arm's groups that some other arm lacks.")
        sections.append(Section("Groups not in every arm", [note, Bullets(unshared)]))
    return Page(
        title=str(report.get("title") or "Comparison"),
        intro=intro,
        sections=sections,
        highlight_alpha=_alpha(report),
    )


def _forest_section(effects: pd.DataFrame, drawn: bool) -> Section:
    text = (
        "Every group's effect in every arm (95% CI), one colour and marker per arm; groups "
        "ordered by their largest difference between arms, largest on top."
    )
    if _has(effects, "relative"):
        text += " Right: the same as a share of each arm's oracle gain."
    blocks: list[Any] = [Text(text)]
    if drawn:
        blocks.append(Image("forest", "each group's effect per arm, side by side"))
    return Section("Effects side by side", blocks)


def _differences_section(diffs: pd.DataFrame, order: Sequence[str], drawn: bool) -> Section:
    rows, test = _one_test(differences_rows(diffs, order))
    text = (
        "Each arm pair's difference of effects per group with its 95% CI; the marker is the "
        "verdict, the grey band the ±margin within which a difference is negligible."
    )
    pairs = (
        list(dict.fromkeys(zip(diffs["arm_a"].astype(str), diffs["arm_b"].astype(str))))
        if not diffs.empty
        else []
    )
    if len(pairs) == 1 and any(c.endswith("(first)") for c in (rows[0] if rows else {})):
        text += f" First arm: {pairs[0][0]}; second arm: {pairs[0][1]}."
    if test:
        text += f" Every row's test: {test}."
    blocks: list[Any] = [Text(text)]
    if drawn:
        blocks.append(Image("differences", "difference of effects per arm pair and group"))
    blocks.append(Table(rows, fmt=_fmt))
    return Section("Differences between arms", blocks)


def _table_sections(
    report: Mapping[str, Any], effects: pd.DataFrame, order: Sequence[str]
) -> list[Section]:
    """The effects per arm, the rank agreement and (with gains) the oracle gains."""
    out = [
        Section(
            "Effects per arm",
            [
                Text(
                    "Each arm's effect per group, averaged over its training runs; seed SD: the "
                    "spread of the effect from one training run to the next."
                ),
                Table(effects_rows(effects, order), fmt=_fmt),
            ],
        ),
        Section(
            "Rank agreement",
            [
                Text(
                    "Between arms: bootstrap 95% interval. Between seeds (the baseline): the "
                    "mean over pairs of the arm's seeds, with the lowest and highest pair."
                ),
                Table(agreement_rows(_frame(report, "agreement")), fmt=_fmt),
            ],
        ),
    ]
    gains = _frame(report, "gains")
    if not gains.empty:
        text = (
            "Each arm's gain from its experts (every expert on minus the backbone alone): the "
            "denominator of the relative effects."
        )
        out.append(Section("Oracle gains", [Text(text), Table(gains_rows(gains), fmt=_fmt)]))
    return out


# --------------------------------------------------------------------------- figures and files


def make_figures(report: Mapping[str, Any]) -> dict[str, bytes]:
    """The page's figures from report.json (SVG where small, else PNG at 2x), by name."""
    from studies import plots

    effects = _frame(report, "effects")
    diffs = _frame(report, "differences")
    order = group_order(diffs, effects)
    arms = [str(a) for a in report.get("arms") or []] or list(
        dict.fromkeys(effects.get("arm", pd.Series(dtype=str)).astype(str))
    )
    out = {}
    drawn = {
        "forest": plots.comparison_forest(effects, order, arms),
        "differences": plots.comparison_differences(diffs, order),
    }
    for name, fig in drawn.items():
        if fig is not None:
            out[name] = plots.figure_bytes(fig)
    return out


def _figure_file(name: str, data: bytes) -> str:
    from studies.plots import figure_suffix

    return f"figures/{name}{figure_suffix(data)}"


def write_comparison_report(
    result: Any,
    out: str | Path,
    *,
    title: str = "Comparison",
    setup: Sequence[str] = (),
    arm_reports: Mapping[str, Sequence[tuple[str, str]]] | None = None,
    single_file: bool = False,
) -> Path:
    """Write the comparison report of ``result`` (a `studies.ComparisonResult`) into ``out``:
    report.json (schema ``studies.comparison/1``), report.md, report.html,
    tables/{effects,differences,agreement,gains}.csv and figures/ (forest, differences).

    ``setup``: sentences shown under the title (what was compared, paired or not, seeds per
    arm). ``arm_reports``: {arm: [(label, href relative to ``out``), ...]}, each arm's own
    report(s), linked from the page. ``single_file``: also write report-single.html, the page
    with every figure embedded and nothing outside it referenced (for sharing). Returns the
    path of report.html."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    report = build_comparison_report(result, title=title, setup=setup, arm_reports=arm_reports)
    atomic_write_text(folder / "report.json", dumps(report))
    for name in TABLES:
        atomic_write_frame(_csv_frame(_table(result, name)), folder / "tables" / f"{name}.csv")
    figs = make_figures(report)
    paths = {name: _figure_file(name, data) for name, data in figs.items()}
    for name, data in figs.items():
        atomic_write_bytes(folder / paths[name], data)
    page = comparison_page(report, list(figs))
    atomic_write_text(folder / "report.md", to_markdown(page, paths))
    atomic_write_text(folder / "report.html", to_html(page, figs, figure_links=paths))
    if single_file:
        write_single_file(folder)
    return folder / "report.html"


def write_single_file(out: str | Path) -> Path:
    """``report-single.html`` beside a written comparison report, from its report.json and
    figures: every figure embedded, no link to a file (the arms' reports listed by path)."""
    folder = Path(out)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    figs = {
        p.stem: p.read_bytes()
        for p in sorted((folder / "figures").glob("*"))
        if p.suffix in (".svg", ".png") and p.is_file()
    }
    page = comparison_page(report, list(figs), single=True)
    path = folder / SINGLE_FILE
    atomic_write_text(path, to_html(page, figs))
    return path


def _csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Infinite values become empty cells like NaN (JSON has no inf either)."""
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].where(np.isfinite(out[c].to_numpy(float)))
    return out


__all__ = [
    "SCHEMA_VERSION",
    "SINGLE_FILE",
    "build_comparison_report",
    "comparison_page",
    "group_order",
    "make_figures",
    "result_dict",
    "write_comparison_report",
    "write_single_file",
]
