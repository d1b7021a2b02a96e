"""The study's answer, as data (``report.json`` ``answer``) and in plain words.

What a reader of `attrimp study run` needs first, in this order:

1. **The leak.** The attribute-only baseline (retrieval from the annotations alone) beside the
   oracle and the backbone, and the share of the oracle's gain over the backbone that the
   annotations alone could explain: an oracle router hands the model the annotation, and an
   annotation can single out the identity by itself.
2. **The ranking.** Groups ordered by the evidence that switching their experts changes
   re-identification, in either direction (the study consensus of `attrimp.study.analyses`,
   on unsigned −log10 p); the direction (helps / hurts) is shown beside the rank, never folded
   into it. A group that cannot be tested gets no rank and is listed after, with its reason.
3. **A verdict per group** from the leave-one-out design: ``helps`` / ``hurts`` (Holm p <
   alpha), ``negligible`` (TOST within ±margin), ``inconclusive`` (neither, with the minimum
   detectable effect at 80 % power saying how large an effect this study could have seen),
   ``not testable``.
4. **The switching analysis at its unit.** Each group's randomisation p across configurations
   beside the battery's identity-clustered p; the switching analysis "finds" a group only when
   the randomisation test supports it.
5. **Disagreements explained.** Leave-one-out asks what the model loses when this group alone is
   switched off with every other on; Shapley / switching ask what the group adds on average over
   subsets. Where they differ beyond their intervals, the answer says so and why.

One sign convention holds everywhere: ΔmAP = mAP with every expert on minus mAP without the
group's experts, so positive = the attribute helps re-identification.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from attrimp.study.analyses import StudyAnalyses
from studies.page import format_p
from studies.report import build_summary
from studies.verdicts import finite_or_none

#: the reliance analyses of the study consensus, as the answer names them
ANALYSIS_NAMES = {
    "leave_one_out": "leave-one-group-out (paired)",
    "switching": "per-query switching battery",
    "configurations": "configuration-level battery",
}

#: the two questions behind a disagreement, said once wherever one is shown
QUESTIONS = (
    "Leave-one-out answers: what does the model lose if this group alone is switched off with "
    "every other on? Switching / Shapley answers: what does the group add on average over "
    "subsets?"
)

_ON = {"1", "1.0", "true", "yes", "on"}


# --------------------------------------------------------------------------- signals


def _on_direction(rec: Mapping[str, Any]) -> float | None:
    """+1 when switching a group's experts on raises the battery's outcome, -1 when it lowers
    it (the battery compares a level with its reference; which of on/off is the reference
    depends on the table)."""
    eff = rec.get("effect")
    if eff is None or not np.isfinite(eff) or eff == 0:
        return None
    s = float(np.sign(eff))
    if str(rec.get("level")).lower() in _ON:
        return s
    if str(rec.get("reference")).lower() in _ON:
        return -s
    return None


def _battery_signals(analyses: StudyAnalyses) -> dict[str, dict[str, dict[str, Any]]]:
    """analysis -> group -> {direction, found} from each reliance battery's summary (its first
    outcome: AP for switching, mAP for configurations). The switching battery's own "found"
    is its identity-clustered test, which takes configuration-to-configuration variation for
    signal; the answer replaces it with the randomisation test (`build_answer`)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in ("switching", "configurations"):
        battery = analyses.batteries.get(name)
        if battery is None:
            continue
        first = battery.outcomes[0].outcome if battery.outcomes else None
        out[name] = {
            r["attribute"]: {"direction": _on_direction(r), "found": r.get("matters")}
            for r in build_summary(battery)
            if r["outcome"] == first
        }
    return out


# --------------------------------------------------------------------------- the answer as data


