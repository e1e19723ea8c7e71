"""The scene renderer: projection, colour, occlusion, shadows, honest labels, determinism."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest

from iclevr import labels as L
from iclevr.data.world import scene as S
from iclevr.data.world.geometry import CAMERA, SceneObject
from iclevr.data.world.render import COLOUR_RGB, KEY_LIGHT, object_ids, render, visibility
from iclevr.data.world.scene import render_examples

W, H = 128, 96


def pixel_of(point, size=(W, H)) -> tuple[int, int]:
    """(row, col) of a world point in a frame of `size`."""
    u, v = CAMERA.project(np.array([point], dtype=float))[0]
    return int(v * size[1]), int(u * size[0])


def hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=float) / 255))[0]


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1 - d)


@pytest.mark.parametrize("colour", ["red", "blue", "green", "cyan", "yellow", "purple"])
def test_sphere_projects_to_expected_pixel_with_its_hue(colour):
    ball = SceneObject("sphere", colour, "rubber", "large", x=1.0, y=0.5)
    img = render([ball], (W, H))
    row, col = pixel_of((ball.x, ball.y, ball.r))
    assert object_ids([ball], (W, H))[row, col] == 0
    assert object_ids([ball], (W, H))[row, min(col + 25, W - 1)] == -1  # well right of the ball: floor
    assert hue_distance(hue(img[row, col]), hue(COLOUR_RGB[colour])) < 0.05
    floor = img[5, 5].astype(int)
    assert abs(floor[0] - floor[2]) < 12  # the floor is grey


def test_gray_object_stays_distinct_from_the_floor():
    cube = SceneObject("cube", "gray", "rubber", "large", x=0.0, y=0.0)
    img = render([cube], (W, H)).astype(int)
    row, col = pixel_of((0.0, -cube.r * 0.8, cube.r * 0.8))  # the front face
    assert img[row, col].mean() < img[H - 5, 5].mean() - 25


def test_nearer_object_wins_whatever_the_order():
    near = SceneObject("sphere", "red", "rubber", "small", x=0.0, y=-1.6)
    far = SceneObject("cylinder", "blue", "rubber", "large", x=0.0, y=0.0)
    row, col = pixel_of((near.x, near.y, 1.5 * near.r))
    for objects, near_id in (([near, far], 0), ([far, near], 1)):
        assert object_ids(objects, (W, H))[row, col] == near_id
        assert hue_distance(hue(render(objects, (W, H))[row, col]), hue(COLOUR_RGB["red"])) < 0.05
    assert object_ids([far], (W, H))[row, col] == 0  # the far cube really is behind the sphere


def test_shadow_darkens_the_floor_away_from_the_light():
    tall = SceneObject("cylinder", "yellow", "rubber", "large", x=0.0, y=0.0)
    towards = np.array([KEY_LIGHT[0], KEY_LIGHT[1]]) / np.hypot(KEY_LIGHT[0], KEY_LIGHT[1])
    away, lit = (tuple(-2.0 * towards) + (0.0,)), (tuple(2.0 * towards) + (0.0,))
    ids = object_ids([tall], (W, H))
    (ra, ca), (rl, cl) = pixel_of(away), pixel_of(lit)
    assert ids[ra, ca] == -1 and ids[rl, cl] == -1  # both points show the floor
    img = render([tall], (W, H)).astype(float)
    empty = render([], (W, H)).astype(float)
    assert img[ra, ca].mean() < 0.7 * empty[ra, ca].mean()  # in the shadow
    assert img[rl, cl].mean() == pytest.approx(empty[rl, cl].mean(), abs=2)  # untouched on the light side


def test_metal_has_a_highlight_rubber_does_not():
    rubber = render([SceneObject("sphere", "blue", "rubber", "large")], (W, H))
    metal = render([SceneObject("sphere", "blue", "metal", "large")], (W, H))

    def whitest(img):  # the brightest pixel in its darkest channel: a white highlight scores high
        return int(img.min(axis=-1).max())

    assert whitest(metal) > 200 and whitest(metal) > whitest(rubber) + 40


def test_sizes_and_shapes_differ_in_silhouette():
    areas = {
        (shape, size): visibility([SceneObject(shape, "red", "rubber", size)])[1][0]
        for shape in L.SHAPES
        for size in ("large", "small")
    }
    for shape in L.SHAPES:
        assert areas[(shape, "large")] > 1.6 * areas[(shape, "small")]


def test_320x240_and_64x64_show_the_same_scene():
    objects = [
        SceneObject("cube", "green", "metal", "large", 1.0, 0.0, 0.4),
        SceneObject("sphere", "purple", "rubber", "small", -1.2, 1.0),
    ]
    big = render(objects, (320, 240))
    assert big.shape == (240, 320, 3) and big.dtype == np.uint8
    from PIL import Image

    squashed = np.asarray(Image.fromarray(big).resize((64, 64), Image.BILINEAR), dtype=float)
    direct = render(objects, (64, 64)).astype(float)  # non-square pixels: the frame squashed like the loader
    assert np.abs(squashed - direct).mean() < 6


def test_honest_scenes_on_a_few_hundred_random_placements():
    rng = np.random.default_rng(123)
    for _ in range(150):
        objects = S.place_sequence(rng, S.random_labels(rng, int(rng.integers(1, 6))))
        for k in range(1, len(objects) + 1):
            prefix = objects[:k]
            ids = object_ids(prefix, S.CHECK_SIZE)  # an independent count from the id buffer
            for j, obj in enumerate(prefix):
                alone = (object_ids([obj], S.CHECK_SIZE) == 0).sum()
                shown = (ids == j).sum()
                assert shown >= S.MIN_VISIBLE_PIXELS and shown >= S.MIN_VISIBLE_FRACTION * alone
                assert S.in_frame(obj)
        for a in range(len(objects)):
            for b in range(a):
                gap = math.hypot(objects[a].x - objects[b].x, objects[a].y - objects[b].y)
                assert gap >= objects[a].footprint + objects[b].footprint  # no interpenetration


def test_a_hidden_placement_is_rejected():
    front = SceneObject("cylinder", "red", "rubber", "large", x=0.0, y=-1.5)
    behind = SceneObject("sphere", "blue", "rubber", "small", x=0.0, y=0.3)
    assert S.honest([front])
    assert not S.honest([front, behind])  # mostly hidden behind the cylinder
    assert not S.honest([front, SceneObject("cube", "blue", "rubber", "large", x=0.5, y=-1.2)])  # overlaps
    assert not S.honest([SceneObject("cube", "blue", "rubber", "large", x=9.0, y=0.0)])  # out of frame


def test_render_examples_is_deterministic_and_labels_are_valid():
    images, names = render_examples(6, seed=3, min_objects=2, max_objects=4)
    again, names2 = render_examples(6, seed=3, min_objects=2, max_objects=4)
    assert images.shape == (6, 48, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and names == names2
    for n in names:
        assert 2 <= len(n) <= 4 and len(set(n)) == len(n) and all(x in L.LABELS for x in n)
    other, _ = render_examples(6, seed=4, min_objects=2, max_objects=4)
    assert not np.array_equal(images, other)
    first, _ = render_examples(2, seed=3, min_objects=2, max_objects=4)
    assert np.array_equal(first, images[:2])  # example i depends on (seed, i) only
