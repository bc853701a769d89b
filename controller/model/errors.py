"""The one error type that bad API objects raise while being parsed.

An operator who sees it must know which object and which field to fix, so the message always
names both, in the form ``Kind namespace/name: field.path: what is wrong``.
"""

from __future__ import annotations


class ParseError(ValueError):
    """An API object that cannot be turned into the model."""

    def __init__(self, obj: str, field: str, message: str) -> None:
        self.obj = obj
        self.field = field
        self.message = message
        super().__init__(f"{obj}: {field}: {message}" if field else f"{obj}: {message}")
