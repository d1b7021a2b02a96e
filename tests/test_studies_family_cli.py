"""`study analyze` never switches the GLM family silently: a proportion with stray values is
refused in one sentence (exit 2), and `--family gaussian` models it as it is."""

from __future__ import annotations

from typer.testing import CliRunner

from attrimp.cli import app
from studies.simulate import simulate_reid_table


def test_analyze_refuses_a_proportion_with_a_typo_and_accepts_family_gaussian(tmp_path):
    df = simulate_reid_table(400, n_identities=40, seed=3)[["pid", "gender", "backpack", "ap"]]
    df.loc[7, "ap"] = 55.0  # an AP typed in percent
    table = tmp_path / "t.csv"
    df.to_csv(table, index=False)
    runner = CliRunner()
    common = ["study", "analyze", str(table), "--outcome", "ap", "--cluster", "pid", "--quick"]
    bad = runner.invoke(app, [*common, "--out", str(tmp_path / "a"), "--no-figures"])
    assert bad.exit_code == 2
    assert "row 8 = 55" in bad.output and "--family gaussian" in bad.output
    assert "Traceback" not in bad.output
    ok = runner.invoke(
        app,
        [*common, "--family", "gaussian", "--out", str(tmp_path / "b"), "--no-figures"],
    )
    assert ok.exit_code == 0, ok.output
    assert "gaussian" in (tmp_path / "b" / "report.json").read_text()
    unknown = runner.invoke(app, [*common, "--family", "beta", "--out", str(tmp_path / "c")])
    assert unknown.exit_code == 2 and "--family 'beta' is unknown" in unknown.output
