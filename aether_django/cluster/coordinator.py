"""Membership, the leader lease and the shard map, kept in one JetStream key-value bucket.

Consensus is NATS's, not ours: every decision is a compare-and-set on the server.

* **Membership.** A node puts ``alive.{node}`` with a per-message TTL of
  ``failure_timeout`` every ``heartbeat_interval``; the server removes the key of
  a node that stops, so "alive" needs no clock comparisons between machines.
  ``members.{node}`` keeps what was last known of every node that ever joined.
* **Leader.** ``leader`` is created only if absent (expected sequence 0), with
  the same TTL, and renewed by its holder with a compare-and-set on its
  revision. Its creation revision is the *term*.
* **Shard map.** ``shardmap`` is written by the leader only, in one atomic batch
  with a re-put of ``leader`` that expects the leader's current revision: the
  lease revision is the fencing token, so a deposed leader's write (say, after a
  long pause) is refused whole. After a write is stored the leader publishes its
  revision on ``aether.cluster.{bucket}.shardmap`` (plain NATS, not stored), so
  nodes follow a new map at once instead of at their next tick; the bucket stays
  the only source of truth, the notice only says when to read it.

The bucket's stream is made here (not by nats-py's KV helper) because it needs
atomic batches and per-message TTLs.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from .. import __version__, metrics
from ..aio import Runtime
from ..nats import headers as hdr
from ..nats.api import ERR_WRONG_LAST_SEQUENCE, JetStreamRefused, kv_key_subject, parse_ack
from ..nats.direct import direct_get_batch, direct_get_last
from .shards import Plan, plan_assignment, shard_counts

logger = logging.getLogger(__name__)

__all__ = [
    "ClusterConfig",
    "Coordinator",
    "FencedOutError",
    "Lease",
    "NodeInfo",
    "ShardMap",
]


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Timing and sizing of the cluster (``AETHER`` settings of the same names)."""

    bucket: str = "aether_cluster"
    heartbeat_interval: float = 1.0
    failure_timeout: float = 3.0
    num_shards: int = 1024
    replicas: int = 1
    timeout: float = 5.0


class FencedOutError(Exception):
    """A shard-map write was refused: this node no longer holds the lease it wrote with."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node says about itself in its heartbeat."""

    node_id: str
    started_at: float
    last_heartbeat: float
    shard_count: int = 0
    leader: str | None = None
    version: str = __version__
    address: str = ""
    status: str = "alive"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "node_id": self.node_id,
                "started_at": self.started_at,
                "last_heartbeat": self.last_heartbeat,
                "shard_count": self.shard_count,
                "leader": self.leader,
                "version": self.version,
                "address": self.address,
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, status: str = "alive") -> NodeInfo:
        doc = json.loads(raw)
        return cls(
            node_id=doc["node_id"],
            started_at=float(doc["started_at"]),
            last_heartbeat=float(doc["last_heartbeat"]),
            shard_count=int(doc.get("shard_count", 0)),
            leader=doc.get("leader"),
            version=str(doc.get("version", "")),
            address=str(doc.get("address", "")),
            status=status,
        )


@dataclass(frozen=True, slots=True)
class Lease:
    """The leader lease as last read: holder, term, and the revision that fences writes."""

    node_id: str
    term: int
    revision: int
    since: float


