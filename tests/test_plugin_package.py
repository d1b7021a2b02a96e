"""The proof that attrimp's extension points are open: a package that is not attrimp.

``tests/plugin_example`` is a third party's plug-in package with its own ``pyproject.toml``. It
adds one plug-in of each kind (a router, an expert bank, a named dataset, an ablation design and a
battery analysis), each one file plus one entry-point line. The tests install it with pip (no
network, no wheel download: ``--no-deps --no-build-isolation`` into a temporary folder), build
each plug-in by name through attrimp's registries, run a study whose TOML uses all of them, and
check that the report shows them, while no file of attrimp's four packages names any of them.
docs/extending.md walks through the same package; a test keeps its entry-point lines true.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

PLUGIN = REPO / "tests" / "plugin_example"
PACKAGE = "attrimp_plugin_example"
#: the registries of the plug-in kinds, by entry-point group ("module:attribute")
REGISTRIES = {
    "attrimp.routers": "routers:ROUTERS",
    "attrimp.banks": "attrimp.registry:BANKS",
    "attrimp.designs": "attrimp.evaluate.designs:DESIGNS",
    "attrimp.datasets": "attrimp.data.datasets:DATASETS",
    "attrimp.analyses": "studies.analysis:ANALYSES",
}
#: the smallest study config that trains in seconds (a 2-block, 48-wide random ViT at 64x32)
TINY = tomllib.loads((REPO / "studies" / "configs" / "synthetic_tiny.toml").read_text())
#: every kind the issue asks the package to add; a group whose registry has not landed in the
#: engine is skipped by name (never faked)
KINDS = (
    "attrimp.routers",
    "attrimp.banks",
    "attrimp.datasets",
    "attrimp.designs",
    "attrimp.analyses",
)


def _entry_points() -> dict[str, dict[str, str]]:
    """The plug-in's own declarations: group -> {name: "module:attr"}."""
    data = tomllib.loads((PLUGIN / "pyproject.toml").read_text(encoding="utf-8"))
    return data["project"]["entry-points"]


def _entry_name(group: str) -> str:
    """The one entry the package declares in ``group`` (skips when the kind is not there yet)."""
    declared = _entry_points().get(group)
    if not declared or group not in REGISTRIES:
        pytest.skip(
            f"the engine has no {group!r} registry yet, so the example adds no such plug-in"
        )
    (name,) = declared
    return name


