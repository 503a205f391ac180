"""The form that appends one event to an actor's history."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from .models import STATUSES


class AppendEventForm(forms.Form):
    """Event type, JSON data and an optional version (blank: the actor's next version)."""

    event_type = forms.CharField(
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "OrderPlaced", "autocomplete": "off"}),
    )
    event_data = forms.CharField(
        required=False,
        initial="{}",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
    )
    version = forms.IntegerField(required=False, min_value=1)

    def clean_event_data(self) -> dict[str, Any]:
        """Parse the data as JSON; only an object is an event's data."""
        text = (self.cleaned_data.get("event_data") or "").strip() or "{}"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Data is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError(
                f'Data must be a JSON object such as {{"amount": 3}}, not a JSON '
                f"{_json_kind(value)}."
            )
        return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


# --- the orders page ----------------------------------------------------------------
# The forms only check types and sizes; the Order aggregate's own rules decide the
# rest (an empty customer, a quantity of 0, a negative price), so that the page
# shows the domain's messages.

#: Bounds that keep amounts well inside the integers every JSON reader handles.
MAX_QUANTITY = 1_000_000
MAX_PRICE_CENTS = 100_000_000


class CreateOrderForm(forms.Form):
    """A new order: its actor id and its customer."""

    order_id = forms.CharField(
        label="Order id",
        widget=forms.TextInput(attrs={"placeholder": "order-1", "autocomplete": "off"}),
    )
    customer = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "Ann", "autocomplete": "off"}),
    )


class AddLineForm(forms.Form):
    """One order line: SKU, quantity and unit price in cents."""

    sku = forms.CharField(
        label="SKU",
        required=False,
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": "book-42", "autocomplete": "off"}),
    )
    quantity = forms.IntegerField(initial=1, max_value=MAX_QUANTITY)
    price_cents = forms.IntegerField(label="Price (cents)", max_value=MAX_PRICE_CENTS)


class CancelOrderForm(forms.Form):
    """Why the order is cancelled (optional)."""

    reason = forms.CharField(
        required=False,
        max_length=500,
        widget=forms.TextInput(attrs={"placeholder": "changed my mind", "autocomplete": "off"}),
    )


class OrderFilterForm(forms.Form):
    """The orders list's filters (query parameters): a status, and part of a customer's
    name. Blank fields filter nothing; a status that is not one is an error."""

    status = forms.ChoiceField(
        required=False,
        choices=[("", "any status"), *((status, status) for status in STATUSES)],
    )
    customer = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "any customer", "autocomplete": "off"}),
    )
