"""studies.design (grouping, validation, dropped rows) and studies.simulate (the test tables)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attrimp.model.schema import AttributeSchema, load_schema
from studies.design import (
    build_analysis_frame,
    group_codes,
    load_group_spec,
    n_parameters,
    spec_from_toml,
)
from studies.errors import StudyInputError
from studies.simulate import (
    ATTRIBUTE_COLUMNS,
    GROUP_NAMES,
    market_like_schema_toml,
    simulate_reid_table,
)

REPO = Path(__file__).resolve().parents[1]
MARKET_SCHEMA = REPO / "attrimp" / "schemas" / "market1501.toml"


# ----------------------------------------------------------------------------------------------
# simulate
# ----------------------------------------------------------------------------------------------
def test_simulated_table_has_market_columns_and_identity_level_attributes():
    df = simulate_reid_table(3000, n_identities=200, seed=3)
    schema = tomllib.loads(MARKET_SCHEMA.read_text())
    schema_cols = [
        c for g in schema["groups"] for c in ([g["column"]] if "column" in g else g["columns"])
    ]
    assert list(ATTRIBUTE_COLUMNS) == schema_cols
    assert len(ATTRIBUTE_COLUMNS) == 27 and len(GROUP_NAMES) == 12
    for c in ("query", "pid", "camid", "ap", "rank1", "first_hit"):
        assert c in df.columns
    assert df["pid"].nunique() == 200
    # every query of one identity shares its attributes
    assert (df.groupby("pid")[list(ATTRIBUTE_COLUMNS)].nunique() == 1).all().all()
    assert df["ap"].between(0, 1).all() and not df["ap"].isin([0.0, 1.0]).all()
    assert set(df["rank1"].unique()) <= {0, 1}
    assert (df["first_hit"] >= 1).all() and (df.loc[df.rank1 == 1, "first_hit"] == 1).all()
    colours = df[[c for c in ATTRIBUTE_COLUMNS if c.startswith("up") and c != "up"]]
    assert set(np.unique(colours)) <= {0, 1}


def test_simulation_is_deterministic_and_seed_dependent():
    a = simulate_reid_table(2000, n_identities=100, effects={"hat": 1.0}, seed=7)
    b = simulate_reid_table(2000, n_identities=100, effects={"hat": 1.0}, seed=7)
    c = simulate_reid_table(2000, n_identities=100, effects={"hat": 1.0}, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["ap"].equals(c["ap"])


def test_planted_effect_moves_the_outcome_and_null_does_not():
    # Large table, strong effect: the planted group's mean AP differs, an unplanted one does not.
    eff = simulate_reid_table(
        60_000, n_identities=3000, effects={"backpack": 1.5}, seed=1, cluster_sd=0.3
    )
    by = eff.groupby("backpack")["ap"].mean()
    assert by[2] - by[1] > 0.1
    other = eff.groupby("bag")["ap"].mean()
    assert abs(other[2] - other[1]) < 0.03
    # rank1 / first_hit do not carry the effect when outcome="ap" ...
    r1 = eff.groupby("backpack")["rank1"].mean()
    assert abs(r1[2] - r1[1]) < 0.03
    # ... and do with outcome="all"
    allx = simulate_reid_table(
        60_000, n_identities=3000, effects={"backpack": 1.5}, outcome="all", seed=1
    )
    r1 = allx.groupby("backpack")["rank1"].mean()
    fh = allx.groupby("backpack")["first_hit"].mean()
    assert r1[2] - r1[1] > 0.1 and fh[2] < fh[1]


def test_simulation_rejects_unknown_effect_names():
    with pytest.raises(StudyInputError, match="colour"):
        simulate_reid_table(100, effects={"colour": 1.0})
    with pytest.raises(StudyInputError, match="'upcolor'"):
        simulate_reid_table(100, effects={"upcolor=orange": 1.0})


def test_simulated_table_matches_the_builtin_schema_when_coded_1_2():
    df = simulate_reid_table(2000, n_identities=150, seed=2, colour_positive=2)
    frame = build_analysis_frame(
        df,
        outcomes="ap",
        cluster="pid",
        exclude=["query", "camid", "rank1", "first_hit"],
        spec=MARKET_SCHEMA,
    )
    assert set(frame.groups) | set(frame.excluded_groups) == set(GROUP_NAMES)
    assert frame.group_columns["upcolor"] == [
        f"up{c}" for c in ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
    ]
    # the bare name reads attrimp's built-in file
    spec = load_group_spec("market1501")
    assert spec.group_names == list(GROUP_NAMES)


def test_studies_reads_the_engine_schema_objects():
    """One schema model and one parser: the grouping studies reads *is* attrimp's schema."""
    assert load_group_spec("market1501") == load_schema("market1501")
    assert load_group_spec(MARKET_SCHEMA) == load_schema(MARKET_SCHEMA)
    simulated = spec_from_toml(market_like_schema_toml(), source="simulated")
    assert isinstance(simulated, AttributeSchema) and simulated.has_experts
    assert simulated.group_names == list(GROUP_NAMES)
    # the studies layer does not read TOML or attrimp's schema folder itself
    text = (REPO / "studies" / "design.py").read_text()
    assert "tomllib" not in text and "schemas" + "/" not in text


