"""Aggregates of the personal data tests: orders whose customer name and e-mail are personal."""

from __future__ import annotations

from aether_django.aggregates import Aggregate, apply, command
from aether_django.events import Event


class Order(Aggregate):
    """An order placed by a customer (the data subject, named by ``customer_id``)."""

    customer_id: str = ""
    customer: str = ""
    email: str = ""
    total: int = 0
    note: str = ""

    class Meta:
        namespace = "privacy_orders"
        personal_data = {"OrderPlaced": ["customer", "email"]}
        data_subject = "customer_id"

    @command
    def place(self, customer_id: str, customer: str, email: str, total: int) -> None:
        self.record(
            "OrderPlaced", customer_id=customer_id, customer=customer, email=email, total=total
        )

    @command
    def annotate(self, note: str) -> None:
        self.record("NoteAdded", note=note)

    @apply("OrderPlaced")
    def _placed(self, event: Event) -> None:
        self.customer_id = event.data["customer_id"]
        self.customer = event.data["customer"]
        self.email = event.data["email"]
        self.total = event.data["total"]

    @apply("NoteAdded")
    def _noted(self, event: Event) -> None:
        self.note = event.data["note"]


class Plain(Aggregate):
    """The same without personal data: nothing is sealed."""

    customer: str = ""

    class Meta:
        namespace = "privacy_plain"

    @command
    def place(self, customer: str) -> None:
        self.record("OrderPlaced", customer=customer)

    @apply("OrderPlaced")
    def _placed(self, event: Event) -> None:
        self.customer = event.data["customer"]


class SnapOrder(Order):
    """Order, snapshotted every second event: its snapshots are sealed."""

    class Meta:
        namespace = "privacy_snap_orders"
        personal_data = {"OrderPlaced": ["customer", "email"]}
        data_subject = "customer_id"
        snapshot_every = 2


class Group(Aggregate):
    """Members joining one actor: its history names several data subjects."""

    names: dict[str, str] = {}

    class Meta:
        namespace = "privacy_snap_groups"
        personal_data = {"MemberJoined": ["name"]}
        data_subject = "member_id"
        snapshot_every = 2

    @command
    def join(self, member_id: str, name: str) -> None:
        self.record("MemberJoined", member_id=member_id, name=name)

    @apply("MemberJoined")
    def _joined(self, event: Event) -> None:
        self.names[event.data["member_id"]] = event.data["name"]


class PlainSnap(Aggregate):
    """Snapshots without personal data: stored as they always were."""

    customer: str = ""
    count: int = 0

    class Meta:
        namespace = "privacy_snap_plain"
        snapshot_every = 2

    @command
    def place(self, customer: str) -> None:
        self.record("OrderPlaced", customer=customer)

    @apply("OrderPlaced")
    def _placed(self, event: Event) -> None:
        self.customer = event.data["customer"]
        self.count += 1
