"""What every object parser shares: how to read a section of an object, and ObjectMeta.

Objects reach us two ways, and the difference decides what an unknown field is:

- From the API server (the operator): already validated there. A field we do not know comes
  from a newer Kubernetes and must be ignored, or one upgrade would make us drop objects.
- From files (the CLI): nobody has validated them. ``kubectl apply`` validates strictly and
  refuses unknown fields, and a misspelt one (``form:`` for ``from:``) would otherwise vanish
  and turn a rule into allow-all. So the CLI reads in ``strict`` mode.

Both ways, every field we know must have the JSON type the API gives it (``null`` is the same
as absent, as in Go): a Python truthiness test on ``hostNetwork: "false"`` must never happen.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.model.errors import ParseError

NAMESPACED_KINDS = frozenset({"Pod", "NetworkPolicy"})

# The JSON type of a field, named as it reads in "must be ...".
STRING = "a string"
BOOLEAN = "a boolean"
INT32 = "a 32-bit integer"
INT64 = "a 64-bit integer"
OBJECT = "an object"
LIST = "a list"
STRINGS = "a list of strings"
STRING_MAP = "a map of strings"
INT_OR_STRING = "an integer or a string"

Schema = Mapping[str, str]

_INT_RANGES = {INT32: 2**31, INT64: 2**63}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_type(value: Any, kind: str) -> bool:
    if kind == STRING:
        return isinstance(value, str)
    if kind == BOOLEAN:
        return isinstance(value, bool)
    if kind in _INT_RANGES:
        return _is_int(value) and -_INT_RANGES[kind] <= value < _INT_RANGES[kind]
    if kind == OBJECT:
        return isinstance(value, Mapping)
    if kind == LIST:
        return isinstance(value, list)
    if kind == STRINGS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == STRING_MAP:
        return isinstance(value, Mapping) and all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in value.items()
        )
    assert kind == INT_OR_STRING, kind
    return isinstance(value, str) or _has_type(value, INT32)


OBJECT_META: Schema = {
    "annotations": STRING_MAP,
    "creationTimestamp": STRING,
    "deletionGracePeriodSeconds": INT64,
    "deletionTimestamp": STRING,
    "finalizers": STRINGS,
    "generateName": STRING,
    "generation": INT64,
    "labels": STRING_MAP,
    "managedFields": LIST,
    "name": STRING,
    "namespace": STRING,
    "ownerReferences": LIST,
    "resourceVersion": STRING,
    "selfLink": STRING,
    "uid": STRING,
}

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,252}")
_SHOW_LIMIT = 80


def show(value: Any) -> str:
    """A value for a one-line message: escaped, shortened, never expensive (no repr of a deep
    structure, no decimal conversion of an integer with thousands of digits)."""
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 4] + "...'"
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, int):
        return str(value) if value.bit_length() < 64 else f"a {value.bit_length()}-bit integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def child(field: str, key: Any) -> str:
    """``field.key``, or ``field[<key>]`` where the key is not a plain name."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{field}.{key}" if field else key
    return f"{field}[{show(key)}]"


def _name_part(value: Any) -> str | None:
    return value if isinstance(value, str) and _PLAIN_NAME.fullmatch(value) else None


def describe(raw: Any) -> str:
    """``Kind namespace/name`` for messages, robust to any input shape."""
    if not isinstance(raw, Mapping):
        return f"object of type {type(raw).__name__}"
    kind = _name_part(raw.get("kind")) or "object"
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        return kind
    name = _name_part(meta.get("name")) or (
        "<unnamed>" if meta.get("name") in (None, "") else "<invalid name>"
    )
    ns = meta.get("namespace") or ("default" if kind in NAMESPACED_KINDS else None)
    if ns is None:
        return f"{kind} {name}"
    return f"{kind} {_name_part(ns) or '<invalid namespace>'}/{name}"


