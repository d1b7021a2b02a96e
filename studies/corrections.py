"""Multiple-comparison corrections: a NaN-safe wrapper around statsmodels' ``multipletests``.

A family is every p-value one analysis computes for one outcome (e.g. the 12 group tests of a
GLM). An untestable member (p = NaN, e.g. a group with too few clusters) is left out of the
family rather than counted as p = 1 or crashing statsmodels, and stays NaN in the output.

Holm is computed here (a sort and a running maximum; tested against statsmodels) because
statsmodels' ``multipletests(method="holm")`` calls ``gc.collect()`` on every call, which costs
0.1-0.2 s in a process holding a large table, and the battery adjusts dozens of families.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

#: our names -> statsmodels' method names
METHODS = {"holm": "holm", "fdr_bh": "fdr_bh", "bonferroni": "bonferroni", "fdr_by": "fdr_by"}


def adjust(p_values: Sequence[float] | np.ndarray | pd.Series, method: str = "holm") -> np.ndarray:
    """Adjusted p-values (same length and order; NaN in, NaN out)."""
    if method not in METHODS:
        raise ValueError(f"Unknown correction {method!r}; use one of {sorted(METHODS)}.")
    p = np.asarray(p_values, dtype=float).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        if ((p[ok] < 0) | (p[ok] > 1)).any():
            raise ValueError("p-values must lie in [0, 1].")
        out[ok] = (
            _holm(p[ok]) if method == "holm" else multipletests(p[ok], method=METHODS[method])[1]
        )
    return out


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: max over j <= i of (m - j) p_(j), capped at 1."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.minimum(np.maximum.accumulate(p[order] * np.arange(m, 0, -1)), 1.0)
    out = np.empty(m)
    out[order] = adj
    return out


def add_adjusted(table: pd.DataFrame, *, by: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Add ``p_holm`` and ``p_fdr_bh`` columns from ``p_value``, one family per ``by`` value."""
    table = table.copy()
    if table.empty:
        table["p_holm"] = pd.Series(dtype=float)
        table["p_fdr_bh"] = pd.Series(dtype=float)
        return table
    table["p_holm"] = np.nan
    table["p_fdr_bh"] = np.nan
    parts = (
        [table.index]
        if by is None
        else [idx for _, idx in table.groupby(by, sort=False).groups.items()]
    )
    for idx in parts:
        p = table.loc[idx, "p_value"].to_numpy(dtype=float)
        table.loc[idx, "p_holm"] = adjust(p, "holm")
        table.loc[idx, "p_fdr_bh"] = adjust(p, "fdr_bh")
    return table