def _registry(group: str):
    module, _, attr = REGISTRIES[group].partition(":")
    return getattr(importlib.import_module(module), attr)


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A folder holding the example package as pip installs it (``pip install --target``).

    No network and no wheel download: ``--no-deps --no-build-isolation --no-index`` builds it
    with the setuptools of this environment. Installed from a copy, so pip's build folders
    never land in the checkout. Nothing is put on ``sys.path`` here (see `plugin_path`).
    """
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not available in this environment, so the plug-in cannot be installed")
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools (the example package's build backend) is not installed here")
    work = tmp_path_factory.mktemp("plugin")
    source, target = work / "src", work / "site"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


@pytest.fixture(scope="module")
def plugin_path(plugin_site: Path) -> Iterator[Path]:
    """The installed package first on ``sys.path`` for this module's tests, and the registries
    reading its entry points; afterwards every registry is as it was (`Registry.isolated`), so
    no other test of the session sees the plug-ins (the battery would run their analysis)."""
    with contextlib.ExitStack() as stack:
        for group in REGISTRIES:
            stack.enter_context(_registry(group).isolated())
        sys.path.insert(0, str(plugin_site))
        importlib.invalidate_caches()
        try:
            for group in REGISTRIES:
                _registry(group).refresh()
            yield plugin_site
        finally:
            sys.path.remove(str(plugin_site))
            for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
                del sys.modules[name]
            importlib.invalidate_caches()


def _library_files() -> Iterator[Path]:
    for package in ("attrimp", "backbones", "routers", "studies"):
        for path in sorted((REPO / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                yield path


# ----- the package's shape ----------------------------------------------------------------------
def test_attrimp_names_none_of_the_plugins():
    """Nothing in attrimp's four packages lists the plug-in or its entries: the engine finds
    them through the entry points alone."""
    names = {PACKAGE, "attrimp-plugin-example"}
    for declared in _entry_points().values():
        names.update(declared)
    assert len(names) >= 3
    found = []
    for path in _library_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = path.read_bytes().decode("latin-1")
        found += [f"{path.relative_to(REPO)}: {n}" for n in sorted(names) if n in text]
    assert not found, found


def test_each_plugin_is_one_file_and_one_entry_point_line():
    """Every group declares exactly one entry, each in its own module of the package, and
    docs/extending.md shows each entry-point line as the package writes it."""
    declared = _entry_points()
    assert set(declared) == set(KINDS)  # one plug-in of every kind but backbones
    modules = []
    text = (PLUGIN / "pyproject.toml").read_text(encoding="utf-8")
    docs = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    for group, entries in declared.items():
        assert len(entries) == 1, (group, entries)
        ((name, value),) = entries.items()
        module, _, attr = value.partition(":")
        assert module.startswith(PACKAGE + ".") and attr, value
        path = PLUGIN / Path(*module.split(".")).with_suffix(".py")
        assert path.is_file(), value
        source = path.read_text(encoding="utf-8")
        assert f"class {attr}(" in source or f"\n{attr} = " in source, value
        modules.append(module)
        line = f'{name} = "{value}"'
        assert f'[project.entry-points."{group}"]\n{line}\n' in text
        assert f'[project.entry-points."{group}"]' in docs and line in docs, group
    assert len(set(modules)) == len(modules)  # one file per kind


# ----- each plug-in by name through the installed metadata --------------------------------------
def test_the_router_is_built_by_name_from_the_installed_package(plugin_path):
    import torch

    import routers
    from attrimp.errors import ConfigError
    from attrimp.model.schema import load_schema

    name = _entry_name("attrimp.routers")
    assert name in routers.ROUTERS.names() and "oracle" in routers.ROUTERS
    schema = load_schema("market1501")
    attributes = torch.ones(4, schema.n_slots)  # every value marked: every expert on
    router = routers.build_router(name, group="hat")
    assert router.name == name
    gates = router.route(attributes, schema)
    oracle = routers.build_router("oracle").route(attributes, schema)
    hat = torch.tensor(schema.expert_group) == schema.group_index("hat")
    assert bool(hat.any()) and bool((gates[:, hat] == 0).all())
    assert torch.equal(gates[:, ~hat], oracle[:, ~hat]) and bool((oracle[:, hat] == 1).all())
    with pytest.raises(ConfigError, match="does not accept"):
        routers.build_router(name, p=0.1)


def test_the_bank_is_built_by_name_with_its_own_option(plugin_path):
    from attrimp.config import MoSAICConfig, config_from_dict
    from attrimp.errors import ConfigError
    from attrimp.model.mosaic import MoSAICReID

    name = _entry_name("attrimp.banks")
    experts = {**TINY["experts"], "bank": name, "options": {"alpha_scale": 0.25}}
    cfg = config_from_dict({**TINY, "experts": experts})
    mcfg = MoSAICConfig.from_study(cfg, schema="market1501", num_classes=0, num_cameras=3)
    model = MoSAICReID(mcfg)
    assert type(model.experts).__name__ == "ScaledAdapterBank" and mcfg.bank == name
    # alpha = 4, rank = 4 in the tiny config: the adapter's scale alpha / r = 1, times 0.25
    assert [layer.scale for layer in model.experts.layers] == [0.25]
    with pytest.raises(ConfigError, match=r"experts\.options\.alpha_scal is not an option"):
        config_from_dict({**TINY, "experts": {**experts, "options": {"alpha_scal": 2.0}}})
    with pytest.raises(ConfigError, match=r"experts\.options\.alpha_scale must be float"):
        config_from_dict({**TINY, "experts": {**experts, "options": {"alpha_scale": "x"}}})


def test_the_design_expands_by_name(plugin_path):
    from attrimp.config import config_from_dict
    from attrimp.evaluate.ablation import make_conditions
    from attrimp.model.schema import load_schema

    name = _entry_name("attrimp.designs")
    schema = load_schema("market1501")
    conds = make_conditions(schema, ["full", name])
    assert [c.name for c in conds] == ["full", f"{name}:even", f"{name}:odd"]
    even, odd = conds[1].groups_on, conds[2].groups_on
    groups = schema.group_names
    assert even == tuple(groups[0::2]) and odd == tuple(groups[1::2])
    assert not set(even) & set(odd) and set(even) | set(odd) == set(groups)
    cfg = config_from_dict({**TINY, "ablation": {"designs": ["full", name]}})
    assert cfg.ablation.designs == ["full", name]


def test_the_dataset_loads_by_name_with_its_own_options(plugin_path, tmp_path):
    import json as _json

    from attrimp.config import config_from_dict
    from attrimp.data.datasets import DATASETS
    from attrimp.errors import ConfigError

    name = _entry_name("attrimp.datasets")
    options = {"identities": 10, "seed": 3, "hidden": ["upcolor"]}
    data = {"dataset": name, "options": options}
    cfg = config_from_dict({**TINY, "data": data})
    loaded = DATASETS.load(name).load(cfg.data, tmp_path)
    assert loaded.schema.name == "market1501"
    # the synthetic world splits its identities in half: 5 train, 5 test, 2 cameras x 2 images
    assert loaded.num_train_pids == 5 and len(loaded.train) == 5 * 2 * 2
    design = _json.loads((tmp_path / "world" / "synth.json").read_text())
    assert design["seed"] == 3 and design["n_cameras"] == 2
    assert design["visibility"]["upcolor"] == 0.0 and design["visibility"]["hat"] == 1.0
    with pytest.raises(ConfigError, match=r"data\.options\.identitis is not an option"):
        config_from_dict({**TINY, "data": {**data, "options": {"identitis": 10}}})
    with pytest.raises(ConfigError, match=r"data\.options\.seed must be a whole number"):
        config_from_dict({**TINY, "data": {**data, "options": {"seed": True}}})


def test_the_analysis_runs_in_the_battery_with_a_known_answer(plugin_path):
    """A planted table: the outcome is 0.2 higher with a hat and 0.5 lower for the old, exactly,
    so the plug-in's table must read +0.2 and -0.5 (means of a noiseless outcome)."""
    import numpy as np
    import pandas as pd

    import studies

    name = _entry_name("attrimp.analyses")
    rng = np.random.default_rng(0)
    n = 240
    hat = rng.choice(["no", "yes"], size=n, p=[0.7, 0.3])
    age = rng.choice(["adult", "old"], size=n, p=[0.6, 0.4])
    table = pd.DataFrame({"hat": hat, "age": age})
    table["ap"] = 0.6 + 0.2 * (hat == "yes") - 0.5 * (age == "old")
    report = studies.analyze(table, outcome="ap", quick=True, figures=False, models=())
    means = report.table(name).set_index("attribute")
    assert means.loc["hat", "level"] == "yes" and means.loc["hat", "reference"] == "no"
    assert means.loc["hat", "mean_difference"] == pytest.approx(
        0.2 - 0.5 * ((age[hat == "yes"] == "old").mean() - (age[hat == "no"] == "old").mean())
    )
    assert means.loc["age", "mean_difference"] == pytest.approx(
        -0.5 + 0.2 * ((hat[age == "old"] == "yes").mean() - (hat[age == "adult"] == "yes").mean())
    )
    assert means.loc["hat", "n"] == int((hat == "yes").sum())


