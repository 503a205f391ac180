"""Namespace patterns and subscription filters (NATS semantics plus the in-token prefix form)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether_django.events import Event
from aether_django.patterns import (
    InvalidPatternError,
    SubscriptionFilter,
    matches,
    overlaps,
    validate_pattern,
)

TOKEN = st.text(alphabet="abcxyz019-_", min_size=1, max_size=6)
NAMES = st.lists(TOKEN, min_size=1, max_size=4).map(".".join)


@given(NAMES)
def test_a_name_matches_itself_and_full_wildcards(name):
    assert matches(name, name)
    assert matches(">", name)
    assert matches(".".join("*" for _ in name.split(".")), name)


@given(NAMES, NAMES)
def test_exact_patterns_match_only_their_name(pattern, name):
    assert matches(pattern, name) == (pattern == name)


@given(NAMES)
def test_star_matches_exactly_one_token(name):
    tokens = name.split(".")
    assert matches(".".join([*tokens[:-1], "*"]), name)
    assert not matches(name + ".*", name)
    assert matches(name + ".*", name + ".x")
    assert not matches(name + ".*", name + ".x.y")


@given(NAMES)
def test_greater_than_matches_one_or_more_trailing_tokens(name):
    assert not matches(name + ".>", name)
    assert matches(name + ".>", name + ".a")
    assert matches(name + ".>", name + ".a.b")


@given(TOKEN, TOKEN)
def test_in_token_prefix(prefix, rest):
    assert matches(prefix + "*", prefix + rest)
    assert matches(prefix + "*", prefix)
    assert not matches(prefix + "*", prefix + rest + ".more")


@given(NAMES)
def test_generated_patterns_are_valid(name):
    assert validate_pattern(name) == name
    assert validate_pattern(name + ".>")


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [
        ("orders", True),
        ("order*", True),
        ("acme.*", True),
        ("acme.>", True),
        (">", True),
        ("*", True),
        ("a.>.b", False),
        ("a..b", False),
        ("", False),
        ("a b", False),
        ("or*ders", False),
        ("*x", False),
        ("ü", False),
    ],
)
def test_validate_pattern(pattern, ok):
    if ok:
        assert validate_pattern(pattern) == pattern
    else:
        with pytest.raises(InvalidPatternError):
            validate_pattern(pattern)


def test_a_pattern_is_held_to_the_rules_every_name_starts_with():
    from aether_django.patterns import MAX_PATTERN_LENGTH

    assert validate_pattern("a" * MAX_PATTERN_LENGTH)
    too_long = "a" * (MAX_PATTERN_LENGTH + 1)
    with pytest.raises(InvalidPatternError, match=f"at most {MAX_PATTERN_LENGTH} allowed"):
        validate_pattern(too_long)
    with pytest.raises(InvalidPatternError, match="must be a string, not int"):
        validate_pattern(7)
    with pytest.raises(InvalidPatternError, match="actor pattern must not be empty"):
        validate_pattern("", what="actor pattern")


def test_seed_patterns():
    assert matches("orders", "orders")
    assert matches("order*", "orders")
    assert not matches("orders", "orders-eu")
    assert not matches("order*", "invoices")


def ev(event_type="OrderPlaced", actor_id="order-customer-123"):
    return Event(event_type=event_type, actor_id=actor_id, version=1)


def test_filter_by_event_type():
    f = SubscriptionFilter(event_types=["OrderPlaced"])
    assert f.matches(ev("OrderPlaced"))
    assert not f.matches(ev("OrderShipped"))


@pytest.mark.parametrize(
    ("pattern", "actor", "expected"),
    [
        ("order-customer-123", "order-customer-123", True),
        ("order-customer-123", "order-customer-1234", False),
        ("order-*", "order-customer-123", True),
        ("order-*", "invoice-1", False),
        ("eu.*", "eu.order-1", True),
        ("eu.>", "eu.orders.1", True),
        ("eu.*", "us.order-1", False),
        ("a b", "a b", True),
    ],
)
def test_filter_by_actor_pattern(pattern, actor, expected):
    assert SubscriptionFilter(actor_pattern=pattern).matches(ev(actor_id=actor)) is expected


def test_filter_arguments_are_checked():
    with pytest.raises(InvalidPatternError, match="not a string"):
        SubscriptionFilter(event_types="OrderPlaced")
    with pytest.raises(InvalidPatternError):
        SubscriptionFilter(actor_pattern="")
    assert SubscriptionFilter().matches(ev())


@pytest.mark.parametrize("pattern", ["orders\n", "order*\n"])
def test_a_trailing_newline_is_not_a_valid_pattern(pattern):
    with pytest.raises(InvalidPatternError):
        validate_pattern(pattern)


OVERLAP_PATTERNS = [
    "a",
    "b",
    "a.b",
    "a.c",
    "a.*",
    "*",
    "*.b",
    "a.>",
    ">",
    "b.>",
    "a*",
    "ab*",
    "abc",
    "x.*.z",
    "x.y.>",
    "a.b.c",
    "a.*.*",
    "*.>",
]
OVERLAP_NAMES = [
    "a",
    "b",
    "ab",
    "abc",
    "abd",
    "a.b",
    "a.c",
    "ab.b",
    "x.y.z",
    "x.q.z",
    "a.b.c",
    "a.b.c.d",
    "x.y",
    "b.b",
    "a.bb",
    "q",
]


@pytest.mark.parametrize("a", OVERLAP_PATTERNS)
@pytest.mark.parametrize("b", OVERLAP_PATTERNS)
def test_overlaps_agrees_with_matching_some_name(a, b):
    """Two patterns overlap exactly when some namespace matches both (checked on a set
    of names that has one for every pair that overlaps)."""
    some = any(matches(a, name) and matches(b, name) for name in OVERLAP_NAMES)
    assert overlaps(a, b) == some == overlaps(b, a)
