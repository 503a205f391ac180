"""Naming rules: namespaces, actor ids, and the JetStream names derived from them."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether_django import names
from aether_django.errors import InvalidActorIdError, InvalidNamespaceError

TOKEN = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_"),
    min_size=1,
    max_size=12,
)
NAMESPACES = (
    st.lists(TOKEN, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda ns: len(ns) <= names.MAX_NAMESPACE_LENGTH)
    # Spellings that would share a stream with another name are refused (tested below).
    .filter(lambda ns: "__" not in ns and "_." not in ns and "._" not in ns)
)
ACTOR_IDS = st.text(min_size=1, max_size=names.MAX_ACTOR_ID_LENGTH).filter(str.isprintable)
SUBJECT_TOKEN = re.compile(r"^[^.*>\s]+$")
KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


@given(NAMESPACES)
def test_valid_namespaces_are_accepted(namespace):
    assert names.validate_namespace(namespace) == namespace


@given(NAMESPACES)
def test_stream_and_bucket_names_are_legal_jetstream_names(namespace):
    for name in (names.stream_name(namespace), names.snapshot_bucket(namespace)):
        assert re.match(r"^[A-Za-z0-9_-]+$", name)


def test_seed_stream_names():
    assert names.stream_name("tenant-a") == "tenant-a_events"
    assert names.stream_name("tenant-b") == "tenant-b_events"
    assert names.stream_name("acme.orders") == "acme__orders_events"


@pytest.mark.parametrize(
    ("namespace", "rule"),
    [
        ("", "empty"),
        ("a..b", "single dots"),
        (".a", "single dots"),
        ("a.", "single dots"),
        ("a b", "letters, digits"),
        ("orders*", "letters, digits"),
        ("a>", "letters, digits"),
        ("ü", "letters, digits"),
        ("x" * 101, "at most 100"),
        (None, "must be a string"),
        ("a__b", "two underscores"),
        ("a_.b", "underscore beside a dot"),
        ("a._b", "underscore beside a dot"),
    ],
)
def test_invalid_namespaces_say_which_rule_failed(namespace, rule):
    with pytest.raises(InvalidNamespaceError, match=rule):
        names.validate_namespace(namespace)


@given(NAMESPACES)
def test_different_valid_namespaces_have_different_stream_names(namespace):
    # The stream name gives the namespace back, so no two valid names share a stream.
    slug = names.stream_name(namespace).removesuffix("_events")
    assert slug.replace("__", ".") == namespace
    assert names.snapshot_bucket(namespace) == f"{slug}_snapshots"


def test_invalid_namespace_is_a_value_error():
    with pytest.raises(ValueError):
        names.validate_namespace("bad name")


@given(ACTOR_IDS)
def test_actor_tokens_are_reversible_subject_tokens_and_kv_keys(actor_id):
    token = names.actor_token(actor_id)
    assert SUBJECT_TOKEN.match(token)
    assert KV_KEY.match(token)
    assert names.actor_id_from_token(token) == actor_id


@given(ACTOR_IDS, ACTOR_IDS)
def test_actor_tokens_do_not_collide(a, b):
    if a != b:
        assert names.actor_token(a) != names.actor_token(b)


def test_safe_actor_ids_stay_readable():
    assert names.actor_token("order-123") == "order-123"
    assert names.actor_token("order 123").startswith("=")


@pytest.mark.parametrize(
    ("actor_id", "rule"),
    [("", "empty"), ("a\nb", "non-printable"), ("x" * 256, "at most 255"), (7, "string")],
)
def test_invalid_actor_ids_say_which_rule_failed(actor_id, rule):
    with pytest.raises(InvalidActorIdError, match=rule):
        names.validate_actor_id(actor_id)


@pytest.mark.parametrize("namespace", ["orders\n", "a.b\n"])
def test_a_trailing_newline_is_not_a_valid_namespace(namespace):
    with pytest.raises(InvalidNamespaceError):
        names.validate_namespace(namespace)


def test_a_trailing_newline_is_not_a_safe_actor_token():
    assert names.actor_token("order\n").startswith("=")