@pytest.mark.slow  # ~30 s of CPU: two battery runs on the tiny study's tables
def test_a_study_toml_uses_every_plugin_and_its_report_shows_them(
    plugin_site, plugin_path, tmp_path
):
    """``attrimp study run`` in a fresh process that finds the package as an installed one
    (its folder on PYTHONPATH): the study TOML names the dataset, bank, router, design and
    analysis of the package, and the report shows each. The trained checkpoint rebuilds the
    plug-in bank and router, and the router's switched-off group left its experts untrained."""
    declared = {group: next(iter(entries)) for group, entries in _entry_points().items()}
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, "-m", "attrimp", "study", "run", str(PLUGIN / "study.toml")]
        + ["--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text().replace("\\_", "_")  # markdown escapes underscores
    html = (out / "report.html").read_text()
    if "attrimp.datasets" in declared:
        assert report["data"]["dataset"] == declared["attrimp.datasets"]
        assert report["data"]["train_identities"] == 6  # the plug-in's 12 identities, half
        # its `hidden` option reached the world: upcolor annotated but not drawn
        assert "upcolor (invisible)" in md and "12 identities seen by 2 cameras" in md
    if "attrimp.banks" in declared:
        assert report["model"]["bank"] == declared["attrimp.banks"]
    if "attrimp.routers" in declared:
        assert report["model"]["router"] == declared["attrimp.routers"]
        _check_untrained_group(out, declared["attrimp.routers"], group="gender")
    if "attrimp.designs" in declared:
        design = declared["attrimp.designs"]
        rows = {r["config"]: r for r in report["configurations"] if r["design"] == design}
        assert set(rows) == {f"{design}:even", f"{design}:odd"}
        groups = report["data"]["groups"]
        assert [g for g in groups if rows[f"{design}:even"][g]] == groups[0::2]
        assert f"{design}:odd" in md and f"{design}:odd" in html
    if "attrimp.analyses" in declared:
        analysis = declared["attrimp.analyses"]
        battery = json.loads((out / "analyses" / "switching" / "report.json").read_text())
        rows = battery["analyses"][analysis]
        assert {r["attribute"] for r in rows} <= set(report["data"]["groups"]) and rows
        for page in ("report.md", "report.html"):
            text = (out / "analyses" / "switching" / page).read_text()
            assert "Mean outcome difference per level (example plug-in)" in text, page


def _check_untrained_group(out: Path, router: str, *, group: str) -> None:
    """The checkpoint of a study trained with the one-group-off router: its experts of
    ``group`` never had a gate, so their LoRA ``B`` is still exactly the initial zero, while the
    other groups' experts trained (``B`` moved)."""
    import torch

    from attrimp.model.checkpoint import load_model

    (train,) = (out / "cache").glob("train-*")
    checkpoints = train / "checkpoints"  # ``latest`` names the last checkpoint's folder
    model = load_model(checkpoints / (checkpoints / "latest").read_text().strip())
    assert model.router.name == router and model.config.router_kwargs == {"group": group}
    assert type(model.experts).__name__ == "ScaledAdapterBank"
    schema = model.schema
    off = torch.tensor(schema.expert_group) == schema.group_index(group)
    assert 0 < int(off.sum()) < schema.n_experts
    for layer in model.experts.layers:
        b = layer.B.detach().reshape(layer.B.shape[0], schema.n_experts, -1)
        moved = b.abs().amax(dim=(0, 2))
        assert bool((moved[off] == 0).all()) and bool((moved[~off] > 0).any()), moved
