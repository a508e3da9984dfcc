"""The procedurally generated test-bed world: deterministic, complete, and with words to read."""

from collections import Counter

import numpy as np
import pytest

from zocli.data import testbed


def test_same_seed_draws_identical_images_and_captions():
    a = testbed.render(37, "benchmark", (0, 1, 37, 4))
    b = testbed.render(37, "benchmark", (0, 1, 37, 4))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, testbed.render(37, "benchmark", (0, 1, 37, 5)))
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert [testbed.caption(5, rng_a) for _ in range(8)] == [testbed.caption(5, rng_b) for _ in range(8)]


def test_an_image_depends_on_its_class_and_index_only():
    labels = np.array([3, 3, 8, 3])
    alone = list(testbed.images(np.array([3, 3, 3]), "benchmark", 0, "train"))
    mixed = list(testbed.images(labels, "benchmark", 0, "train"))
    assert all(np.array_equal(x, y) for x, y in zip(alone, [mixed[0], mixed[1], mixed[3]]))


def test_class_names_are_all_colour_shape_compositions():
    names = testbed.class_names()
    assert len(names) == len(set(names)) == 100
    assert names[0] == "red circle" and names[99] == "brown moon"
    colours, shapes = zip(*(n.split(" ") for n in names))
    assert set(colours) == set(testbed.COLOURS) and set(shapes) == set(testbed.SHAPES)


def test_pretraining_sees_every_word_but_only_half_the_pairs():
    seen = testbed.pretrain_classes()
    assert len(seen) == 50
    names = [testbed.class_names()[c].split(" ") for c in seen]
    assert Counter(c for c, _ in names) == dict.fromkeys(testbed.COLOURS, 5)
    assert Counter(s for _, s in names) == dict.fromkeys(testbed.SHAPES, 5)


@pytest.mark.parametrize("style", ["pretrain", "benchmark"])
def test_every_class_draws_a_visible_glyph(style):
    for label in range(100):
        image = testbed.render(label, style, label).astype(float)
        assert image.std() > 10  # something is drawn on the background


def test_the_benchmark_style_is_a_shifted_domain():
    # Same class: the benchmark's colour cast moves the glyph's colour away from its name's anchor.
    red = np.array(testbed.COLOURS["red"], dtype=float)
    cast = testbed.COLOUR_CAST @ red
    assert np.linalg.norm(cast - red) > 80


def test_unknown_style_is_an_error():
    with pytest.raises(ValueError, match="unknown style"):
        testbed.render(0, "cartoon", 0)
