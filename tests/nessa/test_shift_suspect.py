"""The suspect-claim rule of `nessa eval-shift --methods suspect-...` (issue #12): a claim is
rejected when the audio matches another enrolled profile better than the claimed one (synthetic
LLRs and galleries; no models run)."""
from __future__ import annotations

import numpy as np
import pytest

from nessa.lab.evaluation import shift_suspect as rule

THRESHOLDS = {"far_1pct": 0.1, "far_0.1pct": 3.0}


@pytest.fixture
def gallery():
    """3 profiles (speakers a, b, c) in gallery 0, a 4th (d) in gallery 1; tests by a, b, x."""
    profile_speakers = np.array(["a", "b", "c", "d"])
    galleries = np.array([0, 0, 0, 1])
    test_speakers = np.array(["a", "b", "x"])
    llr_full = np.array([[6.0, -5.0, -4.0, 9.0],    # a: genuine for profile 0; gallery 1's d scores high
                         [5.0, 8.0, -3.0, -1.0],    # b: an impostor claiming a, b's own profile scores higher
                         [4.0, -6.0, 3.5, -2.0]])   # x (unenrolled): claims a, c scores close
    return llr_full, galleries, profile_speakers, test_speakers


def test_the_impostors_own_profile_exposes_the_claim_in_a_closed_set(gallery):
    llr_full, galleries, profiles, tests = gallery
    trials = np.array([[0, 0], [1, 0], [2, 0]])
    closed = rule.other_max(llr_full, trials, galleries, profiles, tests, closed=True)
    # other galleries never compete (d's 9.0 is ignored for the genuine claim)
    assert closed.tolist() == [-4.0, 8.0, 3.5]
    llr = llr_full[trials[:, 0], trials[:, 1]]
    flagged = rule.suspect(llr, closed, 0.0, THRESHOLDS["far_0.1pct"])
    assert flagged.tolist() == [False, True, False]
    assert rule.own_enrolled(trials, galleries, profiles, tests).tolist() == [True, True, False]


def test_open_set_leaves_the_impostors_own_profile_out(gallery):
    llr_full, galleries, profiles, tests = gallery
    trials = np.array([[1, 0]])
    assert rule.other_max(llr_full, trials, galleries, profiles, tests, closed=False).tolist() == [-3.0]


def test_figures_count_flagged_genuine_claims_and_stopped_impostors(gallery):
    llr_full, galleries, profiles, tests = gallery
    trials = np.array([[0, 0], [1, 0], [2, 0], [1, 1]])
    is_target = np.array([True, False, False, True])
    llr = llr_full[trials[:, 0], trials[:, 1]]
    other = rule.other_max(llr_full, trials, galleries, profiles, tests, closed=True)
    row = rule.suspect_figures(llr, other, is_target, THRESHOLDS, margin=-1.0)
    # margin -1: x's claim (4.0 vs c's 3.5) is flagged too; b's own claim (8.0 vs a's 5.0) is not
    assert row["far@far_0.1pct"] == 0.0 and row["frr@far_0.1pct"] == 0.0
    assert row["stopped@far_0.1pct"] == 100.0 and row["suspect_frr@far_0.1pct"] == 0.0
    loose = rule.suspect_figures(llr, other, is_target, THRESHOLDS, margin=1.0)
    assert loose["far@far_0.1pct"] == 50.0 and loose["fa@far_0.1pct"] == 1
    # the at-threshold rule: the genuine b claim is rejected because a (5.0) also passes 3.0
    at = rule.suspect_figures(llr, other, is_target, THRESHOLDS, margin=None)
    assert at["suspect_frr@far_0.1pct"] == 50.0 and at["far@far_0.1pct"] == 0.0


def test_rule_names_parse():
    assert rule.parse_rule("suspect-closed-m0") == (True, 0.0)
    assert rule.parse_rule("suspect-open-m-1.5") == (False, -1.5)
    assert rule.parse_rule("suspect-open-t") == (False, None)
    assert rule.parse_rule("suspect-m0") is None
    assert all(rule.parse_rule(name) for name in rule.rule_names())
