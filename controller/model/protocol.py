"""L4 protocols a NetworkPolicy can name, with their IANA numbers."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from controller.model.errors import ParseError


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def number(self) -> int:
        return _NUMBERS[self]


_NUMBERS = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}


def parse_protocol(raw: Any, obj: str, field: str) -> Protocol:
    if raw is None:
        return Protocol.TCP  # API default
    try:
        return Protocol(raw)
    except ValueError:
        raise ParseError(
            obj, field, f"unsupported protocol {raw!r} (want TCP, UDP or SCTP)"
        ) from None
