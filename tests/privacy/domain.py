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
