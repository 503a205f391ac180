"""Read models the test projections write."""

import time

from django.db import models


class Applied(models.Model):
    """One row per event a projection applied: duplicates and gaps show in the rows."""

    projection = models.CharField(max_length=200)
    namespace = models.CharField(max_length=255)
    sequence = models.BigIntegerField()
    actor_id = models.CharField(max_length=255)
    event_type = models.CharField(max_length=100)
    data = models.JSONField(default=dict)
    #: The cluster node that applied it (``context.node``); empty outside a node.
    node = models.CharField(max_length=200, blank=True, default="")
    #: When the handler wrote it (the Unix time of its process, ``time.time``).
    at = models.FloatField(default=time.time)

    class Meta:
        ordering = ["namespace", "sequence"]

    def __str__(self) -> str:
        return f"{self.projection} {self.namespace}:{self.sequence}"


class OrderSummary(models.Model):
    """The read model of the issue's example: one row per order."""

    order_id = models.CharField(max_length=255, unique=True)
    namespace = models.CharField(max_length=255)
    customer = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20)
    lines = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"order {self.order_id} ({self.status})"


class MemberCard(models.Model):
    """A read model that copies a data subject's personal values (tests/privacy): its rows
    belong to the subject named by ``person``."""

    member_id = models.CharField(max_length=255, unique=True)
    person = models.CharField(max_length=255, db_index=True)
    name = models.CharField(max_length=200)

    def __str__(self) -> str:
        return f"card {self.member_id}"


class MemberNote(models.Model):
    """What a projection's on_forget() hook erases itself (tests/privacy)."""

    person_hash = models.CharField(max_length=64)
    text = models.CharField(max_length=200)

    def __str__(self) -> str:
        return f"note {self.pk}"
