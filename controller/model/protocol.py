"""L4 protocols a NetworkPolicy can name, with their IANA numbers."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from controller.model.meta import Reader, show


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def number(self) -> int:
        return _NUMBERS[self]


_NUMBERS = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}


def parse_protocol(raw: Any, reader: Reader, field: str) -> Protocol:
    if raw is None:
        return Protocol.TCP  # API default
    try:
        return Protocol(raw)
    except ValueError:
        raise reader.error(
            field, f"unsupported protocol {show(raw)} (want TCP, UDP or SCTP)"
        ) from None