def test_importing_studies_and_analysing_a_table_never_imports_torch():
    code = textwrap.dedent(
        """
        import sys
        import studies
        from studies.design import build_analysis_frame
        from studies.simulate import simulate_reid_table
        df = simulate_reid_table(400, n_identities=40, seed=0, colour_positive=2)
        frame = build_analysis_frame(df, outcomes="ap", cluster="pid", spec="market1501",
                                     exclude=["query", "camid", "rank1", "first_hit"])
        assert "torch" not in sys.modules and "attrimp.model.schema" in sys.modules
        print(len(frame.groups) + len(frame.excluded_groups))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(GROUP_NAMES))]


# ----------------------------------------------------------------------------------------------
# grouping
# ----------------------------------------------------------------------------------------------
def _onehot_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ap": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
            "red": [1, 0, 0, 1, 0, 1, 1, 0],
            "blue": [0, 1, 0, 1, 0, 0, 0, 1],
            "green": [0, 0, 0, 0, 0, 0, 0, 0],
        }
    )


def test_onehot_group_collapses_with_unknown_and_multiple(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text('[[groups]]\nname = "colour"\ncolumns = ["red", "blue", "green"]\n')
    frame = build_analysis_frame(_onehot_table(), outcomes="ap", spec=p)
    assert frame.groups == ["colour"]
    assert frame.group_columns == {"colour": ["red", "blue", "green"]}
    got = frame.data["colour"].astype(str).tolist()
    assert got == ["red", "blue", "unknown", "multiple", "unknown", "red", "red", "blue"]
    assert frame.levels("colour")[0] == "red"  # most frequent is the reference
    assert any("'green'" in w and "no row" in w for w in frame.warnings)


def test_onehot_values_name_the_levels_and_positive_code(tmp_path):
    df = _onehot_table()
    df[["red", "blue", "green"]] += 1  # coded 1/2 like market_attribute.mat
    p = tmp_path / "g.toml"
    p.write_text(
        '[[groups]]\nname = "colour"\nkind = "multiclass"\nvalues = ["R", "B", "G"]\n'
        'columns = ["red", "blue", "green"]\npositive = 2\n'
    )
    frame = build_analysis_frame(df, outcomes="ap", spec=p)
    assert frame.data["colour"].astype(str).tolist()[:4] == ["R", "B", "unknown", "multiple"]
    # a positive code that no column holds is a schema / table mismatch: refused, group named
    p.write_text('[[groups]]\nname = "colour"\ncolumns = ["red", "blue", "green"]\npositive = 3\n')
    with pytest.raises(StudyInputError, match="'colour'.*positive"):
        build_analysis_frame(df, outcomes="ap", spec=p)


def test_coded_column_maps_codes_and_refuses_undefined_values(tmp_path):
    df = pd.DataFrame({"ap": np.linspace(0, 1, 9), "hat": [1, 2, 1, 1, 2, 0, 1, 1, 2]})
    p = tmp_path / "s.toml"
    p.write_text(
        '[[groups]]\nname = "hat"\ncolumn = "hat"\nvalues = ["no", "yes"]\ncodes = [1, 2]\nmissing_codes = [0]\n'
    )
    frame = build_analysis_frame(df, outcomes="ap", spec=p)
    assert frame.levels("hat") == ["no", "yes", "unknown"]
    assert frame.data["hat"].astype(str).tolist()[5] == "unknown"
    p.write_text(
        '[[groups]]\nname = "hat"\ncolumn = "hat"\nvalues = ["no", "yes"]\ncodes = [1, 2]\n'
    )
    with pytest.raises(StudyInputError, match="column 'hat' holds the value '0'"):
        build_analysis_frame(df, outcomes="ap", spec=p)


def test_string_codes_and_a_grouping_without_kinds(tmp_path):
    df = pd.DataFrame({"ap": np.linspace(0, 1, 8), "sex": ["M", "F", "F", "M", "?", "M", "F", "M"]})
    p = tmp_path / "s.toml"
    p.write_text(
        '[[groups]]\nname = "sex"\ncolumn = "sex"\nvalues = ["male", "female"]\n'
        'codes = ["M", "F"]\nmissing_codes = ["?"]\n'
    )
    frame = build_analysis_frame(df, outcomes="ap", spec=p)
    assert frame.data["sex"].astype(str).tolist()[:5] == [
        "male",
        "female",
        "female",
        "male",
        "unknown",
    ]
    # a grouping (no kind) is fine here; the engine asks for kinds, naming the file and group
    from attrimp.errors import SchemaError

    with pytest.raises(SchemaError, match=r"s\.toml.*group 'sex' has no `kind`"):
        load_schema(p)


def test_without_spec_strings_bools_and_small_ints_are_categorical():
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame(
        {
            "ap": rng.random(n),
            "colour": rng.choice(["red", "blue", "green"], n),
            "flag": rng.random(n) > 0.5,
            "code": rng.integers(1, 4, n),
            "half": rng.choice([1.0, 2.0], n),
        }
    )
    frame = build_analysis_frame(df, outcomes="ap")
    assert frame.groups == ["colour", "flag", "code", "half"]
    assert set(frame.levels("flag")) == {"True", "False"}
    assert set(frame.levels("half")) == {"1", "2"}  # integral floats read as integers
    for g in frame.groups:
        counts = frame.data[g].value_counts()
        assert frame.levels(g)[0] == counts.idxmax()
    assert group_codes(frame).shape == (n, 4)
    assert n_parameters(frame) == 1 + 2 + 1 + 2 + 1


def test_without_spec_identifier_or_measurement_columns_are_refused():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"ap": rng.random(100), "query": np.arange(100), "score": rng.random(100)})
    with pytest.raises(StudyInputError, match="'query'.*--exclude query"):
        build_analysis_frame(df, outcomes="ap")
    with pytest.raises(StudyInputError, match="'score'"):
        build_analysis_frame(df, outcomes="ap", exclude=["query"])
    frame = build_analysis_frame(
        df.assign(g=np.arange(100) % 2), outcomes="ap", exclude=["query", "score"]
    )
    assert frame.groups == ["g"]


def test_outcome_like_attribute_is_warned_about():
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {"ap": rng.random(50), "rank1": rng.integers(0, 2, 50), "g": rng.integers(0, 2, 50)}
    )
    frame = build_analysis_frame(df, outcomes="ap")
    assert "rank1" in frame.groups
    assert any("'rank1' looks like an outcome" in w for w in frame.warnings)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _small() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame(
        {"ap": rng.random(40), "pid": np.repeat(np.arange(10), 4), "g": np.tile(["a", "b"], 20)}
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"outcomes": "nope"}, "no column 'nope'"),
        ({"outcomes": "ap", "cluster": "who"}, "no column 'who'"),
        ({"outcomes": "ap", "exclude": ["gone"]}, "no column 'gone'"),
        ({"outcomes": "ap", "cluster": "ap"}, "'ap' is given both"),
        ({"outcomes": "ap", "paired_by": "pid"}, "both --paired-by and --condition"),
    ],
)
def test_bad_options_name_the_column(kwargs, match):
    with pytest.raises(StudyInputError, match=match):
        build_analysis_frame(_small(), **kwargs)


def test_duplicated_column_names_are_refused():
    df = _small()
    df = pd.concat([df, df[["g"]]], axis=1)
    with pytest.raises(StudyInputError, match="'g' appears more than once"):
        build_analysis_frame(df, outcomes="ap")


def test_non_numeric_and_all_nan_outcomes_are_refused():
    df = _small().astype({"ap": object})
    df.loc[3, "ap"] = "high"
    with pytest.raises(StudyInputError, match="'ap' is not numeric.*'high'"):
        build_analysis_frame(df, outcomes="ap")
    df = _small()
    df["ap"] = np.nan
    with pytest.raises(StudyInputError, match="'ap' has no numeric value"):
        build_analysis_frame(df, outcomes="ap")
    # numbers stored as text are fine
    df = _small()
    df["ap"] = df["ap"].astype(str)
    assert build_analysis_frame(df, outcomes="ap").data["ap"].dtype == float


def test_fewer_rows_than_parameters_is_refused():
    df = pd.DataFrame({"ap": [0.1, 0.2, 0.3], "g": ["a", "b", "c"], "h": ["x", "y", "x"]})
    with pytest.raises(StudyInputError, match="only 3 usable rows for a model with 4 parameters"):
        build_analysis_frame(df, outcomes="ap")


def test_schema_problems_name_the_file_and_column(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[groups]\nname=")
    with pytest.raises(StudyInputError, match="bad.toml.*not valid TOML"):
        load_group_spec(bad)
    with pytest.raises(StudyInputError, match="does not exist"):
        load_group_spec(tmp_path / "missing.toml")
    twice = tmp_path / "twice.toml"
    twice.write_text(
        '[[groups]]\nname = "a"\ncolumn = "g"\n[[groups]]\nname = "a"\ncolumn = "pid"\n'
    )
    with pytest.raises(StudyInputError, match="twice.toml.*group 'a' twice"):
        load_group_spec(twice)
    typo = tmp_path / "typo.toml"
    typo.write_text('[[groups]]\nname = "a"\ncolumn = "g"\ncodse = [1, 2]\n')
    with pytest.raises(
        StudyInputError, match=r"typo.toml.*group 0 \('a'\) has unknown key 'codse'"
    ):
        load_group_spec(typo)
    gone = tmp_path / "gone.toml"
    gone.write_text('[[groups]]\nname = "x"\ncolumns = ["red", "blue"]\n')
    with pytest.raises(StudyInputError, match="no column 'red'.*group 'x'"):
        build_analysis_frame(_small(), outcomes="ap", spec=gone)


def test_reference_is_the_level_seen_in_the_most_clusters():
    """'b' has the most rows but only in 2 giant clusters; 'a' is seen in 30 clusters."""
    from studies.design import _clusters_per_level

    rng = np.random.default_rng(5)
    pid = np.concatenate([np.repeat([0, 1], 200), np.repeat(np.arange(2, 32), 5)])
    g = np.where(pid < 2, "b", "a")
    df = pd.DataFrame({"ap": rng.random(len(pid)), "pid": pid, "g": g})
    frame = build_analysis_frame(df, outcomes="ap", cluster="pid")
    assert frame.levels("g") == ["a", "b"]
    assert (df["g"] == "b").sum() > (df["g"] == "a").sum()
    # the count of distinct clusters per level, against a direct count
    codes = rng.integers(0, 4, 5000)
    clusters = rng.integers(0, 300, 5000)
    want = [len(set(clusters[codes == k])) for k in range(4)]
    assert _clusters_per_level(codes, clusters).tolist() == want


def test_nan_rows_are_dropped_counted_and_clusters_stay_aligned():
    rng = np.random.default_rng(3)
    n = 200
    df = pd.DataFrame(
        {
            "ap": rng.random(n),
            "pid": rng.integers(0, 40, n),
            "g": rng.choice(["a", "b", "c"], n).astype(object),
            "row_id": np.arange(n),
        }
    )
    df.loc[[3, 10, 11], "ap"] = np.nan
    df.loc[[10, 20, 21, 22], "g"] = np.nan  # row 10 already dropped for the outcome
    df.loc[[50], "pid"] = np.nan
    frame = build_analysis_frame(df, outcomes="ap", cluster="pid", exclude=["row_id"])
    assert frame.rows_read == n
    assert frame.rows_dropped == {
        "NaN in outcome 'ap'": 3,
        "NaN in cluster column 'pid'": 1,
        "NaN in attribute column 'g'": 3,
    }
    assert frame.rows_used == n - 7
    kept = df.drop(index=[3, 10, 11, 20, 21, 22, 50])
    np.testing.assert_array_equal(frame.data["pid"].to_numpy(), kept["pid"].to_numpy())
    np.testing.assert_array_equal(frame.data["ap"].to_numpy(), kept["ap"].to_numpy())
    assert frame.data["g"].astype(str).tolist() == kept["g"].tolist()


# ----------------------------------------------------------------------------------------------
# degenerate but legal
# ----------------------------------------------------------------------------------------------
def test_constant_attribute_is_left_out_with_a_warning():
    df = _small().assign(c="same")
    frame = build_analysis_frame(df, outcomes="ap", cluster="pid")
    assert "c" not in frame.groups and "c" in frame.excluded_groups
    assert any("'c' is left out" in w for w in frame.warnings)


def test_duplicate_onehot_columns_collinear_groups_and_rare_levels_warn(tmp_path):
    rng = np.random.default_rng(4)
    n = 120
    a = rng.choice(["x", "y"], n)
    df = pd.DataFrame(
        {
            "ap": rng.random(n),
            "pid": np.repeat(np.arange(30), 4),
            "a": a,
            "a_copy": np.where(a == "x", "p", "q"),
            "red": (np.arange(n) % 3 == 0).astype(int),
            "crimson": (np.arange(n) % 3 == 0).astype(int),
            "blue": (np.arange(n) % 3 == 1).astype(int),
            "rare": np.where(np.arange(n) < 2, "r", "common"),
        }
    )
    p = tmp_path / "g.toml"
    p.write_text(
        '[[groups]]\nname = "colour"\ncolumns = ["red", "crimson", "blue"]\n'
        '[[groups]]\nname = "a"\ncolumn = "a"\n[[groups]]\nname = "a_copy"\ncolumn = "a_copy"\n'
        '[[groups]]\nname = "rare"\ncolumn = "rare"\n'
    )
    frame = build_analysis_frame(df, outcomes="ap", cluster="pid", spec=p)
    text = "\n".join(frame.warnings)
    assert "'red' and 'crimson'" in text and "duplicate one-hot" in text
    assert "'a' and 'a_copy' split the rows identically" in text
    assert "Level 'r' of attribute 'rare' has only 2 rows in 1 clusters" in text
