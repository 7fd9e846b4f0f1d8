"""`quad-doctor explain` and `quad-doctor checks` on the live rules."""

from __future__ import annotations

import re

import pytest
from cli_support import run

from quad_doctor.docs import HEADINGS
from quad_doctor.rules import LIVE_RULES, live_rule


@pytest.mark.parametrize(
    "name", ["divergence", "non-finite", "embedding-collapse", "loss-pinned", "plateau"]
)
def test_explain_prints_the_manual_of_each_live_only_rule(name):
    code, out, _ = run("explain", name)
    assert code == 0 and out.startswith(f"{name}  (live rule of quad-doctor train)")
    assert live_rule(name).doc()[:40] in out
    for heading in HEADINGS:
        assert heading in out
    assert "Live rule  (" not in out


@pytest.mark.parametrize(
    "name", ["sampler-class-mix", "loss-bounds", "lr-schedule", "gradient-flow"]
)
def test_explain_prints_the_check_then_the_live_rule_of_the_same_name(name):
    code, out, _ = run("explain", name)
    assert code == 0 and out.startswith(f"{name}  (phase ")
    check, live = out.split(f"Live rule  ({name} in quad-doctor train)")
    for heading in HEADINGS:
        assert heading in check and heading in live
    assert "How it differs from the pre-flight check:" in live
    assert live_rule(name).doc()[:40] in live


def test_checks_lists_the_live_rules_in_order_after_the_checks():
    code, out, _ = run("checks")
    assert code == 0
    _, rules = out.split("live rules of quad-doctor train")
    rows = [
        re.search(rf"^ *{rule.order} +{rule.name} ", rules, re.MULTILINE) for rule in LIVE_RULES
    ]
    assert all(rows)
    starts = [row.start() for row in rows]
    assert starts == sorted(starts)
