"""Procedural street-scene layout for the synthetic benchmark: a label map and an instance map, no colours.

Camera model: a pinhole camera at height `CAM_H` metres over flat ground, horizon at row `hz`, vanishing point at
column `vx`. A ground point at "closeness" u in (0, 1] (u = 1 at the bottom row, u -> 0 at the horizon) lies on
row `hz + u * (H - hz)`, and one metre there spans `u * (H - hz) / CAM_H` pixels, so object sizes follow
perspective. Every shape is a mask computed on a coordinate grid over its bounding box (rectangles, ellipses,
polygons); no per-pixel Python.

Painter's order: sky, far background, ground, sidewalks, road, roadside (buildings, walls, fences, vegetation,
terrain), poles with lights and signs, then movable objects (vehicles, people) from far to near.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Train ids (labels.CLASS_NAMES order).
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

CAM_H = 1.5  # camera height in metres: one metre at closeness u spans u * (H - hz) / CAM_H pixels

# Part kinds: a colour role inside an instance (the renderer gives each its own colour rule).
BODY, DARK, GLASS, LIGHTPART, MARKING, SKIN = range(6)


@dataclass(frozen=True)
class SceneStats:
    """What a domain's scenes contain: the class statistics side of the domain gap.

    Counts are Poisson means per image; scales multiply object sizes (people, vehicles).
    """

    horizon: tuple[float, float] = (0.36, 0.48)  # horizon row as a fraction of the height (camera pitch)
    road_width: tuple[float, float] = (0.35, 0.6)  # road half-width at the bottom row, fraction of the width
    cars: float = 4.0  # cars driving on the road
    parked_cars: float = 1.5  # cars parked along the kerb (side view)
    trucks: float = 1.0
    buses: float = 0.5
    train_prob: float = 0.12  # probability of a tram crossing the scene (trains are rare)
    persons: float = 1.5
    riders: float = 0.6  # riders, each on a bicycle or a motorcycle
    bicycles: float = 0.5  # parked bicycles
    motorcycles: float = 0.5  # parked motorcycles
    poles: float = 3.0
    signs: float = 0.5  # probability that a pole carries a sign
    lights: float = 0.35  # probability that a pole carries a traffic light
    trees: float = 2.0
    walls: float = 0.6  # probability per side
    fences: float = 0.6  # probability per side
    terrain: float = 0.5  # probability per side of a grass verge
    vehicle_scale: float = 1.0
    person_scale: float = 1.0


class Canvas:
    """Label map, instance map and a table of instances (class, part kind, random colour vector)."""

    def __init__(self, h: int, w: int, rng: np.random.Generator):
        self.h, self.w, self.rng = h, w, rng
        self.label = np.full((h, w), SKY, dtype=np.uint8)  # (H, W) train ids
        self.inst = np.zeros((h, w), dtype=np.int32)  # (H, W) instance index
        self.classes, self.parts, self.noise = [SKY], [BODY], [rng.standard_normal(3)]

    def instance(self, cls: int, part: int = BODY, like: int | None = None) -> int:
        """A new instance id; `like` reuses another instance's random colour vector (same object, other part)."""
        self.classes.append(cls)
        self.parts.append(part)
        self.noise.append(self.noise[like] if like is not None else self.rng.standard_normal(3))
        return len(self.classes) - 1

    def _window(self, y0: float, y1: float, x0: float, x1: float):
        """Clipped integer bbox and its pixel-centre grids, or None when empty."""
        iy0, iy1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), self.h)
        ix0, ix1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), self.w)
        if iy0 >= iy1 or ix0 >= ix1:
            return None
        yy = np.arange(iy0, iy1, dtype=np.float32)[:, None] + 0.5
        xx = np.arange(ix0, ix1, dtype=np.float32)[None, :] + 0.5
        return (iy0, iy1, ix0, ix1), yy, xx

    def _put(self, box, mask: np.ndarray, inst: int) -> None:
        iy0, iy1, ix0, ix1 = box
        mask = np.broadcast_to(mask, (iy1 - iy0, ix1 - ix0))
        self.label[iy0:iy1, ix0:ix1][mask] = self.classes[inst]
        self.inst[iy0:iy1, ix0:ix1][mask] = inst

    def rect(self, y0: float, y1: float, x0: float, x1: float, inst: int) -> None:
        # at least one pixel wide/high so thin far objects (poles) do not vanish
        if x1 - x0 < 1:
            x0, x1 = (x0 + x1) / 2 - 0.5, (x0 + x1) / 2 + 0.5
        win = self._window(y0, y1, x0, x1)
        if win is not None:
            box, yy, xx = win
            self._put(box, (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1), inst)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, inst: int, inner: float = 0.0) -> None:
        """Filled ellipse; `inner` > 0 makes a ring (a wheel) with that fraction of the radius hollow."""
        ry, rx = max(ry, 0.5), max(rx, 0.5)
        win = self._window(cy - ry, cy + ry, cx - rx, cx + rx)
        if win is not None:
            box, yy, xx = win
            r2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            self._put(box, (r2 <= 1.0) & (r2 >= inner**2), inst)

    def polygon(self, pts: np.ndarray, inst: int) -> None:
        """Filled polygon (even-odd rule), pts (N, 2) as (x, y)."""
        pts = np.asarray(pts, dtype=np.float32)
        win = self._window(pts[:, 1].min(), pts[:, 1].max(), pts[:, 0].min(), pts[:, 0].max())
        if win is None:
            return
        box, yy, xx = win
        inside = np.zeros((len(yy), len(xx[0])), dtype=bool)
        for (xa, ya), (xb, yb) in zip(pts, np.roll(pts, -1, axis=0)):
            if ya == yb:
                continue
            crosses = (ya > yy) != (yb > yy)  # (h, 1)
            x_at = xa + (xb - xa) * (yy - ya) / (yb - ya)  # (h, 1)
            inside ^= crosses & (xx < x_at)
        self._put(box, inside, inst)


