"""The benchmark scorer on its own: wrong answers score 0, right ones 1, and
F1 over pairs matches a hand-worked example."""
from __future__ import annotations

import pytest

from rlm_ray.bench.scoring import FAMILY_METRIC, score

# (family, expected, a right answer as a model might format it, a wrong answer)
CASES = [
    ("needle", "48213907", " 48213907 ", "48213970"),
    ("label-count", "85", "85", "86"),
    ("label-top", "numeric", "Numeric", "entity"),
    ("params", "4", "4.", "40"),
    ("suffix", "2", "2", "12"),
    ("define", "tkinter/filedialog.py", "tkinter/filedialog.py", "tkinter/dialog.py"),
    ("subclass", "LoadFileDialog, SaveFileDialog", "SaveFileDialog,LoadFileDialog", "FileDialog"),
    ("label-pairs", "u001-u002, u001-u003", "u001-u003, u001-u002", "u002-u003"),
    ("delegate", "a.py=2, b.py=0", "a.py=2, b.py=0", "a.py=3, b.py=1"),
]


def test_every_family_has_a_metric():
    assert {c[0] for c in CASES} == set(FAMILY_METRIC)


@pytest.mark.parametrize("family,expected,right,wrong", CASES)
def test_known_right_scores_one_and_known_wrong_scores_zero(family, expected, right, wrong):
    assert score(family, right, expected).score == 1.0
    assert score(family, expected, expected).exact is True
    assert score(family, wrong, expected).score == 0.0
    assert score(family, None, expected).score == 0.0
    assert score(family, "", expected).score == 0.0


def test_f1_on_pairs_hand_worked():
    expected = "u1-u2, u1-u3, u2-u3, u3-u4"      # 4 true pairs
    predicted = "u1-u2, u2-u3, u2-u4"            # 3 predicted, 2 of them true
    # precision = 2/3, recall = 2/4 = 1/2
    # F1 = 2PR / (P + R) = 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
    result = score("label-pairs", predicted, expected)
    assert result.score == pytest.approx(4 / 7)
    assert result.exact is False


def test_scalar_families_give_no_partial_credit():
    assert score("label-count", "85 records", "85").score == 0.0
    assert score("needle", "48213907, 1", "48213907").score == 0.0
