"""Drawing one pedestrian-like image (`render_person`) from its planted quantities.

The layers are painted in named steps (background, body geometry, what is behind the body,
legs, lower clothing, arms, torso, carried things, head, then the camera's light, noise and
blur). `NEUTRAL` and `PALETTE` say how an invisible group and each colour look. Pure: the same
inputs give the same pixels; nothing is written here (`world`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from attrimp.data.synth.priors import GROUPS, Camera, IdentityDetail, Pose

NEUTRAL: dict[str, str] = {
    "gender": "proportions halfway between the male and female body",
    "hair": "chin-length hair",
    "up": "sleeves to the elbow",
    "down": "lower clothing to mid-calf",
    "clothes": "pants",
    "hat": "no hat",
    "backpack": "no backpack",
    "bag": "no shoulder bag",
    "handbag": "no handbag",
    "age": "adult height and head, own hair colour, upright",
    "upcolor": "khaki (160, 150, 120)",
    "downcolor": "khaki (160, 150, 120)",
}
_NEUTRAL_COLOR = np.array([160, 150, 120])

PALETTE = {
    "black": (28, 28, 32),
    "white": (236, 236, 230),
    "red": (200, 32, 36),
    "purple": (118, 50, 150),
    "yellow": (230, 208, 40),
    "gray": (128, 128, 128),
    "blue": (40, 72, 190),
    "green": (40, 150, 62),
    "pink": (236, 140, 182),
    "brown": (120, 76, 36),
}


# --- drawing ---------------------------------------------------------------------------------
def _shade(color, shift) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(c) + int(s))) for c, s in zip(color, shift))


def render_person(
    attributes: Mapping[str, int],
    detail: IdentityDetail,
    pose: Pose,
    camera: Camera,
    visible: Mapping[str, bool],
    size: tuple[int, int] = (128, 64),
) -> np.ndarray:
    """Draw one image, ``uint8 [H, W, 3]``. A group with ``visible[g] == False`` is drawn in its
    neutral form, so the result does not depend on ``attributes[g]`` at all.

    The layers are painted back to front, each by its own function: background, what hangs
    behind the body, legs, lower clothing, arms, torso, what is carried, head; then the camera.
    """
    H, W = size
    look = _look(attributes, detail, visible)
    img = _background(camera, pose, H, W)
    d = ImageDraw.Draw(img)
    body = _body(look, detail, pose, H, W)
    _draw_behind(d, body, look, detail, pose)
    _draw_legs(d, body, detail)
    _draw_lower_clothing(d, body, look)
    _draw_arms(d, body, look, detail)
    _draw_torso(d, body, look, detail)
    _draw_carried(d, body, look, detail, pose)
    _draw_head(d, body, look, detail, pose)
    return _through_camera(img, camera, pose, H, W)


@dataclass(frozen=True)
class _Look:
    """What one image shows of the attributes: each group's value (None = its neutral form)
    and the colours that follow from them."""

    value: dict[str, str | None]
    up_rgb: tuple[int, int, int]
    down_rgb: tuple[int, int, int]
    hair_rgb: tuple[int, int, int]

    @property
    def clothes(self) -> str:
        return self.value["clothes"] or "pants"

    @property
    def age(self) -> str:
        return self.value["age"] or "adult"

    def has(self, group: str) -> bool:
        return self.value[group] == "yes"


def _look(
    attributes: Mapping[str, int], detail: IdentityDetail, visible: Mapping[str, bool]
) -> _Look:
    value = {g: GROUPS[g][attributes[g]] if visible.get(g, True) else None for g in GROUPS}
    upc, downc = value["upcolor"], value["downcolor"]
    age = value["age"] or "adult"
    return _Look(
        value=value,
        up_rgb=_shade(PALETTE[upc] if upc else _NEUTRAL_COLOR, detail.shade),
        down_rgb=_shade(PALETTE[downc] if downc else _NEUTRAL_COLOR, detail.shade),
        hair_rgb=(170, 170, 172) if age == "old" else detail.hair_color,
    )


def _background(camera: Camera, pose: Pose, H: int, W: int) -> Image.Image:
    """The camera colour with a vertical gradient, a floor band and per-image clutter."""
    rows = np.linspace(1.15, 0.85, H, dtype=np.float32)[:, None, None]
    bg = np.empty((H, W, 3), dtype=np.uint8)
    bg[:] = np.minimum(np.asarray(camera.background, np.float32) * rows, 255)
    bg[int(H * 0.82) :] = camera.floor
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    for x0, y0, x1, y1, s in pose.clutter:
        base = camera.floor if y0 > 0.82 else camera.background
        d.rectangle((x0 * W, y0 * H, x1 * W, y1 * H), fill=_shade(base, (s, s, s)))
    return img


@dataclass(frozen=True)
class _Body:
    """The body geometry of one image, in pixels (see `_body`)."""

    h: float  # height
    cx: float  # centre line
    feet: float
    top: float
    shoulder: float  # half-widths
    hip: float
    stoop: float
    y_head1: float  # bottom of the head
    y_sh: float  # shoulders
    y_waist: float
    y_knee: float
    y_ankle: float
    leg_w: float
    spread: float  # walking: how far the feet and hands swing
    hx: float  # head centre
    head_r: float
    hair_len: float  # how far long hair falls below the head, as a fraction of h


def _body(look: _Look, detail: IdentityDetail, pose: Pose, H: int, W: int) -> _Body:
    """Age sets height and head size; gender sets shoulders vs hips; the pose moves, scales
    and swings it."""
    age, gender = look.age, look.value["gender"]
    age_scale = {"young": 0.72, "teenager": 0.88, "adult": 1.0, "old": 0.96}[age]
    head_frac = {"young": 0.17, "teenager": 0.145, "adult": 0.13, "old": 0.13}[age]
    h = H * 0.86 * pose.scale * age_scale * detail.height
    cx = W / 2 + pose.dx * W
    feet = H * 0.95 + pose.dy * H
    top = feet - h
    stoop = h * 0.03 if age == "old" else 0.0
    y_head1 = top + h * head_frac
    return _Body(
        h=h,
        cx=cx,
        feet=feet,
        top=top,
        shoulder=h * 0.135 * detail.width * {"male": 1.12, "female": 0.86, None: 0.99}[gender],
        hip=h * 0.10 * detail.width * {"male": 0.9, "female": 1.12, None: 1.01}[gender],
        stoop=stoop,
        y_head1=y_head1,
        y_sh=y_head1 + h * 0.03,
        y_waist=top + h * 0.52,
        y_knee=top + h * 0.74,
        y_ankle=feet - h * 0.03,
        leg_w=h * 0.05,
        spread=pose.phase * h * 0.06,
        hx=cx + stoop,
        head_r=h * head_frac / 2,
        hair_len={"short": 0.0, "long": 0.16, None: 0.05}[look.value["hair"]],
    )


def _poly(d: ImageDraw.ImageDraw, points, fill) -> None:
    d.polygon([(float(x), float(y)) for x, y in points], fill=fill)


def _between(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _draw_behind(
    d: ImageDraw.ImageDraw, b: _Body, look: _Look, detail: IdentityDetail, pose: Pose
) -> None:
    """In front view: a backpack's sides sticking out behind the torso, long hair falling
    behind the shoulders."""
    h = b.h
    if look.has("backpack") and not pose.back:
        d.rounded_rectangle(
            (
                b.cx - b.shoulder * 1.12,
                b.y_sh + h * 0.02,
                b.cx + b.shoulder * 1.12,
                b.y_waist - h * 0.04,
            ),
            radius=2,
            fill=detail.accessory_color,
        )
    if b.hair_len > 0 and not pose.back:
        d.rectangle(
            (
                b.hx - b.head_r * 1.3,
                b.y_head1 - b.head_r,
                b.hx + b.head_r * 1.3,
                b.y_head1 + h * b.hair_len,
            ),
            fill=look.hair_rgb,
        )


def _draw_legs(d: ImageDraw.ImageDraw, b: _Body, detail: IdentityDetail) -> None:
    """Bare legs (skin) and shoes; the lower clothing is drawn over them."""
    for side in (-1, 1):
        x_hip = b.cx + side * b.hip * 0.5
        x_foot = x_hip + side * abs(b.spread) * 0.5
        _poly(
            d,
            [
                (x_hip - b.leg_w / 2, b.y_waist),
                (x_hip + b.leg_w / 2, b.y_waist),
                (x_foot + b.leg_w / 2, b.y_ankle),
                (x_foot - b.leg_w / 2, b.y_ankle),
            ],
            detail.skin,
        )
        d.ellipse(
            (x_foot - b.leg_w * 0.8, b.y_ankle - 1, x_foot + b.leg_w * 0.9, b.feet + 1),
            fill=detail.shoe_color,
        )


def _draw_lower_clothing(d: ImageDraw.ImageDraw, b: _Body, look: _Look) -> None:
    """A flared dress, or two trouser legs, down to the hem the ``down`` length sets."""
    hem = {
        "long": b.y_ankle - b.h * 0.01,
        "short": b.y_knee,
        None: _between(b.y_knee, b.y_ankle, 0.5),
    }[look.value["down"]]
    if look.clothes == "dress":
        flare = b.hip * 0.6 + (hem - b.y_waist) * 0.35
        _poly(
            d,
            [
                (b.cx - b.hip, b.y_waist),
                (b.cx + b.hip, b.y_waist),
                (b.cx + flare + b.hip * 0.4, hem),
                (b.cx - flare - b.hip * 0.4, hem),
            ],
            look.down_rgb,
        )
        return
    t = (hem - b.y_waist) / (b.y_ankle - b.y_waist)
    for side in (-1, 1):
        x_hip = b.cx + side * b.hip * 0.5
        x_foot = x_hip + side * abs(b.spread) * 0.5
        x_hem = _between(x_hip, x_foot, t)
        w = b.leg_w * 0.65
        _poly(
            d,
            [
                (x_hip - w - b.hip * 0.3, b.y_waist),
                (x_hip + w + b.hip * 0.3, b.y_waist),
                (x_hem + w, hem),
                (x_hem - w, hem),
            ],
            look.down_rgb,
        )


def _draw_arms(d: ImageDraw.ImageDraw, b: _Body, look: _Look, detail: IdentityDetail) -> None:
    """Each arm in skin, its sleeve in the upper colour (long sleeves reach the wrist), the
    hand, and a handbag hanging from the right hand."""
    h = b.h
    y_hand = b.y_waist + h * 0.04
    sleeve = {"long": 1.0, "short": 0.3, None: 0.5}[look.value["up"]]
    for side in (-1, 1):
        x_sh = b.cx + side * b.shoulder
        x_hand = x_sh + side * h * 0.015 + b.spread * 0.3
        arm_w = h * 0.045
        y_sl = _between(b.y_sh, y_hand, sleeve)
        x_sl = _between(x_sh, x_hand, sleeve)
        _poly(
            d,
            [
                (x_sh - arm_w, b.y_sh),
                (x_sh + arm_w, b.y_sh),
                (x_hand + arm_w * 0.8, y_hand),
                (x_hand - arm_w * 0.8, y_hand),
            ],
            detail.skin,
        )
        _poly(
            d,
            [
                (x_sh - arm_w * 1.1, b.y_sh),
                (x_sh + arm_w * 1.1, b.y_sh),
                (x_sl + arm_w, y_sl),
                (x_sl - arm_w, y_sl),
            ],
            look.up_rgb,
        )
        d.ellipse(
            (x_hand - arm_w, y_hand - arm_w, x_hand + arm_w, y_hand + arm_w), fill=detail.skin
        )
        if side == 1 and look.has("handbag"):
            d.rectangle(
                (x_hand - h * 0.05, y_hand + arm_w, x_hand + h * 0.05, y_hand + h * 0.11),
                fill=detail.accessory_color,
            )


def _draw_torso(d: ImageDraw.ImageDraw, b: _Body, look: _Look, detail: IdentityDetail) -> None:
    """The torso in the upper colour with the identity's pattern (stripe, logo or dots)."""
    h, cx, hip = b.h, b.cx, b.hip
    _poly(
        d,
        [
            (cx - b.shoulder + b.stoop, b.y_sh),
            (cx + b.shoulder + b.stoop, b.y_sh),
            (cx + hip, b.y_waist),
            (cx - hip, b.y_waist),
        ],
        look.up_rgb,
    )
    py = _between(b.y_sh, b.y_waist, detail.pattern_pos)
    if detail.pattern == "stripe":
        d.rectangle(
            (cx - hip * 0.95, py - h * 0.012, cx + hip * 0.95, py + h * 0.012),
            fill=detail.pattern_color,
        )
    elif detail.pattern == "logo":
        d.rectangle(
            (cx - h * 0.025, py - h * 0.025, cx + h * 0.025, py + h * 0.025),
            fill=detail.pattern_color,
        )
    elif detail.pattern == "dots":
        for k in (-1, 0, 1):
            x = cx + k * hip * 0.5
            d.ellipse((x - 1, py - 1, x + 1, py + 1), fill=detail.pattern_color)