@dataclass
class View:
    """Camera geometry of one scene."""

    h: int
    w: int
    hz: float  # horizon row
    vx: float  # vanishing column

    def row(self, u: float) -> float:
        return self.hz + u * (self.h - self.hz)

    def px(self, u: float, metres: float) -> float:
        """Pixels spanned by `metres` at closeness u."""
        return metres * u * (self.h - self.hz) / CAM_H

    def along(self, x_bottom: float, u: float) -> float:
        """Column at closeness u of the ground line through the vanishing point and (x_bottom, bottom row)."""
        return self.vx + (x_bottom - self.vx) * u

    def side_quad(self, x_bottom: float, u0: float, u1: float, z0: float, z1: float) -> np.ndarray:
        """A vertical surface along a ground line, between closeness u0 < u1, from z0 to z1 metres up."""
        xa, xb = self.along(x_bottom, u0), self.along(x_bottom, u1)
        ya, yb = self.row(u0), self.row(u1)
        return np.array(
            [
                (xa, ya - self.px(u0, z0)),
                (xb, yb - self.px(u1, z0)),
                (xb, yb - self.px(u1, z1)),
                (xa, ya - self.px(u0, z1)),
            ]
        )


def _u_sorted(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """n closeness values, denser far away (uniform in depth ~ 1/u)."""
    return np.sort(1.0 / rng.uniform(1.0 / hi, 1.0 / lo, size=n))


def _background(c: Canvas, v: View, rng: np.random.Generator) -> None:
    """Distant buildings and tree lines on the horizon."""
    for _ in range(rng.integers(2, 7)):
        cx, half = rng.uniform(0, v.w), rng.uniform(0.03, 0.12) * v.w
        top = v.hz - rng.uniform(0.03, 0.15) * v.h
        c.rect(top, v.hz + 1, cx - half, cx + half, c.instance(BUILDING))
    if rng.random() < 0.7:
        inst = c.instance(VEGETATION)
        for _ in range(rng.integers(3, 9)):
            c.ellipse(
                v.hz - rng.uniform(0, 0.04) * v.h,
                rng.uniform(0, v.w),
                rng.uniform(0.02, 0.07) * v.h,
                rng.uniform(0.04, 0.12) * v.w,
                inst,
            )


def _ground(c: Canvas, v: View, rng: np.random.Generator, s: SceneStats) -> dict:
    """Verges, sidewalks, road and lane markings. Returns the bottom-row columns of the ground lines."""
    road_l = v.vx - rng.uniform(*s.road_width) * v.w
    road_r = v.vx + rng.uniform(*s.road_width) * v.w
    walk_l = road_l - rng.uniform(0.2, 0.6) * v.w
    walk_r = road_r + rng.uniform(0.2, 0.6) * v.w
    # walk_*: sidewalk outer edge; base_*: where building facades stand (a grass verge may lie in between)
    lines = {"road_l": road_l, "road_r": road_r, "walk_l": walk_l, "walk_r": walk_r, "base_l": walk_l, "base_r": walk_r}
    hz, h = v.hz, v.h
    far = 2.0 * v.w  # far outside the image so the ground reaches the borders
    c.polygon([(v.vx - far, h), (v.vx - far, hz), (v.vx + far, hz), (v.vx + far, h)], c.instance(SIDEWALK))
    for side, outer in (("l", walk_l), ("r", walk_r)):
        if rng.random() < s.terrain:  # grass verge between the sidewalk and the buildings
            curb = road_l if side == "l" else road_r
            edge = outer + (curb - outer) * rng.uniform(0.3, 0.7)
            lines[f"walk_{side}"] = edge
            xo = v.vx - far if side == "l" else v.vx + far
            c.polygon([(xo, h), (edge, h), (v.vx, hz), (xo, hz)], c.instance(TERRAIN))
    road = c.instance(ROAD)
    c.polygon([(road_l, h), (v.vx, hz), (road_r, h)], road)
    mark = c.instance(ROAD, MARKING)
    x_mid = v.vx + (road_l + road_r - 2 * v.vx) * rng.uniform(0.35, 0.65)
    for u0 in np.arange(0.05, 1.0, 0.16):  # dashed centre line; dashes grow with closeness
        u1 = u0 + 0.07
        pts = [
            (v.along(x_mid, u0) - v.px(u0, 0.1), v.row(u0)),
            (v.along(x_mid, u0) + v.px(u0, 0.1), v.row(u0)),
            (v.along(x_mid, u1) + v.px(u1, 0.1), v.row(u1)),
            (v.along(x_mid, u1) - v.px(u1, 0.1), v.row(u1)),
        ]
        c.polygon(pts, mark)
    return lines


def _roadside(c: Canvas, v: View, rng: np.random.Generator, s: SceneStats, lines: dict) -> None:
    """Buildings along both sides, then walls/fences/hedges in front, then trees."""
    for side in ("l", "r"):
        base = lines[f"base_{side}"]
        u = rng.uniform(0.01, 0.05)
        while u < 4.0:  # until the facades leave the image at the bottom
            u1 = u * rng.uniform(1.3, 2.2)
            if rng.random() < 0.85:
                z_top = rng.uniform(6, 20)
                c.polygon(v.side_quad(base, u, u1, 0, z_top), c.instance(BUILDING))
            else:  # a gap with bushes
                c.polygon(v.side_quad(base, u, u1, 0, rng.uniform(1.5, 4)), c.instance(VEGETATION))
            u = u1
        for cls, prob, z in ((WALL, s.walls, (0.8, 2.2)), (FENCE, s.fences, (1.0, 2.0))):
            if rng.random() < prob:
                u0 = rng.uniform(0.03, 0.3)
                u1 = min(u0 * rng.uniform(1.8, 5.0), 1.5)
                inset = base + (v.vx - base) * rng.uniform(0.0, 0.08)
                c.polygon(v.side_quad(inset, u0, u1, 0, rng.uniform(*z)), c.instance(cls))
    for u in _u_sorted(rng, rng.poisson(s.trees), 0.05, 0.9):
        side = lines["walk_l"] if rng.random() < 0.5 else lines["walk_r"]
        curb = lines["road_l"] if side < v.vx else lines["road_r"]
        x = v.along(side + (curb - side) * rng.uniform(0.1, 0.5), u)
        inst = c.instance(VEGETATION)
        c.rect(v.row(u) - v.px(u, 3.5), v.row(u), x - v.px(u, 0.15), x + v.px(u, 0.15), c.instance(VEGETATION, DARK))
        for _ in range(rng.integers(2, 5)):
            c.ellipse(
                v.row(u) - v.px(u, rng.uniform(4, 6.5)),
                x + v.px(u, rng.uniform(-1.2, 1.2)),
                v.px(u, rng.uniform(1.2, 2.2)),
                v.px(u, rng.uniform(1.3, 2.4)),
                inst,
            )


def _poles(c: Canvas, v: View, rng: np.random.Generator, s: SceneStats, lines: dict) -> None:
    """Poles at the kerb, some with a traffic light or a sign on top."""
    for u in _u_sorted(rng, rng.poisson(s.poles), 0.08, 1.0):
        left = rng.random() < 0.5
        curb, walk = (lines["road_l"], lines["walk_l"]) if left else (lines["road_r"], lines["walk_r"])
        x = v.along(curb + (walk - curb) * rng.uniform(0.03, 0.15), u)
        y, z = v.row(u), rng.uniform(3.5, 6.0)
        c.rect(y - v.px(u, z), y, x - v.px(u, 0.09), x + v.px(u, 0.09), c.instance(POLE))
        roll = rng.random()
        if roll < s.lights:
            box = c.instance(LIGHT, DARK)
            top = y - v.px(u, z + 0.2)
            c.rect(top, top + v.px(u, 1.0), x - v.px(u, 0.2), x + v.px(u, 0.2), box)
            lamp = c.instance(LIGHT, LIGHTPART)
            c.ellipse(top + v.px(u, rng.choice([0.2, 0.5, 0.8])), x, v.px(u, 0.1), v.px(u, 0.1), lamp)
        elif roll < s.lights + s.signs:
            sign = c.instance(SIGN)
            cy, r = y - v.px(u, z - 0.4), v.px(u, rng.uniform(0.3, 0.45))
            shape = rng.integers(3)
            if shape == 0:
                c.ellipse(cy, x, r, r, sign)
            elif shape == 1:
                c.polygon([(x - r, cy - r), (x + r, cy - r), (x, cy + r)], sign)
            else:
                c.rect(cy - r, cy + r, x - 1.3 * r, x + 1.3 * r, sign)


def _car(c: Canvas, v: View, u: float, x: float, rng: np.random.Generator, scale: float) -> None:
    """Rear view: body, cabin with a window, wheels, tail lights."""
    y, wm, hm = v.row(u), rng.uniform(1.7, 2.1) * scale, rng.uniform(1.3, 1.6) * scale
    half, body = v.px(u, wm / 2), c.instance(CAR)
    c.rect(y - v.px(u, hm * 0.6), y - v.px(u, 0.15), x - half, x + half, body)
    top = y - v.px(u, hm)
    c.polygon(
        [
            (x - half * 0.9, y - v.px(u, hm * 0.58)),
            (x + half * 0.9, y - v.px(u, hm * 0.58)),
            (x + half * 0.7, top),
            (x - half * 0.7, top),
        ],
        body,
    )
    glass = c.instance(CAR, GLASS, like=body)
    c.polygon(
        [
            (x - half * 0.78, y - v.px(u, hm * 0.62)),
            (x + half * 0.78, y - v.px(u, hm * 0.62)),
            (x + half * 0.62, top + v.px(u, 0.1)),
            (x - half * 0.62, top + v.px(u, 0.1)),
        ],
        glass,
    )
    dark = c.instance(CAR, DARK)
    for sx in (-1, 1):
        c.rect(y - v.px(u, 0.35), y, x + sx * half * 0.8 - v.px(u, 0.14), x + sx * half * 0.8 + v.px(u, 0.14), dark)
    lamp = c.instance(CAR, LIGHTPART)
    for sx in (-1, 1):
        c.rect(
            y - v.px(u, 0.75),
            y - v.px(u, 0.6),
            x + sx * half * 0.85 - v.px(u, 0.12),
            x + sx * half * 0.85 + v.px(u, 0.12),
            lamp,
        )


def _parked_car(c: Canvas, v: View, u: float, base: float, rng: np.random.Generator, scale: float) -> None:
    """Side view along the kerb line: body quad, cabin quad with windows, two wheels."""
    u1 = u * (1 + rng.uniform(4.0, 4.8) * scale * u / 12)
    body = c.instance(CAR)
    c.polygon(v.side_quad(base, u, u1, 0.25, 0.95 * scale), body)
    ua, ub = u + (u1 - u) * 0.2, u + (u1 - u) * 0.75
    c.polygon(v.side_quad(base, ua, ub, 0.9 * scale, 1.45 * scale), body)
    c.polygon(
        v.side_quad(base, ua + (ub - ua) * 0.1, ub - (ub - ua) * 0.1, 1.0 * scale, 1.35 * scale),
        c.instance(CAR, GLASS, like=body),
    )
    dark = c.instance(CAR, DARK)
    for uw in (u + (u1 - u) * 0.18, u + (u1 - u) * 0.82):
        r = v.px(uw, 0.33 * scale)
        c.ellipse(v.row(uw) - r, v.along(base, uw), r, r * 0.8, dark)


def _big_vehicle(c: Canvas, v: View, u: float, x: float, rng: np.random.Generator, cls: int, scale: float) -> None:
    """Truck (box + cab roof) or bus (tall box, window band), rear view."""
    y, inst = v.row(u), c.instance(cls)
    if cls == TRUCK:
        wm, hm = rng.uniform(2.3, 2.6) * scale, rng.uniform(3.0, 3.8) * scale
    else:
        wm, hm = 2.55 * scale, rng.uniform(3.0, 3.3) * scale
    half = v.px(u, wm / 2)
    c.rect(y - v.px(u, hm), y - v.px(u, 0.3), x - half, x + half, inst)
    dark = c.instance(cls, DARK)
    for sx in (-1, 1):
        c.rect(y - v.px(u, 0.45), y, x + sx * half * 0.75 - v.px(u, 0.2), x + sx * half * 0.75 + v.px(u, 0.2), dark)
    if cls == BUS:
        c.rect(
            y - v.px(u, hm * 0.85),
            y - v.px(u, hm * 0.5),
            x - half * 0.85,
            x + half * 0.85,
            c.instance(BUS, GLASS, like=inst),
        )
    else:
        c.rect(
            y - v.px(u, hm * 0.95), y - v.px(u, hm * 0.35), x - half * 0.9, x - half * 0.86, c.instance(TRUCK, DARK)
        )  # door seam
        c.rect(y - v.px(u, hm * 0.95), y - v.px(u, hm * 0.35), x + half * 0.86, x + half * 0.9, c.instance(TRUCK, DARK))


def _train(c: Canvas, v: View, u: float, rng: np.random.Generator) -> None:
    """A tram crossing the road: long box at fixed closeness with a window band."""
    y, length = v.row(u), v.px(u, rng.uniform(15, 30))
    x0 = v.vx + rng.uniform(-0.9, 0.1) * length
    inst = c.instance(TRAIN)
    c.rect(y - v.px(u, 3.4), y - v.px(u, 0.2), x0, x0 + length, inst)
    glass = c.instance(TRAIN, GLASS, like=inst)
    for k in np.arange(0.03, 0.97, 0.12):
        c.rect(y - v.px(u, 2.7), y - v.px(u, 1.6), x0 + length * k, x0 + length * (k + 0.08), glass)
    c.rect(y - v.px(u, 0.2), y, x0, x0 + length, c.instance(TRAIN, DARK))


def _person(
    c: Canvas,
    v: View,
    u: float,
    x: float,
    rng: np.random.Generator,
    scale: float,
    cls: int = PERSON,
    seated: bool = False,
) -> None:
    """Legs, torso, arms, head; `seated` (a rider) draws no legs below the saddle and lifts the body."""
    hm = rng.uniform(1.55, 1.9) * scale
    y = v.row(u) - (v.px(u, 0.75) if seated else 0)
    top = c.instance(cls)
    legs = c.instance(cls, DARK)
    half = v.px(u, 0.22 * scale)
    if seated:
        c.rect(y - v.px(u, hm * 0.1), y + v.px(u, 0.35), x - half * 0.8, x + half * 0.8, legs)
    else:
        gap = v.px(u, 0.04)
        c.rect(y - v.px(u, hm * 0.47), y, x - half, x - gap, legs)
        c.rect(y - v.px(u, hm * 0.47), y, x + gap, x + half, legs)
    lean = v.px(u, 0.15) if seated else 0.0
    c.polygon(
        [
            (x - half * 1.05, y - v.px(u, hm * 0.47)),
            (x + half * 1.05, y - v.px(u, hm * 0.47)),
            (x + half * 1.1 + lean, y - v.px(u, hm * 0.82)),
            (x - half * 1.1 + lean, y - v.px(u, hm * 0.82)),
        ],
        top,
    )
    c.ellipse(y - v.px(u, hm * 0.9), x + lean, v.px(u, hm * 0.075), v.px(u, hm * 0.06), c.instance(cls, SKIN))


def _two_wheeler(
    c: Canvas, v: View, u: float, x: float, rng: np.random.Generator, cls: int, rider: bool, scale: float
) -> None:
    """Side view bicycle (rings + frame) or motorcycle (solid wheels + body), optionally with a rider."""
    y, r = v.row(u), v.px(u, 0.34 * scale)
    gap = v.px(u, 0.55 * scale)
    inst = c.instance(cls)
    dark = c.instance(cls, DARK)
    for sx in (-1, 1):
        c.ellipse(y - r, x + sx * gap, r, r, dark, inner=0.7 if cls == BICYCLE else 0.0)
    thick = v.px(u, 0.05 if cls == BICYCLE else 0.2)
    c.polygon(
        [
            (x - gap, y - r),
            (x - gap + thick, y - r - thick),
            (x + thick, y - r * 2.2),
            (x + gap + thick, y - r),
            (x + gap, y - r + thick),
            (x, y - r * 2.2 + thick),
        ],
        inst,
    )
    if cls == MOTORCYCLE:
        c.ellipse(y - r * 1.9, x, r * 0.7, gap * 0.8, inst)
    if rider:
        _person(c, v, u, x, rng, scale, cls=RIDER, seated=True)


def _movers(c: Canvas, v: View, rng: np.random.Generator, s: SceneStats, lines: dict) -> None:
    """Vehicles and people, painted far to near."""
    jobs = []

    def on_road(u: float) -> float:
        return v.along(lines["road_l"] + (lines["road_r"] - lines["road_l"]) * rng.uniform(0.12, 0.88), u)

    def on_walk(u: float) -> float:
        curb, walk = (lines["road_l"], lines["walk_l"]) if rng.random() < 0.5 else (lines["road_r"], lines["walk_r"])
        return v.along(curb + (walk - curb) * rng.uniform(0.1, 0.6), u)

    vs, ps = s.vehicle_scale, s.person_scale
    for u in _u_sorted(rng, rng.poisson(s.cars), 0.08, 0.9):
        jobs.append((u, _car, (on_road(u), rng, vs)))
    for u in _u_sorted(rng, rng.poisson(s.parked_cars), 0.1, 0.6):
        side = lines["road_l"] if rng.random() < 0.5 else lines["road_r"]
        jobs.append((u, _parked_car, (side + (v.vx - side) * 0.02, rng, vs)))
    for cls, n in ((TRUCK, s.trucks), (BUS, s.buses)):
        for u in _u_sorted(rng, rng.poisson(n), 0.08, 0.7):
            jobs.append((u, _big_vehicle, (on_road(u), rng, cls, vs)))
    if rng.random() < s.train_prob:
        jobs.append((rng.uniform(0.12, 0.35), _train, (rng,)))
    for u in _u_sorted(rng, rng.poisson(s.persons), 0.1, 1.0):
        jobs.append((u, _person, (on_road(u) if rng.random() < 0.15 else on_walk(u), rng, ps)))
    for u in _u_sorted(rng, rng.poisson(s.riders), 0.1, 0.9):
        cls = BICYCLE if rng.random() < 0.6 else MOTORCYCLE
        jobs.append((u, _two_wheeler, (on_road(u), rng, cls, True, ps)))
    for cls, n in ((BICYCLE, s.bicycles), (MOTORCYCLE, s.motorcycles)):
        for u in _u_sorted(rng, rng.poisson(n), 0.1, 0.8):
            jobs.append((u, _two_wheeler, (on_walk(u), rng, cls, False, ps)))
    for u, fn, args in sorted(jobs, key=lambda job: job[0]):
        fn(c, v, u, *args)


def layout(rng: np.random.Generator, stats: SceneStats, h: int, w: int) -> Canvas:
    """Draw one scene's label and instance maps."""
    c = Canvas(h, w, rng)
    v = View(h, w, hz=rng.uniform(*stats.horizon) * h, vx=w * (0.5 + rng.uniform(-0.12, 0.12)))
    _background(c, v, rng)
    lines = _ground(c, v, rng, stats)
    _roadside(c, v, rng, stats, lines)
    _poles(c, v, rng, stats, lines)
    _movers(c, v, rng, stats, lines)
    return c
