"""What the report says to do about a failed check: one next step per check type, filled with the check's own
names."""
from __future__ import annotations

import re

import pytest

from medlake.quality import feeds, report
from medlake.quality.checks import MEDLAKE_TYPES, check_types


def every_type() -> set[str]:
    return {*check_types("5.4"), *check_types("5.3"), *MEDLAKE_TYPES, *feeds.SOURCE_TYPES, *feeds.TYPES}


def test_every_check_type_has_a_next_step_and_no_step_names_a_type_that_does_not_exist():
    steps = set(report._steps())
    assert every_type() - steps == set()
    assert steps - every_type() == set()  # a misspelt name would never be shown


@pytest.mark.parametrize("name", sorted(every_type()))
def test_each_step_fills_in_and_names_a_medlake_command_or_the_report(name):
    r = {"check_name": name, "check_id": f"id_of_{name}", "cdm_table": "measurement", "cdm_field": "unit_concept_id",
         "data_source": "h1-lis"}
    text = report.next_step(r)
    assert "{" not in text and "}" not in text
    assert "`medlake " in text or "in this report" in text or "ask" in text.lower(), text
    for cmd in re.findall(r"`medlake ([a-z-]+(?: [a-z-]+)?)", text):  # every command named is a real one
        assert cmd.split()[0] in {"init", "quality", "trace", "transform", "map", "empi", "vocab", "quarantine", "cdm"}


def test_a_site_check_type_without_a_step_has_none():
    assert report.next_step({"check_name": "site_rule", "check_id": "x", "cdm_table": "t", "cdm_field": None}) is None
