"""Label vocabulary: order, parsing, round-trips and error messages."""

import pytest
import torch

from iclevr import labels as L
from iclevr.errors import UserError


def test_vocabulary_order_matches_the_course_kit():
    assert len(L.LABELS) == L.NUM_CLASSES == 24
    assert L.LABEL_TO_INDEX["gray cube"] == 0
    assert L.LABEL_TO_INDEX["yellow cube"] == 7
    assert L.LABEL_TO_INDEX["gray sphere"] == 8
    assert L.LABEL_TO_INDEX["cyan cylinder"] == 22
    assert L.LABEL_TO_INDEX["yellow cylinder"] == 23


@pytest.mark.parametrize("name", L.LABELS)
def test_every_label_round_trips(name):
    y = L.encode(name)
    assert y.shape == (24,) and y.dtype == torch.float32 and y.sum() == 1
    assert L.decode(y) == [name]
    assert L.decode(L.encode(name.upper().replace(" ", "   "))) == [name]


def test_comma_string_json_and_list_forms_agree():
    a = L.encode("red sphere, Cyan Cylinder,cyan cube")
    b = L.encode('["red sphere", "cyan cylinder", "cyan cube"]')
    c = L.encode(["Red Sphere", "cyan cylinder", " cyan  cube "])
    assert torch.equal(a, b) and torch.equal(b, c)
    assert L.decode(a) == ["cyan cube", "red sphere", "cyan cylinder"]  # vocabulary order
    assert L.encode_many([["red sphere"], ["gray cube", "yellow cylinder"]]).sum(1).tolist() == [1, 2]


def test_unknown_label_suggests_closest():
    with pytest.raises(UserError) as e:
        L.parse_condition("pink sphere")
    msg = str(e.value)
    assert '"pink sphere"' in msg and 'did you mean "purple sphere"' in msg and "valid:" in msg
    with pytest.raises(UserError, match='did you mean "red sphere"'):
        L.parse_condition("red sphre, blue cube")


def test_duplicate_and_empty_conditions():
    with pytest.raises(UserError, match='duplicate label "red sphere"'):
        L.parse_condition("red sphere, Red Sphere")
    for empty in ["", " , ", "[]"]:
        with pytest.raises(UserError, match="empty condition"):
            L.parse_condition(empty)
    with pytest.raises(UserError, match="not valid JSON"):
        L.parse_condition('["red sphere"')
    with pytest.raises(UserError, match="list of strings"):
        L.parse_condition("[1, 2]")


def test_objects_mapping_check():
    L.check_objects_mapping(dict(L.LABEL_TO_INDEX))
    swapped = dict(L.LABEL_TO_INDEX, **{"gray cube": 1, "red cube": 0})
    with pytest.raises(UserError, match="disagrees with the built-in 24-class order"):
        L.check_objects_mapping(swapped)
    with pytest.raises(UserError, match='unknown "pink cube"'):
        L.check_objects_mapping(dict(L.LABEL_TO_INDEX, **{"pink cube": 24}))


def test_course_constants():
    assert L.SPLITS == ("test", "new_test")
    assert L.decode(L.encode(list(L.TRACE_LABELS))) == ["cyan cube", "red sphere", "cyan cylinder"]
