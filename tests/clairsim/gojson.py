"""JSON the way Clair's Go code writes and reads it.

Writing (encoding/json): struct fields in declaration order (our dicts keep insertion order),
map keys sorted, HTML-sensitive characters escaped (`<` is `\\u003c`), numbers held in an
`interface{}` are float64 and printed in Go's shortest form (`10`, not `10.0`), one trailing
newline from `json.Encoder.Encode`.

Reading (json.Decoder into the API structs): only the first JSON value counts, keys match struct
fields case-insensitively, unknown keys are ignored, `null` leaves a field unset, and type
mismatches give Go's `json: cannot unmarshal ...` messages.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

# --- encoding ---------------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or ch in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")  # Go replaces invalid UTF-8 with U+FFFD
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_float(value: float) -> str:
    """strconv.AppendFloat(f, 'f' or 'e', -1, 64) with encoding/json's exponent clean-up."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {value}")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = repr(value)
        if "e" not in text:
            text = f"{value:e}"
        mantissa, exponent = text.split("e")
        sign = "-" if exponent.startswith("-") else "+"
        digits = exponent.lstrip("+-").lstrip("0") or "0"
        return f"{mantissa}e{sign}{digits.zfill(2) if sign == '+' else digits}"
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_quote(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(format_float(value))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_quote(str(key)))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(value: Any) -> str:
    """Compact Go-style JSON text (no trailing newline)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def encode_response(value: Any) -> bytes:
    """What `json.NewEncoder(w).Encode(value)` writes."""
    return (dumps(value) + "\n").encode("utf-8")


def as_go_interface(value: Any) -> Any:
    """A value as Go holds it in `interface{}` after json.Unmarshal: maps sorted, numbers float64."""
    if isinstance(value, dict):
        return {key: as_go_interface(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [as_go_interface(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return value


def loads_interface(text: str) -> Any:
    """json.Unmarshal into interface{}: every number becomes a float64."""
    return as_go_interface(json.loads(text, parse_int=float))


# --- decoding ---------------------------------------------------------------------------------


class GoJSONError(Exception):
    """A request body that Go's decoder rejects; str() is Go's message."""


class _Number(str):
    """A JSON number literal, kept as text until we know the Go type it goes into."""


class _Object(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs in order: Go applies duplicate keys one by one."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid constant {name}")


def _kind(value: Any) -> str:
    if isinstance(value, _Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, _Object):
        return "object"
    return "array"


def _quote_char(ch: str) -> str:
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + json.dumps(ch)[1:-1] + "'"


def _innermost_open(text: str, pos: int) -> str:
    """'{' or '[' enclosing position `pos`, ignoring brackets inside strings."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _syntax_message(text: str, err: json.JSONDecodeError) -> str:
    if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    ch = _quote_char(text[err.pos])
    literal = {"t": "true", "f": "false", "n": "null"}.get(text[err.pos])
    if err.msg.startswith("Expecting value") and literal:
        for index, expected in enumerate(literal):
            if err.pos + index >= len(text):
                return "unexpected EOF"
            actual = text[err.pos + index]
            if actual != expected:
                got, want = _quote_char(actual), _quote_char(expected)
                return f"invalid character {got} in literal {literal} (expecting {want})"
    if err.msg.startswith("Expecting property name"):
        return f"invalid character {ch} looking for beginning of object key string"
    if err.msg.startswith("Expecting ':'"):
        return f"invalid character {ch} after object key"
    if err.msg.startswith("Expecting ','"):
        if _innermost_open(text, err.pos) == "[":
            return f"invalid character {ch} after array element"
        return f"invalid character {ch} after object key:value pair"
    if err.msg.startswith("Invalid control character"):
        return f"invalid character {ch} in string literal"
    if err.msg.startswith("Invalid \\escape"):
        return f"invalid character {ch} in string escape code"
    return f"invalid character {ch} looking for beginning of value"


def parse_first_value(body: bytes) -> Any:
    """The first JSON value in `body` (trailing bytes ignored, as json.Decoder.Decode does)."""
    text = body.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise GoJSONError("EOF")
    decoder = json.JSONDecoder(
        object_pairs_hook=_Object,
        parse_float=_Number,
        parse_int=_Number,
        parse_constant=_reject_constant,
    )
    try:
        value, _ = decoder.raw_decode(text, start)
    except json.JSONDecodeError as err:
        raise GoJSONError(_syntax_message(text, err)) from None
    except ValueError:
        raise GoJSONError(
            f"invalid character {_quote_char(text[start])} looking for beginning of value"
        ) from None
    return value


