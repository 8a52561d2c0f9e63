"""`@job`'s flow-control options, checked when the job type is defined (pure: no I/O)."""

from __future__ import annotations

import pytest

from worker.runtime.flow_rules import MAX_KEY_LENGTH, FlowRules, KeyTemplate, parse_rate
from worker.runtime.registry import job


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("10/s", 0.1),
        ("5/sec", 0.2),
        ("120/m", 0.5),
        ("1/min", 60.0),
        ("2/h", 1800.0),
        ("0.5/s", 2.0),
        (" 4 / hour ", 900.0),
    ],
)
def test_rates_become_the_interval_between_two_starts(text: str, interval: float) -> None:
    assert parse_rate(text) == pytest.approx(interval)


@pytest.mark.parametrize("text", ["10", "10/d", "/s", "ten/s", "0/s", "-1/s", "10/s/s", ""])
def test_a_rate_that_cannot_work_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_a_key_is_one_argument_or_a_template_over_several() -> None:
    one = KeyTemplate.parse("account", ["account", "seconds"], what="concurrency_key")
    assert one.render({"account": "a-7", "seconds": 1}) == "a-7"
    two = KeyTemplate.parse("{account}/{region}", ["account", "region"], what="concurrency_key")
    assert two.names == ("account", "region")
    assert two.render({"account": 7, "region": "eu"}) == "7/eu"
    assert two.render({"account": 7}) == "7/"  # an optional argument left out


@pytest.mark.parametrize("text", ["nope", "{account}/{nope}", "{}", "", "  "])
def test_a_key_naming_no_argument_of_the_function_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        KeyTemplate.parse(text, ["account"], what="concurrency_key")


def test_keys_are_the_tenants_own_and_rates_the_types() -> None:
    rules = FlowRules.declare(
        ["account"], concurrency_key="account", concurrency_limit=None, rate_limit="5/s", rate_limit_key="account"
    )
    assert rules is not None and rules.concurrency_limit == 1  # the default limit
    assert rules.keys("billing.charge", "t1", {"account": "7"}) == ("t1|billing.charge|7", "billing.charge|7")
    assert (
        rules.keys("billing.charge", "t2", {"account": "7"})[0]
        != rules.keys("billing.charge", "t1", {"account": "7"})[0]
    )
    plain = FlowRules.declare([], concurrency_key=None, concurrency_limit=None, rate_limit="5/s", rate_limit_key=None)
    assert plain is not None and plain.keys("x.y", "t1", {}) == (None, "x.y")  # one bucket across tenants


def test_a_rendered_key_too_long_is_refused() -> None:
    rules = FlowRules.declare(["a"], concurrency_key="a", concurrency_limit=2, rate_limit=None, rate_limit_key=None)
    assert rules is not None
    with pytest.raises(ValueError):
        rules.keys("x.y", "t", {"a": "k" * (MAX_KEY_LENGTH + 1)})


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency_limit": 2},  # a limit without a key
        {"rate_limit_key": "account"},  # a key without a rate
        {"concurrency_key": "account", "concurrency_limit": 0},
        {"concurrency_key": "nope"},
        {"rate_limit": "fast"},
    ],
)
def test_job_refuses_options_that_cannot_work(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):

        @job("tests.flow_rules_refused", **options)  # type: ignore[arg-type]
        def refused(account: str) -> None: ...


def test_no_options_no_rules() -> None:
    assert (
        FlowRules.declare(["a"], concurrency_key=None, concurrency_limit=None, rate_limit=None, rate_limit_key=None)
        is None
    )