def _draw_carried(
    d: ImageDraw.ImageDraw, b: _Body, look: _Look, detail: IdentityDetail, pose: Pose
) -> None:
    """A backpack (its body from behind, its straps from the front) and a shoulder bag (strap
    across the torso, the bag at the hip)."""
    h, cx, shoulder, colour = b.h, b.cx, b.shoulder, detail.accessory_color
    if look.has("backpack"):
        if pose.back:
            d.rounded_rectangle(
                (cx - shoulder * 0.8, b.y_sh + h * 0.02, cx + shoulder * 0.8, b.y_waist - h * 0.03),
                radius=2,
                fill=colour,
            )
        else:
            for side in (-1, 1):
                x = cx + side * shoulder * 0.55
                d.line((x, b.y_sh, x, b.y_waist - h * 0.06), fill=colour, width=2)
    if look.has("bag"):
        side = 1 if pose.back else -1
        d.line(
            (cx - side * shoulder * 0.8, b.y_sh, cx + side * b.hip, b.y_waist - h * 0.02),
            fill=colour,
            width=2,
        )
        bx = cx + side * (b.hip + h * 0.02)
        d.rectangle(
            (bx - h * 0.05, b.y_waist - h * 0.05, bx + h * 0.05, b.y_waist + h * 0.05),
            fill=colour,
        )


