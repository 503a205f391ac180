"""Database models: who may read and write which namespaces, where projections are, and
which data keys forget() erased."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models

from .errors import InvalidNameError
from .patterns import validate_pattern


def _validate_pattern(value: str) -> None:
    try:
        validate_pattern(value)
    except InvalidNameError as exc:
        raise ValidationError(str(exc)) from None


class NamespaceGrant(models.Model):
    """Lets a user, or every member of a group, read and/or write the matching namespaces.

    ``pattern`` uses the namespace pattern rules (``orders``, ``acme.*``,
    ``acme.>``, ``order*``). Writing to a namespace that does not exist yet creates it
    (a stream and a bucket on the server), which takes ``can_create`` besides
    ``can_write``: a wildcard write grant alone cannot make namespaces without end.
    Superusers need no grant.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="aether_grants",
    )
    group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.CASCADE, related_name="aether_grants"
    )
    pattern = models.CharField(
        max_length=255,
        validators=[_validate_pattern],
        help_text="Namespace pattern: orders, acme.*, acme.> or order*",
    )
    can_read = models.BooleanField(default=True)
    can_write = models.BooleanField(default=False)
    can_create = models.BooleanField(
        default=False,
        help_text=(
            "Together with write: the first write to a matching namespace that does not "
            "exist yet creates it (its stream and snapshot bucket)"
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pattern", "id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, group__isnull=True)
                    | models.Q(user__isnull=True, group__isnull=False)
                ),
                name="aether_grant_user_xor_group",
            )
        ]

    def __str__(self) -> str:
        who = f"user {self.user}" if self.user_id else f"group {self.group}"
        flags = (("read", self.can_read), ("write", self.can_write), ("create", self.can_create))
        rights = "/".join(r for r, ok in flags if ok)
        return f"{who}: {rights or 'nothing'} on {self.pattern}"

    def clean(self) -> None:
        if (self.user_id is None) == (self.group_id is None):
            raise ValidationError("A grant is for a user or for a group, not both or neither.")


class _AdminEntry(models.Model):
    """No table and no permissions of its own: an entry of the admin's index that
    leads to read-only pages (``admin.py`` decides who may see them)."""

    class Meta:
        abstract = True
        managed = False
        default_permissions = ()


class StreamInspection(_AdminEntry):
    """The admin's entry for the read-only namespace, actor and event pages."""

    class Meta(_AdminEntry.Meta):
        verbose_name = "namespace"
        verbose_name_plural = "namespaces and events"

    def __str__(self) -> str:
        return "namespaces"


class ProjectionInspection(_AdminEntry):
    """The admin's entry for the projections page (positions, lag, failures, actions)."""

    class Meta(_AdminEntry.Meta):
        verbose_name = "projection"
        verbose_name_plural = "projections"

    def __str__(self) -> str:
        return "projections"


class ClusterInspection(_AdminEntry):
    """The admin's entry for the read-only node and shard-map pages."""

    class Meta(_AdminEntry.Meta):
        verbose_name = "cluster"
        verbose_name_plural = "cluster nodes and shards"

    def __str__(self) -> str:
        return "cluster"


class DataSubject(_AdminEntry):
    """The admin's entry for forgetting a data subject (docs/privacy.md), and the
    holder of the permission ``aether_django.forget_subject`` that the admin page and
    the API's forget endpoint require (superusers hold it implicitly)."""

    class Meta(_AdminEntry.Meta):
        verbose_name = "data subject"
        verbose_name_plural = "forget a data subject"
        permissions = [("forget_subject", "Can forget a data subject (erase its personal data)")]

    def __str__(self) -> str:
        return "data subjects"


class ProjectionCheckpoint(models.Model):
    """How far one projection has applied one namespace's stream.

    ``sequence`` is the stream sequence of the last event whose effect is committed;
    it moves only in the same transaction as the handlers' writes, by a
    compare-and-set on its previous value (aether_django.projections.runner). A
    ``failed`` checkpoint stops at the event ``last_error_sequence``, which only a
    fix of the code (resume) or a recorded skip gets past.
    """

    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    STATES = [(RUNNING, "running"), (PAUSED, "paused"), (FAILED, "failed")]

    projection = models.CharField(max_length=200)
    namespace = models.CharField(max_length=255)
    sequence = models.BigIntegerField(default=0)
    state = models.CharField(max_length=10, choices=STATES, default=RUNNING)
    last_error_sequence = models.BigIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["projection", "namespace"]
        constraints = [
            models.UniqueConstraint(
                fields=["projection", "namespace"], name="aether_checkpoint_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.projection} @ {self.namespace}:{self.sequence} ({self.state})"


class ProjectionSkip(models.Model):
    """An event a projection was told to pass over: who did it, when and why."""

    projection = models.CharField(max_length=200)
    namespace = models.CharField(max_length=255)
    sequence = models.BigIntegerField()
    reason = models.TextField()
    skipped_by = models.CharField(max_length=150)
    skipped_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["projection", "namespace", "sequence"]

    def __str__(self) -> str:
        return f"{self.projection} skipped {self.namespace}:{self.sequence} ({self.reason})"


class ForgottenKey(models.Model):
    """A data key that privacy.forget() erased: its subject (as the SHA-256 of the id,
    hex, never the id) and its key id.

    forget() writes it into every database of a projection it concerns, in the
    transaction that deletes the subject's rows; the projection runner rolls back a
    batch that opened values with a key named here (a process whose key cache still
    held it), so those values never outlive forget() in a read model
    (docs/privacy.md#read-models). One row per key: a new life has a new key id.
    """

    subject_sha256 = models.CharField(max_length=64)
    kid = models.CharField(max_length=64)
    forgotten_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["forgotten_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subject_sha256", "kid"], name="aether_forgotten_key_unique"
            )
        ]

    def __str__(self) -> str:
        return f"key {self.kid} of {self.subject_sha256[:12]}…"
