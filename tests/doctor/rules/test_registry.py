"""The live rules' registry: every rule once, in causal order, each with its manual."""

from __future__ import annotations

import pytest

from quad_doctor.checks import ALL_CHECKS
from quad_doctor.docs import HEADINGS
from quad_doctor.rules import LIVE_ONLY, LIVE_RULES, live_only_rule, live_rule

SHARED = [rule for rule in LIVE_RULES if rule not in LIVE_ONLY]


def test_the_registry_lists_the_nine_rules_in_causal_order():
    assert [rule.name for rule in LIVE_RULES] == [
        "sampler-class-mix",
        "loss-bounds",
        "lr-schedule",
        "gradient-flow",
        "divergence",
        "non-finite",
        "embedding-collapse",
        "loss-pinned",
        "plateau",
    ]
    orders = [rule.order for rule in LIVE_RULES]
    assert orders == sorted(set(orders))


def test_a_rule_named_after_a_check_takes_its_place_and_the_others_stand_alone():
    checks = {check.name: check.order for check in ALL_CHECKS}
    assert [rule.name for rule in SHARED] == [
        "sampler-class-mix",
        "loss-bounds",
        "lr-schedule",
        "gradient-flow",
    ]
    assert all(rule.order == checks[rule.name] for rule in SHARED)
    assert not {rule.name for rule in LIVE_ONLY} & checks.keys()
    assert live_rule("loss-pinned") is live_only_rule("loss-pinned") is not None
    assert (
        live_rule("sampler-class-mix") is not None and live_only_rule("sampler-class-mix") is None
    )
    assert live_rule("data-integrity") is None and live_only_rule("no-such-rule") is None


@pytest.mark.parametrize("rule", LIVE_RULES, ids=lambda rule: rule.name)
def test_every_rule_documents_the_four_headings(rule):
    doc = rule.doc()
    positions = [doc.find(heading) for heading in HEADINGS]
    assert -1 not in positions and positions == sorted(positions)


@pytest.mark.parametrize("rule", SHARED, ids=lambda rule: rule.name)
def test_a_rule_named_after_a_check_says_how_it_differs_and_points_to_it(rule):
    doc = rule.doc()
    assert "How it differs from the pre-flight check:" in doc
    assert f"`quad-doctor explain {rule.name}`" in doc
