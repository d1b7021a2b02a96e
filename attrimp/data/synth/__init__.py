"""The synthetic world: pedestrian-like images with planted, controllable attributes.

Why it exists: tests and the built-in study need a ReID dataset that is small, fast, free to
redistribute and whose truth is known — in particular, an attribute that is *annotated* but not
*visible* in the pixels, so a study can check that such an attribute comes out as important (the
expert carries information the image lacks).

What is drawn (``render_person``), per image of 128×64 by default:
- a person — head, hair (short / long), optional hat, torso in the upper colour with sleeves
  (short / long), lower body as pants or a dress, short or long, in the lower colour, shoes,
  backpack / shoulder bag / handbag shapes; gender shows in body proportions (shoulders vs hips),
  age in height, head size, grey hair and a stoop;
- identity-specific detail so identities are not defined by attributes alone: skin tone, hair
  and shoe colour, a small torso pattern (stripe / logo / dots / none), body width and height,
  accessory colours and a slight shade shift of the clothing colours;
- the camera: background colour and floor, light gain and colour cast, noise, optional blur;
- per image: position and scale jitter, walking phase (legs, arms), front or back view, clutter.

Attributes are drawn per identity, independently across groups, from Market-1501's priors
(`MARKET_PRIORS`, embedded so the package never needs the real file; a test checks it against
``../shared/data/market_attribute.mat``) or uniformly (``priors="uniform"``, for balanced designs).
Independent draws are deliberate: the real file's correlations (e.g. long hair with female) would
confound a planted-importance design. Annotations are then always complete (no "unknown").

The price is an identity leak larger than real data's: independent vectors are more unique than
real ones (Market-1501's 750 test identities carry only 484 distinct vectors), so an oracle router
handing the model the annotation tells it more about who the person is than it would on real data.
``attributes="joint"`` with ``attributes_file`` (a Market-1501 attribute file) instead resamples
real identities' whole vectors (`AttributePool`, `assign_identities`): train identities from the
file's train split, test identities from its test split, without replacement while the split lasts,
so correlations and uniqueness are the file's. A colour group the file leaves unmarked stays
unmarked in the world's file (code 1 in every colour column, as in the real file) and is drawn in
its neutral colour, "a colour not on the list". `attribute_uniqueness` measures the leak.

Visibility: each attribute group has a visibility ``v`` in [0, 1]. For every image and group a
uniform number ``u`` is drawn (always, so changing one group's visibility changes no other pixel);
if ``u < v`` the true value is drawn, otherwise the group's *neutral* rendering (`NEUTRAL`), the
same for every identity. ``v = 0``: the attribute never shows in the pixels while the annotation
keeps its true value; ``v = 1``: always shows.

Output, in the Market-1501 layout so the same loaders read it: ``bounding_box_train/``,
``query/``, ``bounding_box_test/`` with names ``PPPP_cCs1_FFFFFF_00.jpg`` (or ``.png``);
``market_attribute.mat`` (the released file's struct layout and coding: 1 = no / first value,
2 = yes / second, age 1..4), ``market_attribute.csv`` (``pid, split`` + the same raw columns) and ``synth.json`` (the planted
design). Same arguments, same bytes on a given Pillow/scipy build (the .mat header's timestamp
is fixed).

The package's rooms: `priors` (the planted quantities and where they are drawn from),
`render` (one image from them) and `world` (the layout, the plan and the files on disk). Every
public name is re-exported here, so ``from attrimp.data.synth import make_synthetic_world`` and
``synth.GROUPS`` read as they did when this was one module.
"""

from __future__ import annotations

from attrimp.data.synth.priors import (
    ATTRIBUTE_DRAWS,
    GROUPS,
    MARKET_PRIORS,
    MAT_COLUMNS,
    NO_VALUE,
    PRIORS,
    SPLIT_KEYS,
    AttributePool,
    Camera,
    IdentityDetail,
    Pose,
    Uniqueness,
    assign_identities,
    attribute_uniqueness,
    draw_attributes,
    draw_camera,
    draw_identity_detail,
    draw_pose,
    load_attribute_pool,
)
from attrimp.data.synth.render import NEUTRAL, PALETTE, render_person
from attrimp.data.synth.world import (
    ATTRIBUTE_CSV,
    ATTRIBUTE_FILE,
    DESIGN_FILE,
    FOLDERS,
    IMAGE_FORMATS,
    JUNK_PID,
    MARKET1501_FULL,
    PRESETS,
    SplitSizes,
    attribute_codes,
    load_synthetic_world,
    make_synthetic_world,
    plan_images,
    preset_world,
    resolve_visibility,
    spread,
    world_attributes,
    world_images,
)

__all__ = [
    "ATTRIBUTE_CSV",
    "ATTRIBUTE_DRAWS",
    "ATTRIBUTE_FILE",
    "DESIGN_FILE",
    "FOLDERS",
    "GROUPS",
    "IMAGE_FORMATS",
    "JUNK_PID",
    "MARKET1501_FULL",
    "MARKET_PRIORS",
    "MAT_COLUMNS",
    "NEUTRAL",
    "NO_VALUE",
    "PALETTE",
    "PRESETS",
    "PRIORS",
    "SPLIT_KEYS",
    "AttributePool",
    "Camera",
    "IdentityDetail",
    "Pose",
    "SplitSizes",
    "Uniqueness",
    "assign_identities",
    "attribute_codes",
    "attribute_uniqueness",
    "draw_attributes",
    "draw_camera",
    "draw_identity_detail",
    "draw_pose",
    "load_attribute_pool",
    "load_synthetic_world",
    "make_synthetic_world",
    "plan_images",
    "preset_world",
    "render_person",
    "resolve_visibility",
    "spread",
    "world_attributes",
    "world_images",
]
