"""The same battery written the way a notebook would: library defaults, one column at a time.

This is the baseline `bench_studies.py` times against `attrimp study analyze` (whole process
each, same table). It is deliberately *not* what attrimp does — it is what the issue calls the
naive approach, so the comparison shows what the design buys:

- GLM: ``statsmodels.formula`` binomial GLM with every attribute column as its own term and the
  default (model-based, non-robust, unclustered) covariance; ``wald_test_terms`` per term;
- tests: Mann–Whitney / Kruskal–Wallis per column on the raw rows (no clustering);
- scikit-learn ``RandomForestRegressor()`` and ``xgboost.XGBRegressor()`` with default settings on
  an 80/20 row split, scored by R²;
- ``sklearn.inspection.permutation_importance`` (defaults: 5 repeats) on every column separately,
  one-hot colour columns included one by one;
- ``shap.TreeExplainer(...).shap_values(X_test)`` on both models, mean |SHAP| per column;
- group scores by summing / taking the best column of each group, a mean-rank consensus, a few
  bar charts and CSVs.

    python benchmarks/naive_battery.py TABLE.csv --schema SCHEMA.toml --outcome ap --out DIR

The last line printed is JSON: ``{"top": [...], "ranking": [...]}`` (groups, most important first).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import shap  # noqa: E402
import statsmodels.api as sm  # noqa: E402
import statsmodels.formula.api as smf  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.ensemble import RandomForestRegressor  # noqa: E402
from sklearn.inspection import permutation_importance  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402
from xgboost import XGBRegressor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("table")
    ap.add_argument("--schema", required=True)
    ap.add_argument("--outcome", default="ap")
    ap.add_argument("--out", default="runs/naive")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    df = pd.read_csv(args.table)
    spec = tomllib.loads(Path(args.schema).read_text())
    groups = {
        g["name"]: ([g["column"]] if "column" in g else list(g["columns"])) for g in spec["groups"]
    }
    # constant columns break the formula's term tests: a notebook drops them first
    col_group = {c: g for g, cols in groups.items() for c in cols if df[c].nunique() > 1}
    cols = list(col_group)
    y = df[args.outcome]

    # 1. GLM, one term per column, default covariance
    formula = f"{args.outcome} ~ " + " + ".join(f"C({c})" for c in cols)
    glm = smf.glm(formula, data=df, family=sm.families.Binomial()).fit()
    wald = glm.wald_test_terms(skip_single=False, scalar=True).table
    glm_p = {c: float(wald.loc[f"C({c})", "pvalue"]) for c in cols if f"C({c})" in wald.index}
    glm.summary2().tables[1].to_csv(out / "glm.csv")

    # 2. tests per column on raw rows
    test_rows = []
    for c in cols:
        samples = [y[df[c] == v].to_numpy() for v in sorted(df[c].unique())]
        r = stats.mannwhitneyu(*samples) if len(samples) == 2 else stats.kruskal(*samples)
        test_rows.append({"column": c, "statistic": r.statistic, "p_value": r.pvalue})
    tests = pd.DataFrame(test_rows)
    tests["p_holm"] = multipletests(tests["p_value"], method="holm")[1]
    tests["p_fdr_bh"] = multipletests(tests["p_value"], method="fdr_bh")[1]
    tests.to_csv(out / "tests.csv", index=False)

    # 3. models, permutation importance per column, SHAP
    X = df[cols]
    x_tr, x_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=0)
    models = {
        "rf": RandomForestRegressor(random_state=0).fit(x_tr, y_tr),
        "xgb": XGBRegressor(random_state=0).fit(x_tr, y_tr),
    }
    perm, shap_abs, quality = {}, {}, {}
    for name, m in models.items():
        quality[name] = float(m.score(x_te, y_te))
        r = permutation_importance(m, x_te, y_te, random_state=0)
        perm[name] = pd.Series(r.importances_mean, index=cols)
        values = shap.TreeExplainer(m).shap_values(x_te)
        shap_abs[name] = pd.Series(np.abs(values).mean(axis=0), index=cols)
    pd.DataFrame(perm).to_csv(out / "permutation_importance.csv")
    pd.DataFrame(shap_abs).to_csv(out / "shap.csv")

    # 4. effect vs prevalence per column
    prev = pd.DataFrame(
        {
            "prevalence": [float((df[c] != df[c].mode()[0]).mean()) for c in cols],
            "effect": [
                float(y[df[c] != df[c].mode()[0]].mean() - y[df[c] == df[c].mode()[0]].mean())
                for c in cols
            ],
        },
        index=cols,
    )
    prev.to_csv(out / "prevalence.csv")

    # 5. group scores and a mean-rank consensus
    def by_group(s: pd.Series, how: str) -> pd.Series:
        return s.groupby(s.index.map(col_group)).agg(how)

    scores = pd.DataFrame(
        {
            "glm": by_group(-np.log10(pd.Series(glm_p).clip(lower=1e-300)), "max"),
            "tests": by_group(
                -np.log10(tests.set_index("column")["p_value"].clip(lower=1e-300)), "max"
            ),
            "rf": by_group(perm["rf"], "sum"),
            "xgb": by_group(perm["xgb"], "sum"),
            "shap": by_group(shap_abs["rf"] + shap_abs["xgb"], "sum"),
        }
    )
    ranks = scores.rank(ascending=False)
    ranking = ranks.mean(axis=1).sort_values(kind="stable")
    scores.assign(mean_rank=ranks.mean(axis=1)).to_csv(out / "consensus.csv")

    for name, s in (
        ("perm_rf", perm["rf"]),
        ("perm_xgb", perm["xgb"]),
        ("shap_rf", shap_abs["rf"]),
    ):
        fig, ax = plt.subplots(figsize=(8, 6))
        s.sort_values().plot.barh(ax=ax)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png")
        plt.close(fig)

    print(
        json.dumps(
            {"top": list(ranking.index[:3]), "ranking": list(ranking.index), "quality": quality}
        )
    )


if __name__ == "__main__":
    sys.exit(main())
