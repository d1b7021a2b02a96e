"""Generated Market-like ReID result tables with known (planted) attribute effects.

The battery is tested against known answers, so we need tables whose truth we know: which
attribute groups move the outcome, by how much, and how strongly rows are clustered. This
module makes them, fast enough for the 1M-row benchmark (pure vectorised numpy).

The table mimics a Market-1501 query table joined with the identity-level attribute file:

- ``query`` (int id), ``pid`` (identity), ``camid`` (1..6);
- the 27 attribute columns of ``market_attribute.mat`` (names as in the built-in schema
  ``attrimp/schemas/market1501.toml``): ``gender hair up down clothes hat backpack bag handbag``
  coded 1/2, ``age`` coded 1..4, and one-hot colour columns ``upblack … upgreen`` (8) and
  ``downblack … downbrown`` (9) marked with ``colour_positive`` (0/1 columns by default;
  ``colour_positive=2`` makes them 1/2 exactly like the real file and the built-in schema);
- identity-level attributes: every query of one ``pid`` shares them, like the real annotations;
- a per-identity random effect on the latent scale, so rows of one identity are correlated
  (this is what makes naive row-level tests invalid);
- outcomes ``ap`` (fractional, in (0, 1)), ``rank1`` (0/1) and ``first_hit`` (integer >= 1).

Attribute frequencies follow the real Market-1501 test split with add-one smoothing (so rare
levels such as ``age=young`` or ``downcolor=purple`` exist but are rare, and ~9% / ~6% of
identities have no upper / lower colour marked, as in the real file). Groups are drawn
independently of each other.

Latent model (per query ``i`` of identity ``p``)::

    s_i   = intercept + u_p + e_i,          u_p ~ N(0, cluster_sd²),  e_i ~ N(0, noise_sd²)
    f_p   = sum over planted groups of the identity's level shift (logit scale)
    ap    = expit(s_i + f_p)                               (if ``ap`` carries the effects)
    rank1 ~ Bernoulli(expit(s_i + f_p))                    (if ``rank1`` carries them)
    first_hit = 1 if rank1 else 2 + Poisson(exp(0.5 - s_i - f_p))

``outcome`` says which outcome(s) carry the planted effects ("ap", "rank1", "first_hit" or
"all"); the others get ``f_p = 0`` but share ``s_i``, so all outcomes stay correlated as in a
real table. With ``effects=None`` every outcome is null: no attribute matters, rows clustered.

``effects`` maps a group name to a shift on the logit (for first_hit: log-rate) scale:

- a two-valued group: the shift applies to its *second* value (code 2: ``female``, ``yes``, ...);
- a multiclass group (``age``, ``upcolor``, ``downcolor``): level ``j`` of ``k`` (schema value
  order) gets ``d * (2j / (k - 1) - 1)``, a linear ramp from ``-d`` to ``+d``; identities with no
  colour marked get 0;
- ``"group=value"`` (e.g. ``"upcolor=red"``) shifts that one level only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit

from studies.errors import StudyInputError

OUTCOMES = ("ap", "rank1", "first_hit")


@dataclass(frozen=True)
class _SimGroup:
    name: str
    kind: str
    values: tuple[str, ...]
    #: identity counts per value in the real Market-1501 test split (+ "none marked" last for
    #: one-hot groups), used as sampling weights after add-one smoothing
    counts: tuple[int, ...]
    column: str | None = None
    codes: tuple[int, ...] | None = None
    columns: tuple[str, ...] | None = None
    description: str = ""


_UP = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
_DOWN = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")

# Counts measured on ../shared/data/market_attribute.mat (test split, 750 identities).
MARKET_GROUPS: tuple[_SimGroup, ...] = (
    _SimGroup("gender", "dual", ("male", "female"), (414, 336), "gender", (1, 2)),
    _SimGroup(
        "hair", "dual", ("short", "long"), (475, 275), "hair", (1, 2), description="hair length"
    ),
    _SimGroup(
        "up", "dual", ("long", "short"), (45, 705), "up", (1, 2), description="sleeve length"
    ),
    _SimGroup(
        "down",
        "dual",
        ("long", "short"),
        (262, 488),
        "down",
        (1, 2),
        description="length of lower-body clothing",
    ),
    _SimGroup(
        "clothes",
        "dual",
        ("dress", "pants"),
        (85, 665),
        "clothes",
        (1, 2),
        description="type of lower-body clothing",
    ),
    _SimGroup("hat", "single", ("no", "yes"), (727, 23), "hat", (1, 2)),
    _SimGroup("backpack", "single", ("no", "yes"), (563, 187), "backpack", (1, 2)),
    _SimGroup("bag", "single", ("no", "yes"), (565, 185), "bag", (1, 2)),
    _SimGroup("handbag", "single", ("no", "yes"), (674, 76), "handbag", (1, 2)),
    _SimGroup(
        "age",
        "multiclass",
        ("young", "teenager", "adult", "old"),
        (2, 640, 103, 5),
        "age",
        (1, 2, 3, 4),
    ),
    _SimGroup(
        "upcolor",
        "multiclass",
        _UP,
        (109, 208, 76, 24, 61, 106, 52, 45, 69),
        columns=tuple(f"up{v}" for v in _UP),
        description="upper-body clothing colour",
    ),
    _SimGroup(
        "downcolor",
        "multiclass",
        _DOWN,
        (287, 50, 20, 0, 1, 126, 154, 20, 48, 44),
        columns=tuple(f"down{v}" for v in _DOWN),
        description="lower-body clothing colour",
    ),
)

#: the attribute columns of a simulated table, in schema order (27)
ATTRIBUTE_COLUMNS: tuple[str, ...] = tuple(
    c for g in MARKET_GROUPS for c in ((g.column,) if g.column else (g.columns or ()))
)
GROUP_NAMES: tuple[str, ...] = tuple(g.name for g in MARKET_GROUPS)


def _level_shifts(effects: dict[str, float] | None) -> dict[str, np.ndarray]:
    """Per group, the logit shift of each value (one-hot groups: last entry = none marked)."""
    shifts: dict[str, np.ndarray] = {}
    by_name = {g.name: g for g in MARKET_GROUPS}
    for key, d in (effects or {}).items():
        name, _, value = key.partition("=")
        if name not in by_name:
            raise StudyInputError(
                f"The planted effect {key!r} names no simulated attribute group; "
                f"the groups are {list(GROUP_NAMES)}."
            )
        g = by_name[name]
        k = len(g.values)
        vec = shifts.setdefault(name, np.zeros(k + (1 if g.columns else 0)))
        if value:
            if value not in g.values:
                raise StudyInputError(
                    f"The planted effect {key!r} names no value of group {name!r}; "
                    f"its values are {list(g.values)}."
                )
            vec[g.values.index(value)] += float(d)
        elif k == 2:
            vec[1] += float(d)
        else:
            vec[:k] += float(d) * (2.0 * np.arange(k) / (k - 1) - 1.0)
    return shifts


def simulate_reid_table(
    n_rows: int,
    *,
    n_identities: int = 750,
    effects: dict[str, float] | None = None,
    outcome: str = "ap",
    seed: int = 0,
    cluster_sd: float = 0.8,
    noise_sd: float = 1.0,
    intercept: float = 1.5,
    colour_positive: int = 1,
) -> pd.DataFrame:
    """A Market-like per-query result table with planted effects (see the module docstring).

    Deterministic for a given ``seed``. ``effects=None`` is the clustered null.
    """
    if n_rows < 1 or n_identities < 1:
        raise StudyInputError("simulate_reid_table needs n_rows >= 1 and n_identities >= 1.")
    if outcome not in (*OUTCOMES, "all"):
        raise StudyInputError(
            f"The outcome {outcome!r} cannot carry planted effects; use one of {[*OUTCOMES, 'all']}."
        )
    if colour_positive not in (1, 2):
        raise StudyInputError("colour_positive must be 1 (0/1 columns) or 2 (1/2 columns).")
    rng = np.random.default_rng(seed)
    shifts = _level_shifts(effects)
    colour_negative = colour_positive - 1

    # Identity level: attributes, effect term, random effect.
    f_id = np.zeros(n_identities)
    id_cols: dict[str, np.ndarray] = {}
    for g in MARKET_GROUPS:
        w = np.asarray(g.counts, dtype=float) + 1.0
        state = rng.choice(len(w), size=n_identities, p=w / w.sum())
        if g.name in shifts:
            f_id += shifts[g.name][state]
        if g.column is not None:
            id_cols[g.column] = np.asarray(g.codes, dtype=np.int8)[state]
        else:
            for j, col in enumerate(g.columns or ()):
                id_cols[col] = np.where(state == j, colour_positive, colour_negative).astype(
                    np.int8
                )
    u = rng.normal(0.0, cluster_sd, n_identities)

    # Query level: every identity appears at least once (when rows allow), the rest at
    # uneven rates (gamma weights), rows sorted by identity like a real query list.
    if n_rows >= n_identities:
        rate = rng.gamma(4.0, 1.0, n_identities)
        extra = rng.choice(n_identities, size=n_rows - n_identities, p=rate / rate.sum())
        pid_idx = np.sort(np.concatenate([np.arange(n_identities), extra]))
    else:
        pid_idx = np.sort(rng.choice(n_identities, size=n_rows, replace=False))
    s = intercept + u[pid_idx] + rng.normal(0.0, noise_sd, n_rows)
    f = f_id[pid_idx]
    carry = {o: (outcome in (o, "all")) for o in OUTCOMES}

    ap = expit(s + f * carry["ap"])
    rank1 = (rng.random(n_rows) < expit(s + f * carry["rank1"])).astype(np.int8)
    lam = np.exp(np.clip(0.5 - s - f * carry["first_hit"], -20.0, 8.0))
    first_hit = np.where(rank1 == 1, 1, 2 + rng.poisson(lam)).astype(np.int64)

    data: dict[str, np.ndarray] = {
        "query": np.arange(n_rows, dtype=np.int64),
        "pid": (pid_idx + 1).astype(np.int32),
        "camid": rng.integers(1, 7, n_rows).astype(np.int8),
    }
    for col in ATTRIBUTE_COLUMNS:
        data[col] = id_cols[col][pid_idx]
    data["ap"] = ap
    data["rank1"] = rank1
    data["first_hit"] = first_hit
    return pd.DataFrame(data)


def market_like_schema_toml(*, colour_positive: int = 1) -> str:
    """A grouping file (the schema TOML format) for ``simulate_reid_table`` tables.

    It collapses the one-hot colour columns into ``upcolor`` / ``downcolor`` and names the codes
    of the coded columns; ``colour_positive`` must match the table's.
    """
    lines = [
        'name = "market_like_simulated"',
        'description = "Grouping of studies.simulate.simulate_reid_table columns."',
        "",
    ]
    for g in MARKET_GROUPS:
        lines += ["[[groups]]", f'name = "{g.name}"', f'kind = "{g.kind}"']
        lines.append("values = [" + ", ".join(f'"{v}"' for v in g.values) + "]")
        if g.column is not None:
            lines.append(f'column = "{g.column}"')
            lines.append("codes = [" + ", ".join(str(c) for c in g.codes or ()) + "]")
        else:
            lines.append("columns = [" + ", ".join(f'"{c}"' for c in g.columns or ()) + "]")
            lines.append(f"positive = {colour_positive}")
        if g.description:
            lines.append(f'description = "{g.description}"')
        lines.append("")
    return "\n".join(lines)


def simulate_small_cluster_table(
    n_clusters: int,
    *,
    mean_size: float = 6.0,
    size_sigma: float = 1.0,
    rare_clusters: int | None = None,
    within: bool = False,
    effects: dict[str, float] | None = None,
    seed: int = 0,
    cluster_sd: float = 0.8,
    noise_sd: float = 1.0,
) -> pd.DataFrame:
    """A small result table in the regimes a new attribute dataset meets: tens of clusters of
    very unequal size, a level confined to a few clusters, an attribute that varies within
    clusters (a switching design). Used to simulate the error rates of the GLM's tests.

    Cluster sizes are lognormal draws with mean ``mean_size``, at least 1: ``max(1,
    round(LN(log(mean_size) - size_sigma**2 / 2, size_sigma)))`` (``size_sigma=0``: all
    equal). Groups:

    - ``gender`` (female/male, p = 0.5), ``bag`` (no/yes, p = 0.35): identity level;
    - ``colour``: 5 levels with probabilities 0.35, 0.25, 0.2, 0.12, 0.08, identity level;
    - ``rare`` (no/yes): ``yes`` is held by exactly ``rare_clusters`` clusters, the largest
      ones (the hardest case for the reference distribution); with None, p = 0.3;
    - ``switch`` (off/on, only with ``within=True``): drawn per row, so it varies within
      clusters like an expert switched on and off across configurations.

    ``ap = expit(0.5 + u_cluster + e_row + shifts)``; ``effects`` maps a group name to the shift
    of its second level (``colour``: a ramp from ``-d`` to ``+d`` over its 5 levels).
    """
    if n_clusters < 2:
        raise StudyInputError("simulate_small_cluster_table needs at least 2 clusters.")
    rng = np.random.default_rng(seed)
    mu = np.log(mean_size) - size_sigma**2 / 2
    sizes = np.maximum(1, np.round(rng.lognormal(mu, size_sigma, n_clusters))).astype(int)
    pid = np.repeat(np.arange(n_clusters), sizes)
    n = len(pid)
    effects = effects or {}
    cols: dict[str, np.ndarray] = {}
    shift = np.zeros(n)

    def binary(name: str, values: tuple[str, str], state: np.ndarray) -> None:
        cols[name] = np.asarray(values, dtype=object)[state]
        shift[:] += effects.get(name, 0.0) * state

    binary("gender", ("female", "male"), (rng.random(n_clusters) < 0.5).astype(int)[pid])
    binary("bag", ("no", "yes"), (rng.random(n_clusters) < 0.35).astype(int)[pid])
    if rare_clusters is None:
        rare = (rng.random(n_clusters) < 0.3).astype(int)
    else:
        rare = np.zeros(n_clusters, dtype=int)
        rare[np.argsort(-sizes, kind="stable")[:rare_clusters]] = 1
    binary("rare", ("no", "yes"), rare[pid])
    colour = rng.choice(5, size=n_clusters, p=[0.35, 0.25, 0.2, 0.12, 0.08])[pid]
    cols["colour"] = np.array(["black", "blue", "grey", "red", "green"], dtype=object)[colour]
    shift += effects.get("colour", 0.0) * (colour / 2.0 - 1.0)
    if within:
        binary("switch", ("off", "on"), (rng.random(n) < 0.5).astype(int))
    u = rng.normal(0.0, cluster_sd, n_clusters)[pid]
    ap = expit(0.5 + u + rng.normal(0.0, noise_sd, n) + shift)
    return pd.DataFrame({"pid": pid, **cols, "ap": ap})


def simulate_crossed_table(
    n_identities: int,
    queries_per_identity: int,
    n_configs: int,
    groups: Sequence[str],
    *,
    effects: Mapping[str, float] | None = None,
    config_sd: float = 0.0,
    identity_sd: float = 0.5,
    query_sd: float = 0.5,
    noise_sd: float = 0.3,
    intercept: float = 0.0,
    unequal: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """A crossed switching table: every query evaluated under every configuration.

    Each configuration switches every group on or off for all queries at once; each group's
    on/off column is an independently shuffled balanced column, as attrimp's random-subsets
    design draws it (``balanced_subsets``), so every configuration is randomized
    (``df.attrs["randomized_conditions"]`` lists them). Latent model of query ``i`` of identity
    ``p`` under configuration ``k`` (logit scale)::

        ap = expit(intercept + u_p + v_i + c_k + sum_g effects[g] * on_gk + e_ik)

    ``u_p ~ N(0, identity_sd²)``, ``v_i ~ N(0, query_sd²)``, ``e_ik ~ N(0, noise_sd²)``, and
    ``c_k ~ N(0, config_sd²)``: the configuration's own noise, shared by all its queries -- what
    interactions between groups look like to an additive analysis, and what makes the
    configuration a unit of replication. ``unequal``: identities hold 1 to
    ``2 * queries_per_identity - 1`` queries (uniform), as real query sets are unequal.
    Columns: ``pid, query, config, ap`` and one ``"on"`` / ``"off"`` column per group."""
    effects = dict(effects or {})
    unknown = set(effects) - set(groups)
    if unknown:
        raise StudyInputError(f"effects name groups that are not simulated: {sorted(unknown)}.")
    rng = np.random.default_rng(seed)
    if unequal:
        sizes = rng.integers(1, 2 * queries_per_identity, n_identities)
    else:
        sizes = np.full(n_identities, queries_per_identity)
    pid = np.repeat(np.arange(n_identities), sizes)
    n_q = len(pid)
    on = np.zeros((n_configs, len(groups)), dtype=bool)
    for j in range(len(groups)):
        col = np.zeros(n_configs, dtype=bool)
        col[: n_configs // 2 + int(rng.integers(0, 2)) * (n_configs % 2)] = True
        rng.shuffle(col)
        on[:, j] = col
    q_latent = rng.normal(0, identity_sd, n_identities)[pid] + rng.normal(0, query_sd, n_q)
    c_latent = rng.normal(0, config_sd, n_configs) + on @ np.array(
        [effects.get(g, 0.0) for g in groups], dtype=float
    )
    latent = intercept + q_latent[:, None] + c_latent[None, :]
    latent = latent + rng.normal(0, noise_sd, latent.shape)
    df = pd.DataFrame(
        {
            "pid": np.repeat(pid, n_configs),
            "query": np.repeat(np.arange(n_q), n_configs),
            "config": np.tile(np.arange(n_configs), n_q),
            "ap": expit(latent).ravel(),
        }
    )
    for j, g in enumerate(groups):
        df[g] = np.where(np.tile(on[:, j], n_q), "on", "off")
    df.attrs["randomized_conditions"] = tuple(range(n_configs))
    return df