def build_answer(
    importance: pd.DataFrame,
    paired: pd.DataFrame | None,
    consensus: pd.DataFrame | None,
    kendall_w: float | None,
    signals: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    alpha: float,
    verdicts: pd.DataFrame | None = None,
    switching: pd.DataFrame | None = None,
    shapley: pd.DataFrame | None = None,
    margin: float | None = None,
    leak: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer as data: the leak block, then per group in consensus order (ranked groups
    first, the untestable after) its rank, verdict, direction, leave-one-out ΔmAP with CI,
    the verdict's Holm p / TOST p / MDE, the Wilcoxon Holm p beside them, both switching p's,
    the Shapley value and the disagreement sentence, and each reliance analysis's signal."""
    rows = _rows_by_attribute(importance, paired, verdicts, switching, shapley)
    order = _order(consensus, verdicts, importance)
    ranks = {} if consensus is None else consensus.set_index("attribute")["rank"].to_dict()
    groups = [
        _group_answer(
            a,
            finite_or_none(ranks.get(a)),
            rows={k: v.get(a, {}) for k, v in rows.items()},
            signals={name: dict(s.get(a, {})) for name, s in signals.items()},
            alpha=alpha,
            margin=margin,
        )
        for a in order
    ]
    groups.sort(key=lambda g: not g["testable"])  # stable: the untestable after the ranked
    return {
        "alpha": alpha,
        "margin": margin,
        "test": "clustered_mean_t" if verdicts is not None else "wilcoxon_signed_rank",
        "ranking": "unsigned evidence (−log10 p) over the reliance analyses; untestable groups "
        "unranked",
        "analyses": _ranked_analyses(consensus),
        "kendall_w": kendall_w,
        "leak": dict(leak) if leak else None,
        "groups": groups,
    }


def _rows_by_attribute(
    importance: pd.DataFrame,
    paired: pd.DataFrame | None,
    verdicts: pd.DataFrame | None,
    switching: pd.DataFrame | None,
    shapley: pd.DataFrame | None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each input table as attribute -> row (an absent table gives no rows)."""
    wil, t = _paired_by_test(paired)

    def by_attr(df: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
        if df is None or not len(df):
            return {}
        return df.drop_duplicates("attribute").set_index("attribute").to_dict("index")

    return {
        "loo": by_attr(importance),
        "wilcoxon": wil,
        "paired_t": t,
        "verdict": by_attr(verdicts),
        "switching": by_attr(switching),
        "shapley": by_attr(shapley),
    }


def _order(
    consensus: pd.DataFrame | None, verdicts: pd.DataFrame | None, importance: pd.DataFrame
) -> list[str]:
    """Consensus order (ranked, then the untestable it lists after), then anything else."""
    order: list[str] = []
    for df in (consensus, verdicts, importance):
        if df is not None and len(df):
            order += [a for a in df["attribute"] if a not in order]
    return order


def _ranked_analyses(consensus: pd.DataFrame | None) -> list[str]:
    """The analyses that ranked the groups, from the consensus table's ``rank_<analysis>``."""
    if consensus is None:
        return []
    names = [c.removeprefix("rank_") for c in consensus.columns if c.startswith("rank_")]
    return [n for n in names if n not in ("ci_low", "ci_high", "stability")]


def _paired_by_test(paired: pd.DataFrame | None) -> tuple[dict, dict]:
    """The paired tests per group: (Wilcoxon signed-rank, paired t), each attribute -> row."""
    if paired is None or not len(paired):
        return {}, {}
    by_test = {k: v.set_index("attribute") for k, v in paired.groupby("test", sort=False)}
    wil = by_test.get("wilcoxon_signed_rank", pd.DataFrame()).to_dict("index")
    t = by_test.get("paired_t", pd.DataFrame()).to_dict("index")
    return wil, t


def _group_answer(
    attribute: str,
    rank: float | None,
    *,
    rows: Mapping[str, Mapping[str, Any]],
    signals: dict[str, dict[str, Any]],
    alpha: float,
    margin: float | None,
) -> dict[str, Any]:
    """One group of ``answer.groups`` (docs/study.md lists the fields)."""
    loo, v, sw, sh = rows["loo"], rows["verdict"], rows["switching"], rows["shapley"]
    # the verdict's estimate is the same ΔmAP (mean per-query ΔAP) where the importance table,
    # which adds the identity-bootstrap CI, is not given
    delta = finite_or_none(loo.get("delta_map", v.get("estimate")))
    verdict = v.get("verdict") or _fallback_verdict(rows["wilcoxon"], delta, alpha)
    testable = verdict != "not testable"
    p_holm = (
        finite_or_none(v.get("p_holm")) if v else finite_or_none(rows["wilcoxon"].get("p_holm"))
    )
    matters = verdict in ("helps", "hurts") if testable else None
    signals["leave_one_out"] = {
        "direction": None if not delta else float(np.sign(delta)),
        "found": matters,
    }
    p_rand = finite_or_none(sw.get("p_switching_randomization_holm"))
    if "switching" in signals:
        # found only where the test at the unit the design varied supports it
        signals["switching"]["found"] = None if p_rand is None else bool(p_rand < alpha)
    return {
        "attribute": attribute,
        "rank": rank if testable else None,
        "testable": testable,
        "reason": v.get("reason") if not testable else None,
        "verdict": verdict,
        "direction": _direction_word(delta) if testable else None,
        "delta_map": delta,
        "ci_low": finite_or_none(loo.get("ci_low")),
        "ci_high": finite_or_none(loo.get("ci_high")),
        "p_value": finite_or_none(v.get("p_value")),
        "p_holm": p_holm,
        "p_tost": finite_or_none(v.get("p_tost")),
        "mde": finite_or_none(v.get("mde")),
        "margin": finite_or_none(v.get("margin", margin)),
        "p_holm_wilcoxon": finite_or_none(rows["wilcoxon"].get("p_holm")),
        "p_holm_paired_t": finite_or_none(rows["paired_t"].get("p_holm")),
        "matters": matters,
        "share_hurt": finite_or_none(loo.get("share_hurt")),
        "p_switching_identity": finite_or_none(sw.get("p_switching_identity")),
        "p_switching_battery": finite_or_none(sw.get("p_switching_battery")),
        "p_switching_randomization": finite_or_none(sw.get("p_switching_randomization")),
        "p_switching_randomization_holm": p_rand,
        "mde_switching": finite_or_none(sw.get("mde_switching")),
        "n_randomized": finite_or_none(sw.get("n_randomized")),
        "shapley": finite_or_none(sh.get("shapley")),
        "shapley_ci_low": finite_or_none(sh.get("shapley_ci_low")),
        "shapley_ci_high": finite_or_none(sh.get("shapley_ci_high")),
        "disagree": bool(sh["disagree"]) if sh.get("disagree") is not None else None,
        "explanation": sh.get("explanation") if sh.get("disagree") else None,
        "signals": signals,
    }


def _fallback_verdict(wilcoxon: Mapping[str, Any], delta: float | None, alpha: float) -> str:
    """Without a verdict table (a report built from the paired tests alone): not testable when
    the Wilcoxon test had no p (every difference 0), helps / hurts when its Holm p < alpha,
    else inconclusive (no equivalence test was run, so never negligible)."""
    p = finite_or_none(wilcoxon.get("p_holm"))
    if p is None:
        return "not testable"
    if p < alpha and delta:
        return "helps" if delta > 0 else "hurts"
    return "inconclusive"


def _direction_word(delta: float | None) -> str | None:
    """The sign of ΔmAP in words (significant only where the verdict says helps / hurts)."""
    if not delta:
        return None
    return "helps" if delta > 0 else "hurts"


def leak_block(
    headline: Mapping[str, Any], attribute_only: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The attribute-only baseline beside the oracle and the backbone, and the share of the
    oracle's gain over the backbone that the annotations alone could explain:
    (attribute-only − backbone) / (oracle − backbone), clipped to [0, 1] (``share_raw``
    unclipped). None without the three numbers."""
    a = finite_or_none((attribute_only or {}).get("mAP"))
    o, b = finite_or_none(headline.get("full_mAP")), finite_or_none(headline.get("backbone_mAP"))
    if a is None or o is None or b is None:
        return None
    gain = o - b
    raw = (a - b) / gain if gain > 0 else None
    return {
        "attribute_only_mAP": a,
        "oracle_mAP": o,
        "backbone_mAP": b,
        "oracle_gain": gain,
        "share_of_gain": None if raw is None else float(min(1.0, max(0.0, raw))),
        "share_raw": raw,
        "unique_signature_share": finite_or_none(
            (attribute_only or {}).get("unique_signature_share")
        ),
    }


# --------------------------------------------------------------------------- the answer in words


def leak_text(leak: Mapping[str, Any] | None) -> str | None:
    """The first paragraph: how far the annotations alone go, against the oracle's gain."""
    if not leak:
        return None
    a, o, b = leak["attribute_only_mAP"], leak["oracle_mAP"], leak["backbone_mAP"]
    where = "above" if a > o else "below" if a < o else "level with"
    text = (
        f"Attributes alone retrieve at mAP {a:.3f} (ranking the gallery by the annotations, no "
        f"image), {where} the oracle model's {o:.3f} (backbone alone {b:.3f})"
    )
    share = leak.get("share_of_gain")
    if share is None:
        return text + "; the oracle gains nothing over the backbone to explain."
    gain = f"the oracle's gain over the backbone ({b:.3f} → {o:.3f})"
    if share >= 0.5:
        amount = "all" if share >= 1 else f"most ({100 * share:.0f} %)"
        text += (
            f": {amount} of {gain} can be the annotation telling the model who the person is, "
            "not what its experts see in the image"
        )
    else:
        text += f": the annotations alone could explain {100 * share:.0f} % of {gain}"
    unique = leak.get("unique_signature_share")
    if unique is not None:
        text += (
            f" ({100 * unique:.0f} % of test identities carry an attribute vector no other shares)"
        )
    return text + ". Every effect below is an effect of routing by annotations, this leak included."


def answer_paragraphs(report: Mapping[str, Any]) -> list[str]:
    """The answer's paragraphs, top to bottom: the leak, the findings (ranking, verdicts, the
    switching design), the analyses' agreement with the accuracies (the learned router's share
    of the gain), the disagreements between the analyses."""
    ans = report.get("answer") or {}
    groups = ans.get("groups", [])
    leak = leak_text(ans.get("leak"))
    findings = _finding_text(groups, ans)
    accuracy = (
        _agreement_text(ans.get("kendall_w"), ans.get("analyses") or [])
        + _accuracy_text(report.get("headline") or {})
    ).strip()
    return [p for p in (leak, findings, accuracy, _disagreement_text(groups)) if p]


def answer_text(report: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The answer in plain words: one lead (the paragraphs joined, the leak first) and one
    sentence per group (ranked groups in rank order, then the untestable)."""
    return " ".join(answer_paragraphs(report)), [
        _group_sentence(g) for g in (report.get("answer") or {}).get("groups", [])
    ]


def _finding_text(groups: list[Mapping[str, Any]], ans: Mapping[str, Any]) -> str:
    """How the groups are ranked and tested, and how many get each verdict."""
    alpha, margin = ans.get("alpha", 0.05), ans.get("margin")
    by = {v: [g for g in groups if g.get("verdict") == v] for v in _VERDICT_ORDER}
    testable = [g for g in groups if g.get("testable", True)]
    text = (
        f"Of {len(groups)} attribute groups, ranked by the evidence that switching their experts "
        "changes re-identification in either direction (direction shown apart): "
    )
    parts = []
    if by["helps"]:
        parts.append(f"the model relies on {_names(by['helps'])} (switching it off costs mAP)")
    if by["hurts"]:
        parts.append(
            f"the experts of {_names(by['hurts'])} hurt it (switching them off raises mAP)"
        )
    if not (by["helps"] or by["hurts"]):
        parts.append("none is shown to matter")
    if by["negligible"]:
        within = f"within ±{margin:.3f} mAP" if margin else "within the margin"
        parts.append(f"{_names(by['negligible'])} {_are(by['negligible'])} negligible ({within})")
    if by["inconclusive"]:
        mdes = [g["mde"] for g in by["inconclusive"] if g.get("mde") is not None]
        mde = (
            f"; it could only have detected |ΔmAP| of {min(mdes):.3f} to {max(mdes):.3f}"
            if mdes
            else ""
        )
        parts.append(f"this study cannot tell for {_names(by['inconclusive'])} (inconclusive{mde})")
    if by["not testable"]:
        one = len(by["not testable"]) == 1
        parts.append(
            f"{_names(by['not testable'])} cannot be tested here and "
            f"{'gets' if one else 'get'} no rank"
        )
    test = (
        f" Verdicts come from leave-one-out: per-query ΔAP paired by query, an "
        f"identity-clustered t test, Holm over the {len(testable)} testable groups at "
        f"{alpha:g}; negligible = two one-sided tests within the margin; MDE = the smallest "
        "|ΔmAP| this design detects with 80 % power."
        if ans.get("test") == "clustered_mean_t"
        else f" (Paired Wilcoxon signed-rank test per identity, Holm p < {alpha:g}.)"
    )
    return text + "; ".join(parts) + "." + test + _switching_summary(groups, alpha)


def _switching_summary(groups: list[Mapping[str, Any]], alpha: float) -> str:
    """Which groups the switching analysis finds at the unit its design varied."""
    tested = [g for g in groups if g.get("p_switching_randomization_holm") is not None]
    if not tested:
        return ""
    found = [g for g in tested if g["p_switching_randomization_holm"] < alpha]
    names = _names(found) if found else "no group"
    return (
        f" Averaged over the sampled configurations (randomisation test across configurations, "
        f"Holm at {alpha:g}), switching finds {names}." + _design_power(tested)
    )


def _design_power(groups: list[Mapping[str, Any]]) -> str:
    """How many random configurations the switching design drew and the average effect it
    could detect with them: the number of configurations is a design choice (its MDE shrinks
    with it), so the reader sees what this study could and could not have found."""
    n = [g["n_randomized"] for g in groups if g.get("n_randomized") is not None]
    mde = [g["mde_switching"] for g in groups if g.get("mde_switching") is not None]
    if not n or not mde:
        return ""
    return (
        f" It drew {int(max(n))} random configurations (ablation.random_subsets); with them an "
        f"average per-query effect of about {float(np.median(mde)):.3f} AP per group (median "
        f"MDE, 80 % power, two-way clustered) is detectable, and a smaller one may be missed."
    )


_VERDICT_ORDER = ("helps", "hurts", "negligible", "inconclusive", "not testable")


def _names(groups: list[Mapping[str, Any]]) -> str:
    names = [g["attribute"] for g in groups]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _are(groups: list[Mapping[str, Any]]) -> str:
    return "is" if len(groups) == 1 else "are"


def _agreement_text(w: float | None, analyses: list[str]) -> str:
    if w is None:
        return ""
    word = "strongly" if w >= 0.7 else "moderately" if w >= 0.4 else "weakly"
    return (
        f" The {len(analyses)} reliance analyses agree {word} on the order of the groups "
        f"(Kendall's W = {w:.2f}; 1 = the same ranking)."
    )


def _accuracy_text(h: Mapping[str, Any]) -> str:
    if h.get("full_mAP") is None:
        return ""
    learned = f", learned router {_f(h['learned_mAP'])}" if h.get("learned_mAP") is not None else ""
    reading = f" {h['learned_summary']}" if h.get("learned_summary") else ""
    return (
        f" Accuracy (mAP, fraction): full oracle {_f(h['full_mAP'])}, backbone only "
        f"{_f(h.get('backbone_mAP'))}{learned}.{reading}"
    )


def _disagreement_text(groups: list[Mapping[str, Any]]) -> str | None:
    """The two questions, and which groups' answers to them differ (None when none do)."""
    split = [g for g in groups if g.get("disagree")]
    if not split:
        return None
    return (
        f"{QUESTIONS} When groups interact both are right about different questions; they "
        f"differ beyond their intervals for {_names(split)} (see each group below)."
    )


def _group_sentence(g: Mapping[str, Any]) -> str:
    """One group in words: its verdict, ΔmAP with CI and the test behind the verdict, the
    switching analysis's two p's, and the disagreement where there is one."""
    name, verdict = g["attribute"], g.get("verdict")
    if verdict == "not testable":
        return f"{name} is not testable: {g.get('reason') or 'no test was possible'}; no rank."
    rank = f"rank {g['rank']:g}: " if g.get("rank") is not None else ""
    text = rank + _verdict_clause(g)
    switching = _switching_clause(g)
    if switching:
        text += f"; {switching}"
    text += f"; {_found_text(g)}"
    if g.get("disagree") and g.get("explanation"):
        text += f". {g['explanation']}"
    return text.rstrip(".") + "."


def _found_text(g: Mapping[str, Any]) -> str:
    """How many reliance analyses find the group, and which of them that find it point the
    other way (a real disagreement the reader should see, e.g. switching vs leave-one-out)."""
    sig = g.get("signals", {})
    tested = [k for k, v in sig.items() if v.get("found") is not None]
    hits = [k for k in tested if sig[k]["found"]]
    text = f"found by {len(hits)} of the {len(tested)} reliance analyses that test it"
    own = np.sign(g.get("delta_map") or 0.0)
    against = [
        ANALYSIS_NAMES.get(k, k)
        for k in hits
        if k != "leave_one_out" and own and sig[k].get("direction") == -own
    ]
    if against:
        verb = "finds" if len(against) == 1 else "find"
        text += f", but the {' and the '.join(against)} {verb} the opposite direction"
    return text


def _verdict_clause(g: Mapping[str, Any]) -> str:
    """The verdict with its numbers: Holm p for helps / hurts, TOST p for negligible, the MDE
    for inconclusive (and for every testable group, the power behind the verdict)."""
    name, verdict, delta = g["attribute"], g.get("verdict"), g.get("delta_map")
    ci = (
        f"ΔmAP = {delta:+.3f}, 95% CI {g['ci_low']:+.3f} to {g['ci_high']:+.3f}"
        if delta is not None and g.get("ci_low") is not None
        else f"ΔmAP = {delta:+.3f}"
        if delta is not None
        else "no ΔmAP"
    )
    mde = f"MDE {g['mde']:.3f}" if g.get("mde") is not None else "no MDE"
    margin = f"±{g['margin']:.3f}" if g.get("margin") is not None else "the margin"
    wil = f", Wilcoxon {_p(g['p_holm_wilcoxon'])}" if g.get("p_holm_wilcoxon") is not None else ""
    if verdict in ("helps", "hurts"):
        verb = "costs" if delta > 0 else "gains"
        return (
            f"{name} {verdict}: switching its experts off {verb} {abs(delta):.3f} mAP ({ci}); "
            f"Holm p = {_p(g.get('p_holm'))}{wil}; {mde}"
        )
    if verdict == "negligible":
        return (
            f"{name} is negligible: {ci}, shown to lie within {margin} mAP "
            f"(TOST p = {_p(g.get('p_tost'))}); {mde}"
        )
    return (
        f"{name} is inconclusive: {ci}; "
        f"neither shown to matter (Holm p = {_p(g.get('p_holm'))}) nor to lie within {margin} "
        f"(TOST p = {_p(g.get('p_tost'))}); this study could detect |ΔmAP| ≥ "
        f"{g['mde']:.3f} with 80 % power"
        if g.get("mde") is not None
        else f"{name} is inconclusive: {ci}; Holm p = {_p(g.get('p_holm'))}"
    )


def _switching_clause(g: Mapping[str, Any]) -> str | None:
    """The switching analysis's verdict on the group: the randomisation p across
    configurations (the unit the design varied) beside the identity-clustered p."""
    rand, ident = g.get("p_switching_randomization"), g.get("p_switching_identity")
    if rand is None and ident is None:
        return None
    if rand is None:
        return (
            f"switching battery: identity-clustered Holm p = {_p(ident)} (no randomisation test "
            "across configurations, so the switching analysis does not count as finding it)"
        )
    found = (
        "supports" if g.get("signals", {}).get("switching", {}).get("found") else "does not support"
    )
    holm = g.get("p_switching_randomization_holm")
    return (
        f"switching across configurations: randomisation p = {_p(rand)} (Holm {_p(holm)}), "
        f"which {found} it; the identity-clustered test that counts every query as fresh "
        f"evidence gave {_p(ident)}"
    )


def planted_sentence(planted: Mapping[str, Any] | None) -> str | None:
    """The planted design of the synthetic world in words (None for real data)."""
    if not planted:
        return None
    vis = planted.get("visibility") or {}
    hidden = [g for g, v in vis.items() if v == 0]
    dim = [f"{g} ({100 * v:.0f}% visible)" for g, v in vis.items() if 0 < v < 1]
    counts = planted.get("counts") or {}
    split = ""
    if counts.get("train_identities") is not None:
        split = (
            f" ({counts['train_identities']} for training, "
            f"{counts.get('test_identities')} for testing)"
        )
    text = (
        f"Synthetic world (seed {planted.get('seed')}): {planted.get('n_identities')} identities "
        f"seen by {planted.get('n_cameras')} cameras{split}, attributes drawn with "
        f"{planted.get('priors', 'the dataset')} priors."
    )
    if hidden or dim:
        what = [*(f"{g} (invisible)" for g in hidden), *dim]
        one = len(what) == 1
        text += (
            f" Planted truth: {', '.join(what)} {'stays' if one else 'stay'} in the annotations "
            f"but not in the pixels, so only {'its expert' if one else 'their experts'} can "
            f"carry {'it' if one else 'them'}: {'it' if one else 'they'} should come out among "
            "the most important groups. Every other attribute is drawn visibly."
        )
    else:
        text += " Every attribute is drawn visibly (no planted reliance)."
    return text


def planted_check(report: Mapping[str, Any]) -> str | None:
    """Where the planted (invisible) groups landed in the consensus (an untestable one has
    no rank and says so)."""
    planted = report.get("planted_design") or {}
    hidden = [g for g, v in (planted.get("visibility") or {}).items() if v < 1]
    cons = {r["attribute"]: r for r in report.get("consensus") or []}
    if not hidden or not cons:
        return None
    n = sum(r.get("rank") is not None for r in cons.values())
    where = [
        f"{g} ranks {cons[g]['rank']:g} of {n}"
        if cons[g].get("rank") is not None
        else f"{g} is not testable"
        for g in hidden
        if g in cons
    ]
    return "Planted truth check: " + "; ".join(where) + "." if where else None


def _p(p: float | None) -> str:
    return "n/a" if p is None else format_p(p)


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _interval(v: float | None, lo: float | None, hi: float | None) -> str:
    if v is None:
        return ""
    return f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else f"{v:+.3f}"


def answer_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The answer as the page's table, one row per group (ranked first, untestable after),
    columns named for a reader."""
    rows = []
    for g in (report.get("answer") or {}).get("groups", []):
        margin = f" (±{g['margin']:.3f})" if g.get("margin") is not None else ""
        rows.append(
            {
                "rank": g.get("rank"),
                "attribute": g["attribute"],
                "verdict": g.get("verdict") or "",
                "direction": g.get("direction") or "",
                "ΔmAP without it [95% CI]": _interval(
                    g.get("delta_map"), g.get("ci_low"), g.get("ci_high")
                ),
                "Holm p (clustered t)": g.get("p_holm"),
                f"TOST p{margin}": g.get("p_tost"),
                "MDE (80% power)": g.get("mde"),
                "Holm p (Wilcoxon)": g.get("p_holm_wilcoxon"),
                "switching p (identity-clustered)": g.get("p_switching_identity"),
                "switching p (randomisation)": g.get("p_switching_randomization"),
                "Shapley [95% CI]": _interval(
                    g.get("shapley"), g.get("shapley_ci_low"), g.get("shapley_ci_high")
                ),
                "share_hurt": g.get("share_hurt"),
                "why not testable": g.get("reason") or "",
            }
        )
    return rows