@dataclass(frozen=True)
class Reader:
    """Reads the sections of one object, named ``obj`` in messages.

    ``strict``: unknown fields are errors (the CLI); otherwise they are ignored (the operator).
    """

    obj: str
    strict: bool = False

    def error(self, field: str, message: str) -> ParseError:
        return ParseError(self.obj, field, message)

    def section(self, raw: Any, field: str, schema: Schema) -> Mapping[str, Any]:
        """``raw`` as an object whose fields in ``schema`` have their JSON types; ``{}`` for
        null. Only this level is checked: nested objects are checked when they are read."""
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise self.error(field, f"must be an object, got {show(raw)}")
        for key, value in raw.items():
            kind = schema.get(key) if isinstance(key, str) else None
            if kind is None:
                if self.strict:
                    raise self.error(child(field, key), _unknown(key, schema))
            elif value is not None and not _has_type(value, kind):
                raise self._type_error(child(field, key), value, kind)
        return raw

    def _type_error(self, field: str, value: Any, kind: str) -> ParseError:
        """Name the element that is wrong, not the whole list or map, where there is one."""
        if kind == STRINGS and isinstance(value, list):
            i = next(i for i, v in enumerate(value) if not isinstance(v, str))
            return self.error(f"{field}[{i}]", f"must be a string, got {show(value[i])}")
        if kind == STRING_MAP and isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str):
                    return self.error(field, f"keys must be strings, got {show(k)}")
                if v is not None and not isinstance(v, str):
                    return self.error(child(field, k), f"must be a string, got {show(v)}")
        return self.error(field, f"must be {kind}, got {show(value)}")

    def items(self, raw: Any, field: str) -> list[Any]:
        """A list field; ``[]`` for null."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.error(field, f"must be a list, got {show(raw)}")
        return raw


def _unknown(key: Any, schema: Schema) -> str:
    if not isinstance(key, str):
        return "unknown field (field names are strings)"
    folded = {k.lower(): k for k in schema}
    close = [folded[key.lower()]] if key.lower() in folded else []
    close = close or difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
    return "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")


# ---- ObjectMeta -------------------------------------------------------------------------------

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL_RE = re.compile(_DNS_LABEL)
DNS_SUBDOMAIN_RE = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253


def is_dns_label(value: str) -> bool:
    return len(value) <= DNS_LABEL_MAX and DNS_LABEL_RE.fullmatch(value) is not None


def is_dns_subdomain(value: str) -> bool:
    return len(value) <= DNS_SUBDOMAIN_MAX and DNS_SUBDOMAIN_RE.fullmatch(value) is not None


# apimachinery's IsQualifiedName (label and annotation keys) and IsValidLabelValue, matched
# against the whole string: Python's ``$`` also matches before a trailing newline, Go's does not.
_QUALIFIED_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_QUALIFIED_NAME_MAX = 63
# Total size of annotation keys and values, as apimachinery's ValidateAnnotationsSize.
ANNOTATIONS_MAX_BYTES = 256 * 1024


def is_qualified_name(key: str) -> bool:
    """An optional DNS-subdomain prefix and ``/``, then a name of at most 63 characters."""
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and "/" not in prefix and is_dns_subdomain(prefix)):
        return False
    return len(name) <= _QUALIFIED_NAME_MAX and _QUALIFIED_NAME_RE.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    return value == "" or (
        len(value) <= _QUALIFIED_NAME_MAX and _QUALIFIED_NAME_RE.fullmatch(value) is not None
    )


def object_meta(raw: Mapping[str, Any], reader: Reader) -> Mapping[str, Any]:
    """``metadata``; in strict mode also annotation keys and size as the API server checks them.

    The operator skips that check: it needs no annotation but ours, and Go lower-cases keys
    with Unicode rules that ``str.lower`` does not match for every character, so checking could
    only drop an object the API server accepted.
    """
    meta = reader.section(raw.get("metadata"), "metadata", OBJECT_META)
    annotations: Mapping[str, str | None] = meta.get("annotations") or {}
    if reader.strict:
        size = 0
        for key, value in annotations.items():
            if not is_qualified_name(key.lower()):
                raise reader.error("metadata.annotations", f"invalid annotation key {show(key)}")
            size += len(key.encode()) + len((value or "").encode(errors="surrogatepass"))
        if size > ANNOTATIONS_MAX_BYTES:
            raise reader.error(
                "metadata.annotations", f"{size} bytes in total, more than {ANNOTATIONS_MAX_BYTES}"
            )
    return meta


def name_of(meta: Mapping[str, Any], reader: Reader, *, dns_label: bool = False) -> str:
    """``metadata.name``: required, and a DNS-1123 subdomain (a label for Namespaces), as the
    API server validates it for every kind we read."""
    name = meta.get("name")
    if not name:
        raise reader.error("metadata.name", "is required")
    valid = is_dns_label(name) if dns_label else is_dns_subdomain(name)
    if not valid:
        what = "a DNS-1123 label" if dns_label else "a DNS-1123 subdomain"
        raise reader.error("metadata.name", f"{show(name)} is not {what} (e.g. 'my-name')")
    assert isinstance(name, str)
    return name


def namespace_of(meta: Mapping[str, Any], reader: Reader) -> str:
    """``metadata.namespace``, ``default`` when absent (as ``kubectl apply`` without ``-n``)."""
    ns = meta.get("namespace") or "default"
    assert isinstance(ns, str)
    if not is_dns_label(ns):
        raise reader.error("metadata.namespace", f"{show(ns)} is not a DNS-1123 label")
    return ns
