"""Print the renderer's JSON as readable ``nft`` syntax (for ``compile --format nft``).

Only the subset of the JSON schema that ``render`` emits is supported; anything else raises, so
a renderer change cannot silently print something different from what is applied. Strings are
quoted with nft's rules; the JSON form stays the one that is applied.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', "'") + '"'


def _value(v: Any) -> str:
    if isinstance(v, dict):
        if "range" in v:
            return f"{_value(v['range'][0])}-{_value(v['range'][1])}"
        if "concat" in v:
            return " . ".join(_value(x) for x in v["concat"])
        if "prefix" in v:
            return f"{v['prefix']['addr']}/{v['prefix']['len']}"
        if "elem" in v:
            text = _value(v["elem"]["val"])
            comment = v["elem"].get("comment")
            return f"{text} comment {_quote(comment)}" if comment else text
        raise ValueError(f"unsupported value {v!r}")
    return str(v)


def _concat_value(v: Any, type_: Any) -> str:
    """A set element, with the ``inet_proto`` field of a concatenation printed by name."""
    if isinstance(v, dict) and "concat" in v:
        parts = [
            _PROTOCOLS.get(p, str(p)) if t == "inet_proto" and isinstance(p, int) else p
            for p, t in zip(v["concat"], type_, strict=True)
        ]
        return " . ".join(_value(x) for x in parts)
    return _value(v)


def _expr(e: Any) -> str:
    if "payload" in e:
        return f"{e['payload']['protocol']} {e['payload']['field']}"
    if "meta" in e:
        return f"meta {e['meta']['key']}"
    if "ct" in e:
        return f"ct {e['ct']['key']}"
    if "concat" in e:
        return " . ".join(_expr(x) for x in e["concat"])
    for op in ("&", "|"):  # the conntrack mark epoch: ``ct mark & MASK``
        if op in e:
            left, right = e[op]
            return f"{_expr(left)} {op} {right:#010x}"
    raise ValueError(f"unsupported expression {e!r}")


def _is_binop(e: Any) -> bool:
    return isinstance(e, dict) and ("&" in e or "|" in e)


def _statement(s: dict[str, Any]) -> str:
    ((key, body),) = s.items()
    if key == "match":
        right = body["right"]
        right_text = ",".join(right) if isinstance(right, list) else _value(right)
        if _is_binop(body["left"]):
            return f"{_expr(body['left'])} {body['op']} {right:#010x}"
        op = "" if body["op"] in ("==", "in") else f"{body['op']} "
        return f"{_expr(body['left'])} {op}{right_text}"
    if key == "vmap":
        return f"{_expr(body['key'])} vmap {body['data']}"
    if key in ("accept", "drop", "return"):
        return key
    if key in ("jump", "goto"):
        return f"{key} {body['target']}"
    if key == "counter":
        if isinstance(body, str):  # a named counter
            return f"counter name {_quote(body)}"
        return f"counter packets {body['packets']} bytes {body['bytes']}"
    if key == "mangle":
        return f"{_expr(body['key'])} set {_expr(body['value'])}"
    if key == "limit":
        return f"limit rate {body['rate']}/{body['per']}"
    if key == "log":
        return f"log prefix {_quote(body['prefix'])} group {body['group']}"
    raise ValueError(f"unsupported statement {key!r}")


def _type(t: Any) -> str:
    return " . ".join(t) if isinstance(t, list) else str(t)


def to_text(ruleset: dict[str, Any]) -> str:
    tables: dict[tuple[str, str], list[str]] = defaultdict(list)
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    rules: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for command in ruleset["nftables"]:
        ((verb, obj),) = command.items()
        if verb == "delete":
            continue
        if verb != "add":
            raise ValueError(f"unsupported command {verb!r}")
        ((kind, spec),) = obj.items()
        if kind == "table":
            tables.setdefault((spec["family"], spec["name"]), [])
            continue
        table = (spec["family"], spec["table"])
        if kind == "chain":
            chains[(*table, spec["name"])] = spec
        elif kind in ("set", "map"):
            lines = [f"\t{kind} {spec['name']} {{"]
            if kind == "map":
                lines.append(f"\t\ttype {_type(spec['type'])} : {spec['map']}")
            else:
                lines.append(f"\t\ttype {_type(spec['type'])}")
            if spec.get("flags"):
                lines.append(f"\t\tflags {','.join(spec['flags'])}")
            elems = spec.get("elem") or []
            if elems:
                if kind == "map":
                    items = [f"{_value(k)} : {_statement(v)}" for k, v in elems]
                else:
                    items = [_concat_value(e, spec["type"]) for e in elems]
                lines.append("\t\telements = { " + ",\n\t\t\t     ".join(items) + " }")
            lines.append("\t}")
            tables[table].append("\n".join(lines))
        elif kind == "counter":
            tables[table].append(f"\tcounter {spec['name']} {{\n\t}}")
        elif kind == "rule":
            text = " ".join(_statement(s) for s in spec["expr"])
            if spec.get("comment"):
                text += f" comment {_quote(spec['comment'])}"
            rules[(*table, spec["chain"])].append(text)
        else:
            raise ValueError(f"unsupported object {kind!r}")
    for key, spec in chains.items():
        lines = [f"\tchain {spec['name']} {{"]
        if "hook" in spec:
            lines.append(
                f"\t\ttype {spec['type']} hook {spec['hook']} priority {spec['prio']}; "
                f"policy {spec['policy']};"
            )
        lines.extend(f"\t\t{r}" for r in rules[key])
        lines.append("\t}")
        tables[key[:2]].append("\n".join(lines))
    out = []
    for (family, name), body in tables.items():
        out.append(f"table {family} {name} {{\n" + "\n\n".join(body) + "\n}\n")
    # Loading this text replaces the table like the JSON does: create, delete, then define.
    header = "".join(f"table {f} {n}\ndelete table {f} {n}\n" for f, n in tables)
    return header + "".join(out)
