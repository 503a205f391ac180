"""The form that appends one event to an actor's history."""

from __future__ import annotations

import json
from typing import Any

from django import forms


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
