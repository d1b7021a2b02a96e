"""Attribute schemas: the built-ins against the real annotation files, the encoding policies on
hand-made examples, and TOML schema files (round trip and every kind of mistake)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from attrimp.errors import SchemaError
from attrimp.model.schema import (
    AttributeSchema,
    GroupKind,
    MissingPolicy,
    MultiplePolicy,
    builtin_schemas,
    load_schema,
)

MAT = {
    "market1501": ("market_attribute.mat", "market_attribute"),
    "dukemtmc": ("duke_attribute.mat", "duke_attribute"),
}


def raw_fields(shared_data, dataset: str, split: str) -> dict[str, np.ndarray]:
    """The raw struct fields, read with scipy's default (record) layout, independently of
    attrimp's loader."""
    filename, var = MAT[dataset]
    struct = scipy.io.loadmat(str(shared_data / filename))[var][0, 0][split][0, 0]
    return {name: struct[name] for name in struct.dtype.names}


# ----- built-in schemas ---------------------------------------------------------------------


def test_market_layout():
    s = load_schema("market1501")
    assert s.n_groups == 12
    assert s.n_attributes == 27
    assert s.n_slots == 39
    assert s.n_experts == 35
    assert s.group_names == [
        "gender", "hair", "up", "down", "clothes", "hat", "backpack", "bag", "handbag", "age",
        "upcolor", "downcolor",
    ]  # fmt: skip
    kinds = {g.name: g.kind for g in s.groups}
    assert [n for n, k in kinds.items() if k is GroupKind.SINGLE] == [
        "hat",
        "backpack",
        "bag",
        "handbag",
    ]
    assert len(s.group("age").values) == 4 and len(s.group("upcolor").values) == 8
    assert len(s.group("downcolor").values) == 9
    # a single-state group owns one expert, for "present"; its "absent" slot owns none
    assert "hat=yes" in s.expert_names and "hat=no" not in s.expert_names
    assert s.slot("hat", "no") not in set(s.expert_slots)
    assert s.expert_names[:4] == ["gender=male", "gender=female", "hair=short", "hair=long"]


def test_duke_layout():
    s = load_schema("dukemtmc")
    assert (s.n_groups, s.n_attributes, s.n_slots, s.n_experts) == (10, 23, 31, 26)
    assert s.group("top").missing_codes == (0,)
    assert s.group("upcolor").values[-1] == "brown" and "yellow" not in s.group("upcolor").values