def _draw_head(
    d: ImageDraw.ImageDraw, b: _Body, look: _Look, detail: IdentityDetail, pose: Pose
) -> None:
    """Neck and face, the hair (a cap of it from the front, the whole back of the head and
    long hair from behind), and a hat."""
    hx, r, top, y_head1, hair = b.hx, b.head_r, b.top, b.y_head1, look.hair_rgb
    d.rectangle((hx - r * 0.35, y_head1 - 2, hx + r * 0.35, b.y_sh + 1), fill=detail.skin)
    d.ellipse((hx - r * 0.85, top, hx + r * 0.85, y_head1), fill=detail.skin)
    if pose.back:
        d.ellipse((hx - r * 0.9, top - 1, hx + r * 0.9, y_head1), fill=hair)
        if b.hair_len > 0:
            d.rectangle(
                (hx - r * 0.9, top + r, hx + r * 0.9, y_head1 + b.h * b.hair_len), fill=hair
            )
    else:
        d.chord((hx - r * 0.92, top - 1, hx + r * 0.92, y_head1 - r * 0.4), 180, 360, fill=hair)
    if look.has("hat"):
        d.rectangle(
            (hx - r * 1.2, top + r * 0.45, hx + r * 1.2, top + r * 0.65), fill=detail.hat_color
        )
        d.chord(
            (hx - r * 0.9, top - r * 0.5, hx + r * 0.9, top + r * 1.1),
            180,
            360,
            fill=detail.hat_color,
        )


def _through_camera(img: Image.Image, camera: Camera, pose: Pose, H: int, W: int) -> np.ndarray:
    """The camera's light (gain, colour cast), optional blur and sensor noise."""
    if camera.blur:
        img = img.resize((W // 2, H // 2), Image.BILINEAR).resize((W, H), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    arr *= np.asarray(camera.cast, np.float32) * np.float32(camera.gain * pose.light)
    bank = _noise_bank(H, W)
    arr += bank[pose.noise_index % len(bank)] * np.float32(camera.noise)
    return np.clip(arr, 0, 255, out=arr).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _noise_bank(H: int, W: int, n: int = 16) -> np.ndarray:
    """Sensor-noise fields, drawn once: drawing 24k normals per image was the slowest step, and
    the noise only needs to vary between images, not be fresh for each."""
    bank = np.random.default_rng(20240611).standard_normal((n, H, W, 3), dtype=np.float32)
    bank.flags.writeable = False
    return bank