@dataclass(frozen=True, slots=True)
class ShardMap:
    """Which node owns each shard, written by the leader of ``term``."""

    num_shards: int
    assignment: dict[int, str]
    term: int
    revision: int = 0
    moved: int = 0
    updated_at: float = field(default_factory=time.time)
    #: Shards moved by every rebalance so far, carried from map to map by each leader,
    #: so any process can report the cluster's total (the metrics endpoint does).
    moves_total: int = 0
    #: The shards the rebalance that wrote this map moved, each with its owner before
    #: (None: it had none, as in the first map). Empty in a map written before this was
    #: recorded, though ``moved`` may say shards moved: see :attr:`moves_recorded`.
    moved_from: dict[int, str | None] = field(default_factory=dict)
    #: Whether the map says which shards moved (False for maps of older versions).
    moves_recorded: bool = True

    def owner(self, shard: int) -> str | None:
        return self.assignment.get(shard)

    def shards_of(self, node_id: str) -> list[int]:
        return sorted(s for s, n in self.assignment.items() if n == node_id)

    def counts(self) -> dict[str, int]:
        return shard_counts(self.assignment)

    def to_json(self) -> bytes:
        nodes = sorted(set(self.assignment.values()))
        index = {node: i for i, node in enumerate(nodes)}
        owners = [index.get(self.assignment.get(s, ""), -1) for s in range(self.num_shards)]
        # The moves as two parallel lists, the previous owners as indexes into a list
        # of their own (a previous owner may have left): compact, and new keys only,
        # so a reader that does not know them reads the map as before.
        moved = sorted(self.moved_from)
        before = sorted({n for n in self.moved_from.values() if n is not None})
        before_index = {node: i for i, node in enumerate(before)}
        return json.dumps(
            {
                "num_shards": self.num_shards,
                "nodes": nodes,
                "owners": owners,
                "term": self.term,
                "moved": self.moved,
                "updated_at": self.updated_at,
                "moves_total": self.moves_total,
                "moved_shards": moved,
                "moved_from": [before_index.get(self.moved_from[s] or "", -1) for s in moved],
                "previous_nodes": before,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, revision: int) -> ShardMap:
        doc = json.loads(raw)
        nodes = doc["nodes"]
        assignment = {s: nodes[i] for s, i in enumerate(doc["owners"]) if i >= 0}
        recorded = "moved_shards" in doc
        before = doc.get("previous_nodes", [])
        moved_from: dict[int, str | None] = {
            int(s): (before[i] if i >= 0 else None)
            for s, i in zip(doc.get("moved_shards", []), doc.get("moved_from", []), strict=True)
        }
        return cls(
            num_shards=int(doc["num_shards"]),
            assignment=assignment,
            term=int(doc["term"]),
            revision=revision,
            moved=int(doc.get("moved", 0)),
            updated_at=float(doc.get("updated_at", 0)),
            moves_total=int(doc.get("moves_total", 0)),
            moved_from=moved_from,
            moves_recorded=recorded,
        )


class Coordinator:
    """One node's view of, and part in, the cluster. Every method is one or two round trips."""

    def __init__(self, runtime: Runtime, node_id: str, config: ClusterConfig | None = None) -> None:
        self.runtime = runtime
        self.node_id = node_id
        self.config = config or ClusterConfig()
        self.stream = f"KV_{self.config.bucket}"
        self.started_at = time.time()
        self.lease: Lease | None = None
        #: When (time.monotonic()) the lease this node stored last expires at the latest:
        #: its TTL counted from just before the write was sent, so never later than the
        #: server's own expiry.
        self._lease_until = 0.0
        #: The leader this node saw at its last election round (itself, another, None);
        #: heartbeats report it, so the admin shows which leader every node follows.
        self.seen_leader: str | None = None
        #: Shard-map writes of this node that the lease fence refused.
        self.fenced = 0
        self._ready = False

    def _key(self, key: str) -> str:
        return kv_key_subject(self.config.bucket, key)

    @property
    def map_subject(self) -> str:
        """Where the leader announces each shard map it wrote (the revision, as text)."""
        return f"aether.cluster.{self.config.bucket}.shardmap"

    async def watch_shard_map(self, callback: Callable[[Msg], Awaitable[None]]) -> Any:
        """Call ``callback`` whenever a new shard map is written; return the subscription.

        A notice is only a hint to read the map now: it can be missed (the
        subscriber was away) and then the next tick's read catches up.
        """
        return await (await self._nc()).subscribe(self.map_subject, cb=callback)

    async def _nc(self) -> Any:
        return await self.runtime.connection()

    # --- the bucket -------------------------------------------------------------------
    async def setup(self) -> None:
        """Create the cluster bucket's stream if it does not exist."""
        if self._ready:
            return
        js = (await self._nc()).jetstream(timeout=self.config.timeout)
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            config = StreamConfig(
                name=self.stream,
                description="aether_django cluster state: members, leader lease, shard map",
                subjects=[kv_key_subject(self.config.bucket, ">")],
                max_msgs_per_subject=1,
                discard=DiscardPolicy.NEW,
                storage=StorageType.FILE,
                num_replicas=self.config.replicas,
                allow_rollup_hdrs=True,
                deny_delete=True,
                allow_direct=True,
                allow_atomic=True,
                allow_msg_ttl=True,
            )
            try:
                await js.add_stream(config)
            except BadRequestError:
                await js.stream_info(self.stream)  # made by another node meanwhile
        self._ready = True

    async def _put(
        self, key: str, value: bytes, *, expected: int | None = None, ttl: float | None = None
    ) -> int:
        headers: dict[str, str] = {}
        if expected is not None:
            headers[hdr.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
        if ttl is not None:
            headers[hdr.TTL] = hdr.ttl_value(ttl)
        nc = await self._nc()
        reply = await nc.request(
            self._key(key), value, timeout=self.config.timeout, headers=headers or None
        )
        return parse_ack(reply.data).seq

    async def _get(self, key: str) -> Any:
        return await direct_get_last(
            await self._nc(), self.stream, self._key(key), self.config.timeout
        )

    # --- membership -------------------------------------------------------------------
    async def heartbeat(self, shard_count: int = 0, address: str = "") -> NodeInfo:
        """Say this node is alive (the server forgets it after ``failure_timeout``)."""
        await self.setup()
        leader = self.lease.node_id if self.lease else self.seen_leader
        info = NodeInfo(
            node_id=self.node_id,
            started_at=self.started_at,
            last_heartbeat=time.time(),
            shard_count=shard_count,
            leader=leader,
            address=address,
        )
        raw = info.to_json()
        await self._put(f"alive.{self.node_id}", raw, ttl=self.config.failure_timeout)
        await self._put(f"members.{self.node_id}", raw)
        return info

    async def leave(self) -> None:
        """Leave at once: forget the heartbeat and give up the lease if this node holds it."""
        await self.setup()
        nc = await self._nc()
        headers = {hdr.KV_OPERATION: "PURGE", hdr.ROLLUP: "sub"}
        await nc.request(self._key(f"alive.{self.node_id}"), b"", headers=headers)
        lease = await self.read_lease()
        if lease is not None and lease.node_id == self.node_id:
            try:
                await nc.request(
                    self._key("leader"),
                    b"",
                    headers={**headers, hdr.EXPECTED_LAST_SUBJECT_SEQUENCE: str(lease.revision)},
                )
            except Exception:
                logger.debug("could not release the lease", exc_info=True)
        self.lease = None

    async def _last_of_each(self, prefix: str) -> list[Any]:
        return await direct_get_batch(
            await self._nc(),
            self.stream,
            {"multi_last": [self._key(f"{prefix}.>")], "batch": 100_000},
            self.config.timeout,
        )

    async def nodes(self) -> list[NodeInfo]:
        """Every node that ever joined: ``alive`` while its heartbeat lives, else ``failed``."""
        await self.setup()
        alive = {info.node_id: info for info in (await self._infos("alive")) if info is not None}
        members = {info.node_id: info for info in await self._infos("members") if info is not None}
        result = []
        for node_id in sorted(set(alive) | set(members)):
            if node_id in alive:
                result.append(alive[node_id])
            else:
                info = members[node_id]
                result.append(NodeInfo(**{**_fields(info), "status": "failed"}))
        return result

    async def _infos(self, prefix: str) -> list[NodeInfo | None]:
        infos: list[NodeInfo | None] = []
        for msg in await self._last_of_each(prefix):
            if (msg.headers or {}).get(hdr.KV_OPERATION) in ("DEL", "PURGE") or not msg.data:
                continue
            try:
                infos.append(NodeInfo.from_json(msg.data))
            except (ValueError, KeyError):
                infos.append(None)
        return infos

    async def alive_nodes(self) -> list[str]:
        """Ids of the nodes whose heartbeat has not expired."""
        await self.setup()
        return sorted(info.node_id for info in await self._infos("alive") if info is not None)

    async def live_nodes(self) -> list[str]:
        """Ids of the nodes whose heartbeat has not expired, read without creating the
        bucket (none while it does not exist): for the cluster's clients, such as a web
        process deciding whether to route a command, which must not create it."""
        return sorted(info.node_id for info in await self._infos("alive") if info is not None)

    # --- the leader lease ---------------------------------------------------------------
    async def read_lease(self) -> Lease | None:
        """The current lease, or None when nobody holds it."""
        return (await self._read_lease())[0]

    async def read_record(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """A lease-like record of the bucket: its document (None when free) and revision.

        The revision is the key's last sequence even when the record is free: a
        released lease leaves a marker behind, and taking it must expect that
        marker, not nothing.
        """
        await self.setup()
        msg = await self._get(key)
        if msg is None:
            return None, 0
        revision = int(msg.headers[hdr.SEQUENCE])
        if not msg.data:
            return None, revision
        doc: dict[str, Any] = json.loads(msg.data)
        return doc, revision

    async def _read_lease(self) -> tuple[Lease | None, int]:
        doc, revision = await self.read_record("leader")
        if doc is None:
            return None, revision
        lease = Lease(
            node_id=doc["node_id"],
            term=int(doc.get("term") or revision),
            revision=revision,
            since=float(doc.get("since", 0)),
        )
        return lease, revision

    def _lease_doc(self, term: int | None, since: float) -> bytes:
        return json.dumps({"node_id": self.node_id, "term": term, "since": since}).encode()

    async def elect_or_renew(self) -> Lease | None:
        """Renew this node's lease, or take the lease if nobody holds it; return the holder."""
        current, last = await self._read_lease()
        if current is not None and current.node_id == self.node_id:
            try:
                sent = time.monotonic()
                revision = await self._put(
                    "leader",
                    self._lease_doc(current.term, current.since),
                    expected=current.revision,
                    ttl=self.config.failure_timeout,
                )
                self.lease = Lease(self.node_id, current.term, revision, current.since)
                self._lease_until = sent + self.config.failure_timeout
                self.seen_leader = self.node_id
                return self.lease
            except JetStreamRefused as exc:
                if exc.code != ERR_WRONG_LAST_SEQUENCE:
                    raise
                current, last = await self._read_lease()
        if current is None:
            since, sent = time.time(), time.monotonic()
            try:
                revision = await self._put(
                    "leader",
                    self._lease_doc(None, since),
                    expected=last,
                    ttl=self.config.failure_timeout,
                )
            except JetStreamRefused as exc:
                if exc.code != ERR_WRONG_LAST_SEQUENCE:
                    raise
                current, last = await self._read_lease()  # someone else won
            else:
                self.lease = Lease(self.node_id, revision, revision, since)
                self._lease_until = sent + self.config.failure_timeout
                self.seen_leader = self.node_id
                metrics.LEADER_CHANGES.inc()
                logger.info(
                    "node %s is leader (term %s)",
                    self.node_id,
                    revision,
                    extra={"node": self.node_id, "term": revision},
                )
                return self.lease
        self.lease = current if current is not None and current.node_id == self.node_id else None
        self.seen_leader = current.node_id if current is not None else None
        return current

    @property
    def is_leader(self) -> bool:
        """Whether this node believes it holds the lease (its writes are then fenced).

        A belief, not a fact: a node whose renewals fail keeps it until its next
        round, and its writes are then refused by the fence. See :attr:`leads_now`.
        """
        return self.lease is not None and self.lease.node_id == self.node_id

    @property
    def leads_now(self) -> bool:
        """Whether this node holds a lease that has not expired by its own clock.

        Counted from before the write that stored the lease, so a node stops
        answering True no later than the server forgets the lease: at most one
        node of a cluster answers True at any moment (with clocks that run at
        the same rate), unlike :attr:`is_leader`.
        """
        return self.is_leader and time.monotonic() < self._lease_until

    # --- the shard map ------------------------------------------------------------------
    async def read_shard_map(self) -> ShardMap | None:
        await self.setup()
        msg = await self._get("shardmap")
        if msg is None or not msg.data:
            return None
        return ShardMap.from_json(msg.data, int(msg.headers[hdr.SEQUENCE]))

    async def write_shard_map(self, shard_map: ShardMap, expected_revision: int) -> ShardMap:
        """Write the map fenced by this node's lease; FencedOutError if the lease moved on."""
        lease = self.lease
        if lease is None or lease.node_id != self.node_id:
            raise FencedOutError(f"{self.node_id} holds no lease")
        nc = await self._nc()
        sent = time.monotonic()  # the batch renews the lease too
        batch = uuid.uuid4().hex
        await nc.publish(
            self._key("leader"),
            self._lease_doc(lease.term, lease.since),
            headers={
                hdr.BATCH_ID: batch,
                hdr.BATCH_SEQUENCE: "1",
                hdr.EXPECTED_LAST_SUBJECT_SEQUENCE: str(lease.revision),
                hdr.TTL: hdr.ttl_value(self.config.failure_timeout),
            },
        )
        reply = await nc.request(
            self._key("shardmap"),
            shard_map.to_json(),
            timeout=self.config.timeout,
            headers={
                hdr.BATCH_ID: batch,
                hdr.BATCH_SEQUENCE: "2",
                hdr.BATCH_COMMIT: "1",
                hdr.EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected_revision),
            },
        )
        try:
            seq = parse_ack(reply.data).seq
        except JetStreamRefused as exc:
            if exc.code == ERR_WRONG_LAST_SEQUENCE:
                self.lease = None
                raise FencedOutError(
                    f"shard map write of {self.node_id} (term {lease.term}) refused: "
                    "the lease or the map moved on"
                ) from exc
            raise
        self.lease = Lease(lease.node_id, lease.term, seq - 1, lease.since)
        self._lease_until = sent + self.config.failure_timeout
        try:
            # Only after the write is stored: a follower that reads on this notice
            # must find the new map, and a fenced write must announce nothing.
            await nc.publish(self.map_subject, str(seq).encode())
        except Exception:
            logger.debug("could not announce shard map %d", seq, exc_info=True)
        return replace(shard_map, revision=seq)

    async def rebalance(self) -> Plan | None:
        """As leader: plan the map for the alive nodes and write it if it changed."""
        if not self.is_leader:
            return None
        assert self.lease is not None
        alive = await self.alive_nodes()
        current = await self.read_shard_map()
        previous = current.assignment if current else {}
        plan = plan_assignment(self.config.num_shards, alive, previous)
        if current is not None and plan.assignment == current.assignment:
            return plan
        new_map = ShardMap(
            num_shards=self.config.num_shards,
            assignment=plan.assignment,
            term=self.lease.term,
            moved=plan.moved_count,
            moves_total=(current.moves_total if current else 0) + plan.moved_count,
            moved_from={shard: previous.get(shard) for shard in plan.moved},
        )
        await self.write_shard_map(new_map, current.revision if current else 0)
        metrics.SHARD_MOVES.inc(plan.moved_count)
        logger.info(
            "leader %s moved %d shards over %d nodes",
            self.node_id,
            plan.moved_count,
            len(alive),
            extra={
                "node": self.node_id,
                "term": self.lease.term,
                "moved": plan.moved_count,
                "nodes": len(alive),
            },
        )
        return plan

    async def tick(self, shard_count: int = 0) -> Lease | None:
        """One round of a node's duties: heartbeat, then :meth:`elect` (lease and rebalance)."""
        await self.heartbeat(shard_count=shard_count)
        return await self.elect()

    async def elect(self) -> Lease | None:
        """Renew or take the lease, rebalancing as leader; return the holder.

        A node that believes it leads rebalances *before* renewing, with the
        lease it last held: after a long pause that write is the one the fence
        refuses, and the node then follows whoever leads now. A node that has
        just taken the lease rebalances at once: its predecessor may have died,
        and waiting one more round would delay the move of its shards.
        """
        was_leader = self.is_leader
        if was_leader:
            await self._rebalance_fenced()
        lease = await self.elect_or_renew()
        if self.is_leader and not was_leader:
            await self._rebalance_fenced()
        return lease

    async def adopt_lease(self) -> bool:
        """Take the server's lease as this object's if it names this node; True if it does.

        For a second process of the same node (a Celery pool process) that did not
        renew the lease itself: a write it then makes is still fenced by the
        lease's current revision, so a stale one is refused by the server.
        """
        if self.is_leader:
            return True
        lease = await self.read_lease()
        self.lease = lease if lease is not None and lease.node_id == self.node_id else None
        return self.is_leader

    async def failed_owners(self) -> list[str]:
        """Nodes that own shards in the current map but whose heartbeat has expired."""
        alive = set(await self.alive_nodes())
        shard_map = await self.read_shard_map()
        return sorted(set(shard_map.assignment.values()) - alive) if shard_map else []

    async def _rebalance_fenced(self) -> Plan | None:
        try:
            return await self.rebalance()
        except FencedOutError:
            self.fenced += 1
            logger.warning(
                "node %s was deposed: its shard-map write was fenced",
                self.node_id,
                extra={"node": self.node_id},
            )
            return None


def _fields(info: NodeInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in NodeInfo.__slots__}