# A schema names the Go type of every field we decode:
#   "string", "int", "map[string]string", "map[string]interface {}",
#   Struct(...) for a struct (pointer fields decode null as None), Slice(elem, go_name).


class GoStruct(dict):  # type: ignore[type-arg]
    """A decoded Go struct: its fields in declaration order (encoded with `omitempty`)."""


class Struct:
    def __init__(self, go_name: str, fields: dict[str, Any]) -> None:
        self.go_name = go_name  # e.g. "v1.Layer"
        self.fields = fields  # field name -> type, in declaration order

    @property
    def short_name(self) -> str:
        return self.go_name.split(".")[-1]


class Slice:
    def __init__(self, elem: Any, go_name: str) -> None:
        self.elem = elem
        self.go_name = go_name


def _type_name(kind: Any) -> str:
    if isinstance(kind, Struct | Slice):
        return kind.go_name
    return str(kind)


class _Context:
    def __init__(self) -> None:
        self.first_error: str | None = None
        self.struct = ""
        self.field = ""

    def mismatch(self, value_kind: str, kind: Any) -> None:
        if self.first_error is not None:
            return  # Go keeps the first type error and goes on decoding
        type_name = _type_name(kind)
        if self.struct or self.field:
            where = f"Go struct field {self.struct}.{self.field}"
            self.first_error = f"json: cannot unmarshal {value_kind} into {where} of type {type_name}"
        else:
            self.first_error = f"json: cannot unmarshal {value_kind} into Go value of type {type_name}"


def _decode(value: Any, kind: Any, ctx: _Context) -> Any:
    if value is None:
        return None
    if kind == "string":
        if isinstance(value, str) and not isinstance(value, _Number):
            return str(value)
        ctx.mismatch(_kind(value), kind)
        return None
    if kind == "int":
        if isinstance(value, _Number):
            try:
                number = int(value)
            except ValueError:
                ctx.mismatch(f"number {value}", kind)
                return None
            if -(2**63) <= number < 2**63:
                return number
            ctx.mismatch(f"number {value}", kind)
            return None
        ctx.mismatch(_kind(value), kind)
        return None
    if kind in ("map[string]string", "map[string]interface {}"):
        if not isinstance(value, _Object):
            ctx.mismatch(_kind(value), kind)
            return None
        result: dict[str, Any] = {}
        for key, item in value:
            if kind == "map[string]string":
                decoded = _decode(item, "string", ctx)
                result[key] = decoded if decoded is not None else ""
            else:
                result[key] = _plain(item)
        return result if kind == "map[string]string" else as_go_interface(result)
    if isinstance(kind, Slice):
        if not isinstance(value, list) or isinstance(value, _Object):
            ctx.mismatch(_kind(value), kind)
            return None
        return [_decode(item, kind.elem, ctx) for item in value]
    if isinstance(kind, Struct):
        if not isinstance(value, _Object):
            ctx.mismatch(_kind(value), kind)
            return None
        decoded_struct: dict[str, Any] = {}
        for key, item in value:
            name = _field_for(kind, key)
            if name is None:
                continue
            saved = ctx.struct, ctx.field
            ctx.struct, ctx.field = kind.short_name, name
            decoded_struct[name] = _decode(item, kind.fields[name], ctx)
            ctx.struct, ctx.field = saved
        # declaration order, as Go would re-encode the struct
        return GoStruct((name, decoded_struct[name]) for name in kind.fields if name in decoded_struct)
    raise TypeError(f"unknown schema type {kind!r}")


def _field_for(kind: Struct, key: str) -> str | None:
    if key in kind.fields:
        return key
    for name in kind.fields:
        if name.lower() == key.lower():
            return name
    return None


def _plain(value: Any) -> Any:
    """A decoded interface{} value as plain Python (objects sorted later by as_go_interface)."""
    if isinstance(value, _Number):
        return float(value)
    if isinstance(value, _Object):
        return {key: _plain(item) for key, item in value}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def decode(body: bytes, schema: Struct) -> GoStruct:
    """Decode a request body into `schema` like json.NewDecoder(body).Decode(&envelope)."""
    raw = parse_first_value(body)
    ctx = _Context()
    if raw is None:
        return GoStruct()
    result = _decode(raw, schema, ctx)
    if ctx.first_error is not None:
        raise GoJSONError(ctx.first_error)
    return result if isinstance(result, GoStruct) else GoStruct()
