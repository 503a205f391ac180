"""Wire-package benchmark: the two parsers ``aether_django.nats`` keeps beside nats-py's.

Run from the repository root::

    .venv/bin/python -m bench.wire            # about 10 s
    .venv/bin/python -m bench.wire --quick    # a second or two

No server: both figures are CPU per call, each beside the code it replaces, timed in
alternating rounds:

1. a stored event's header block (the six headers a fetched event carries), parsed by
   ``aether_django.nats.client.parse_header_lines`` against nats-py's own
   ``Client._parse_header_lines``, which checks each name one character at a time;
2. a publish ack as nats-server writes it, read by ``aether_django.nats.api.parse_ack``
   (one regex on the bytes) against ``json.loads`` and the same two fields.
"""

from __future__ import annotations

import asyncio
import json
import timeit
from collections.abc import Callable

import nats.aio.client

from aether_django.nats.api import parse_ack
from aether_django.nats.client import parse_header_lines

from .common import Report, base_parser, interleaved, machine_info

HEADERS = (
    b"Nats-Stream: shop__orders_events\r\nNats-Subject: aether.events.shop.orders.order-7\r\n"
    b"Nats-Sequence: 18231\r\nNats-Time-Stamp: 2026-12-06T17:00:00.123456789Z\r\n"
    b"Nats-Msg-Id: 0f8e7d6c-5b4a-4938-8271-605f4e3d2c1b\r\nAether-Version: 42\r\n\r\n"
)
ACK = b'{"stream":"shop__orders_events","seq":18231}'


def nats_py_headers(raw: bytes) -> dict[str, str]:
    parse: Callable[[bytes], dict[str, str]] = nats.aio.client.Client._parse_header_lines
    return parse(raw)


def json_ack(data: bytes) -> tuple[int, bool]:
    doc = json.loads(data)
    return int(doc["seq"]), bool(doc.get("duplicate"))


def per_call_us(func: Callable[[bytes], object], arg: bytes, number: int) -> float:
    return timeit.timeit(lambda: func(arg), number=number) / number * 1e6


async def pair(
    ours: Callable[[bytes], object],
    theirs: Callable[[bytes], object],
    arg: bytes,
    rounds: int,
    number: int,
) -> tuple[list[float], list[float]]:
    """Both parsers' µs per call, in alternating rounds (common.interleaved)."""

    async def run_ours() -> float:
        return per_call_us(ours, arg, number)

    async def run_theirs() -> float:
        return per_call_us(theirs, arg, number)

    values = await interleaved({"ours": run_ours, "theirs": run_theirs}, rounds=rounds)
    return values["ours"], values["theirs"]


def main() -> None:
    args = base_parser(str(__doc__).splitlines()[0]).parse_args()
    rounds = args.rounds or (3 if args.quick else 15)
    number = 2_000 if args.quick else 20_000
    assert parse_header_lines(HEADERS) == nats_py_headers(HEADERS)
    assert tuple(parse_ack(ACK)) == json_ack(ACK)
    report = Report("aether_django.nats parsers", meta=machine_info())
    ours, theirs = asyncio.run(pair(parse_header_lines, nats_py_headers, HEADERS, rounds, number))
    report.compare(
        "1",
        "parse a stored event's six headers",
        "µs",
        ours,
        theirs,
        baseline_label="nats-py's Client._parse_header_lines",
        higher_is_better=False,
    )
    ours, theirs = asyncio.run(pair(parse_ack, json_ack, ACK, rounds, number))
    report.compare(
        "2",
        "read a publish ack",
        "µs",
        ours,
        theirs,
        baseline_label="json.loads and the same two fields",
        higher_is_better=False,
    )
    report.print()
    if args.json:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