@pytest.mark.parametrize("dataset", ["market1501", "dukemtmc"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_schema_reads_exactly_the_fields_of_the_real_file(shared_data, dataset, split):
    fields = raw_fields(shared_data, dataset, split)
    schema = load_schema(dataset)
    assert set(schema.source_columns) == set(fields) - {"image_index"}


@pytest.mark.parametrize("dataset", ["market1501", "dukemtmc"])
def test_every_code_in_the_real_files_is_declared(shared_data, dataset):
    """Check every field for unexpected codes: the only code outside a group's value codes /
    binary marks is Duke's `top` = 0, which the schema declares as missing."""
    schema = load_schema(dataset)
    undeclared_but_missing = {}
    for split in ("train", "test"):
        fields = raw_fields(shared_data, dataset, split)
        for g in schema.groups:
            if g.column is not None:
                value_codes = set(g.codes)
                present = set(np.unique(fields[g.column]).tolist())
                assert present <= value_codes | set(g.missing_codes), (split, g.column, present)
                if present - value_codes:
                    undeclared_but_missing[(split, g.column)] = sorted(present - value_codes)
            else:
                for col in g.columns:
                    assert set(np.unique(fields[col]).tolist()) <= {g.negative, g.positive}, col
    expected = {("train", "top"): [0]} if dataset == "dukemtmc" else {}
    assert undeclared_but_missing == expected


def test_market_and_duke_order_their_fields_differently(shared_data):
    """Why the loader reads by field name: the order differs between files and between splits."""
    orders = {(d, s): list(raw_fields(shared_data, d, s)) for d in MAT for s in ("train", "test")}
    assert orders[("market1501", "train")] != orders[("market1501", "test")]
    assert orders[("dukemtmc", "train")] != orders[("dukemtmc", "test")]
    assert orders[("market1501", "train")][:4] == ["age", "backpack", "bag", "handbag"]
    assert orders[("dukemtmc", "test")][:3] == ["boots", "shoes", "top"]


def test_builtin_policies_are_the_documented_ones():
    for name in ("market1501", "dukemtmc"):
        s = load_schema(name)
        assert s.missing is MissingPolicy.OFF
        assert s.multiple is MultiplePolicy.ALL
    assert all(not g.missing_codes for g in load_schema("market1501").groups)


# ----- encoding on hand-made examples -------------------------------------------------------

TOY = """
name = "toy"
missing = "off"
multiple = "all"

[[groups]]
name = "gender"
kind = "dual"
column = "gender"
values = ["male", "female"]
codes = [1, 2]

[[groups]]
name = "hat"
kind = "single"
column = "hat"
values = ["no", "yes"]
codes = [0, 1]
missing_codes = [9]

[[groups]]
name = "colour"
kind = "multiclass"
values = ["red", "green", "blue"]
columns = ["red", "green", "blue"]
positive = 1
"""


@pytest.fixture
def toy(tmp_path) -> AttributeSchema:
    path = tmp_path / "toy.toml"
    path.write_text(TOY)
    return load_schema(path)


def _toy_table():
    return {
        "gender": [1, 2, 2, 1],
        "hat": [1, 0, 9, 1],
        "red": [1, 0, 0, 1],
        "green": [0, 0, 0, 1],
        "blue": [0, 0, 1, 0],
    }


def test_toy_layout(toy):
    assert toy.n_slots == 7
    assert toy.expert_names == [
        "gender=male",
        "gender=female",
        "hat=yes",
        "colour=red",
        "colour=green",
        "colour=blue",
    ]
    assert toy.expert_slots.tolist() == [0, 1, 3, 4, 5, 6]
    assert toy.expert_group.tolist() == [0, 0, 1, 2, 2, 2]
    assert toy.group("colour").negative == 0  # positive 1 -> negative 0 by default


def test_encode_by_hand(toy):
    got = toy.encode(_toy_table())
    expected = np.array(
        [
            # male female | no yes | red green blue
            [1, 0, 0, 1, 1, 0, 0],
            [0, 1, 1, 0, 0, 0, 0],  # no colour marked -> colour unknown (all 0)
            [0, 1, 0, 0, 0, 0, 1],  # hat code 9 = declared missing -> hat unknown
            [1, 0, 0, 1, 1, 1, 0],  # two colours, policy "all" keeps both
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(got, expected)
    assert toy.decode(got) == {
        "gender": ["male", "female", "female", "male"],
        "hat": ["yes", "no", "unknown", "yes"],
        "colour": ["red", "unknown", "blue", "multiple"],
    }


def test_multiple_policy_off_and_error(toy):
    import dataclasses

    off = dataclasses.replace(toy, multiple=MultiplePolicy.OFF)
    got = off.encode(_toy_table())
    assert got[3, 4:].tolist() == [0, 0, 0]
    assert off.decode(got)["colour"][3] == "unknown"
    # the raw marks still show "multiple" (what the priors count)
    assert off.decode(off.marks(_toy_table()))["colour"][3] == "multiple"
    err = dataclasses.replace(toy, multiple=MultiplePolicy.ERROR)
    with pytest.raises(SchemaError, match="row 3 marks several values of group 'colour'"):
        err.encode(_toy_table())


def test_missing_policy_error(toy):
    import dataclasses

    strict = dataclasses.replace(toy, missing=MissingPolicy.ERROR)
    with pytest.raises(SchemaError, match="row 2 has no value for group 'hat'"):
        strict.encode(_toy_table())


def test_undeclared_codes_are_errors_not_silent_no(toy):
    table = _toy_table() | {"gender": [1, 2, 3, 1]}
    with pytest.raises(SchemaError, match=r"column 'gender' holds the code 3 \(row 2\)"):
        toy.encode(table, source="file 'x.csv'")
    table = _toy_table() | {"green": [0, 2, 0, 0]}
    with pytest.raises(SchemaError, match=r"column 'green' holds the code 2 \(row 1\).*\[0, 1\]"):
        toy.encode(table)
    with pytest.raises(SchemaError, match="lacks the column 'blue'"):
        toy.encode({k: v for k, v in _toy_table().items() if k != "blue"})


def test_layout_arrays_are_read_only(toy):
    with pytest.raises(ValueError):
        toy.expert_slots[0] = 5


def test_group_mask(toy):
    assert toy.group_mask({"hat", "colour"}).tolist() == [False, True, True]
    with pytest.raises(
        SchemaError, match=r"no attribute group 'shoes'; it has \['gender', 'hat', 'colour'\]"
    ):
        toy.group_mask({"shoes"})


# ----- TOML files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["market1501", "dukemtmc"])
def test_round_trip_builtins(name):
    s = load_schema(name)
    again = AttributeSchema.from_dict(s.to_dict())
    assert again == s
    assert again.to_dict() == s.to_dict()
    assert again.expert_names == s.expert_names


def test_round_trip_custom(toy):
    assert AttributeSchema.from_dict(toy.to_dict()) == toy
    d = toy.to_dict()
    assert d["groups"][2] == {
        "name": "colour", "kind": "multiclass", "values": ["red", "green", "blue"],
        "columns": ["red", "green", "blue"], "positive": 1, "negative": 0,
    }  # fmt: skip


def _write(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


GROUP = (
    '[[groups]]\nname = "g"\nkind = "{kind}"\ncolumn = "g"\nvalues = {values}\ncodes = {codes}\n'
)


@pytest.mark.parametrize(
    "text, pattern",
    [
        (GROUP.format(kind="ternary", values='["a", "b"]', codes="[1, 2]"),
         r"group 0 \('g'\) has kind 'ternary'; use 'single', 'dual', 'multiclass'"),
        (GROUP.format(kind="dual", values='["a", "b", "c"]', codes="[1, 2, 3]"),
         r"'g' is of kind 'dual' and needs exactly 2 values, not 3"),
        (GROUP.format(kind="single", values='["a"]', codes="[1]"),
         r"needs exactly 2 values, not 1"),
        (GROUP.format(kind="multiclass", values='["a", "b", "c"]', codes="[1, 2]"),
         r"needs one code per value in `codes` \(3 values, 2 codes\)"),
        (GROUP.format(kind="dual", values='["a", "b"]', codes="[1, 1]"),
         r"gives two values the same code: codes \[1, 1\]"),
        (GROUP.format(kind="dual", values='["a", "b"]', codes="[1, 2]") + "missing_codes = [2]\n",
         r"uses the code 2 both for a value and as a missing code"),
        (GROUP.format(kind="dual", values='["a", "b"]', codes="[1, 2]") + "colour = 3\n",
         r"group 0 \('g'\) has unknown key 'colour'"),
        ('version = 2\n' + GROUP.format(kind="dual", values='["a", "b"]', codes="[1, 2]"),
         r"unknown key 'version'"),
        ('missing = "ignore"\n' + GROUP.format(kind="dual", values='["a", "b"]', codes="[1, 2]"),
         r"`missing` is 'ignore'; use one of 'off', 'error'"),
        (GROUP.format(kind="dual", values='["a", "unknown"]', codes="[1, 2]"),
         r"reserved value name 'unknown'"),
        (GROUP.format(kind="dual", values='"ab"', codes="[1, 2]"),
         r"`values` must be a list of strings"),
        (GROUP.format(kind="dual", values='["a", "b"]', codes="[1, 2]")
         + GROUP.format(kind="dual", values='["c", "d"]', codes="[1, 2]").replace('name = "g"', 'name = "h"'),
         r"reads the column 'g' for both group 'g' and group 'h'"),
        ('[[groups]]\nname = "c"\nkind = "multiclass"\nvalues = ["a", "b"]\ncolumns = ["x", "y"]\npositive = 2\nnegative = 2\n',
         r"uses the code 2 as both positive and negative"),
        ('[[groups]]\nname = "c"\nkind = "multiclass"\nvalues = ["a", "b"]\ncolumns = ["x", "y"]\npositive = 5\n',
         r"marks values with code 5; declare its `negative`"),
        ('[[groups]]\nname = "c"\nkind = "dual"\nvalues = ["a", "b"]\ncolumn = "x"\ncolumns = ["x", "y"]\ncodes = [1, 2]\n',
         r"mixes `column` .* with `columns`"),
        ('[[groups]]\nname = "c"\nkind = "dual"\nvalues = ["a", "b"]\n',
         r"needs either `column` \(with `codes`\) or `columns`"),
        ('[[groups]]\nkind = "dual"\nvalues = ["a", "b"]\ncolumn = "x"\ncodes = [1, 2]\n',
         r"lacks the required key 'name'"),
        ('name = "empty"\n', r"a required key 'groups' is missing"),
        ("this is = not toml = at all", r"is not valid TOML"),
    ],
)  # fmt: skip
def test_bad_toml_is_one_clear_sentence(tmp_path, text, pattern):
    path = _write(tmp_path, text)
    with pytest.raises(SchemaError, match=pattern) as info:
        load_schema(path)
    message = str(info.value)
    assert str(path) in message  # names the file
    assert "\n" not in message


def test_missing_schema_file_and_unknown_name(tmp_path):
    with pytest.raises(SchemaError, match="does not exist"):
        load_schema(tmp_path / "nope.toml")
    with pytest.raises(SchemaError, match="neither a built-in schema"):
        load_schema("cuhk03")


def test_schema_file_for_another_dataset(tmp_path):
    """A PETA-like dataset: a 3-value coded group with a missing code and a binary-column group
    using 0/1 marks."""
    path = _write(
        tmp_path,
        """
name = "peta_like"
description = "test dataset"
multiple = "off"

[[groups]]
name = "age"
kind = "multiclass"
column = "age"
values = ["young", "adult", "old"]
codes = [0, 1, 2]
missing_codes = [-1]

[[groups]]
name = "carrying"
kind = "multiclass"
values = ["backpack", "messenger", "nothing"]
columns = ["c_backpack", "c_messenger", "c_nothing"]
""",
    )
    s = load_schema(path)
    assert s.name == "peta_like" and s.multiple is MultiplePolicy.OFF
    assert s.n_slots == 6 and s.n_experts == 6
    got = s.encode(
        {"age": [2, -1], "c_backpack": [1, 1], "c_messenger": [0, 1], "c_nothing": [0, 0]}
    )
    np.testing.assert_array_equal(got, [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_builtins_are_found_by_name_as_package_resources():
    assert builtin_schemas() == ("dukemtmc", "market1501")
    s = load_schema("Market-1501")
    assert s == load_schema("market1501") and s.source == "built-in schema 'market1501'"
    assert s.n_groups == 12 and s.n_experts == 35


def test_a_grouping_without_kinds_owns_no_experts(tmp_path):
    """The one parser also reads the groupings `study analyze --schema` accepts: a group may
    leave out kind and values (levels from the columns or the data); the engine refuses it."""
    path = _write(
        tmp_path,
        '[[groups]]\nname = "colour"\ncolumns = ["red", "blue"]\npositive = 3\n'
        '[[groups]]\nname = "shoe size"\ncolumn = "size"\n'
        '[[groups]]\nname = "hat"\ncolumn = "hat"\ncodes = [1, 2]\nmissing_codes = [0]\n',
    )
    g = load_schema(path, experts=False)
    assert not g.has_experts and g.group_names == ["colour", "shoe size", "hat"]
    assert [x.level_names for x in g.groups] == [("red", "blue"), None, ("1", "2")]
    assert g.groups[0].negative is None  # no "not marked" code: any other code is "not marked"
    assert AttributeSchema.from_dict(g.to_dict()) == g
    with pytest.raises(SchemaError, match=r"bad\.toml.*group 'colour' has no `kind`"):
        load_schema(path)
    with pytest.raises(SchemaError, match="group 'colour' has no `kind`"):
        g.n_experts  # noqa: B018
    with pytest.raises(SchemaError, match="group 'colour' has no `kind`"):
        g.encode({"red": [1], "blue": [0], "size": [3], "hat": [1]})


@pytest.mark.parametrize(
    "text, pattern",
    [
        ('[[groups]]\nname = "g"\nkind = "dual"\ncolumn = "g"\ncodes = [1, 2]\n',
         r"has kind 'dual' but no `values`"),
        ('[[groups]]\nname = "g h"\nkind = "dual"\ncolumn = "g"\nvalues = ["a", "b"]\ncodes = [1, 2]\n',
         r"needs a name made of letters, digits and underscores"),
        ('[[groups]]\nname = "g"\ncolumn = "g"\nvalues = ["a", "b"]\n',
         r"needs one code per value in `codes` \(2 values, 0 codes\)"),
        ('[[groups]]\nname = "g"\ncolumn = "g"\ncodes = [1.5, 2]\n',
         r"`codes` must be a list of integers \(or strings\)"),
    ],
)  # fmt: skip
def test_expert_groups_need_what_a_grouping_may_leave_out(tmp_path, text, pattern):
    with pytest.raises(SchemaError, match=pattern):
        load_schema(_write(tmp_path, text), experts=False)
