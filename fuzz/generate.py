"""Malformed and hostile requests for every rpc, drawn from a seeded generator.

Each case is the bytes of one request, not a message: most are messages of the rpc's own
type with hostile field values (chosen by field name and type from the pools below), some
are those bytes mutated (flipped, cut, padded, invalid UTF-8), some are random bytes. The
same seed gives the same cases in the same order, so a failure found in CI can be replayed.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
import uuid
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from google.protobuf import descriptor, struct_pb2
from google.protobuf.message import Message
from okra_client import gen

__all__ = ["METHODS", "FuzzCase", "Method", "RequestGenerator"]

FieldDescriptor = descriptor.FieldDescriptor


@dataclass(frozen=True)
class Method:
    """One rpc: its path, request type and whether it streams its answer."""

    path: str
    request: type[Message]
    streaming: bool

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


def _proto_modules() -> list[ModuleType]:
    """Every generated `_pb2` module of the client: a new proto file's services are fuzzed too."""
    names = pkgutil.walk_packages(gen.__path__, f"{gen.__name__}.")
    return [importlib.import_module(n.name) for n in names if n.name.endswith("_pb2")]


def _methods() -> tuple[Method, ...]:
    found = []
    for module in _proto_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                request = getattr(module, method.input_type.name)
                path = f"/{service.full_name}/{method.name}"
                found.append(Method(path, request, method.server_streaming))
    return tuple(found)


# Every rpc of every service, read from the descriptors so a new rpc is fuzzed too.
METHODS = _methods()


@dataclass(frozen=True)
class FuzzCase:
    """One request to send: the rpc, its bytes, its metadata and how it was made."""

    method: Method
    payload: bytes
    metadata: tuple[tuple[str, str], ...]
    kind: str  # "fields", "mutated" or "random"


def _deep(depth: int, leaf: Any = "x") -> Any:
    value: Any = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


STRINGS: tuple[str, ...] = (
    "",
    " ",
    "a",
    "x" * 300,
    "x" * 5000,
    "\n",
    "ok\n",
    "\x00",
    "\u0661\u0662",  # Arabic-Indic digits: \d matches them, Redis does not
    "\u202e\u0645",  # right-to-left override
    "\U0001f600" * 10,
    "../../etc/passwd",
    "${ def f: f; f }",
    "${ [range(1e9)] | length }",
    "*",
    "{a}",
    "okra:{x}:inbox",
    "%s%s%n",
    "' OR 1=1 --",
    "<script>",
    "99999999999999999999-0",
    "1-1",
    "-1",
    "0-0",
    "18446744073709551615-18446744073709551615",
)
WORKFLOW_IDS = (
    "fuzz.wait.1.0.0",
    "fuzz.wait",
    "fuzz.quick.1.0.0",
    "fuzz.quick",
    "fuzz.missing.1.0.0",
    "Fuzz.Wait",
    "fuzz.wait.1.0",
    "fuzz.wait.1.0.0\n",
    "a" * 70 + ".b",
)
CRONS = ("* * * * *", "0 0 31 2 *", "*/0 * * * *", "60 * * * *", "@yearly", "* * * * * * *")
TIME_ZONES = ("UTC", "Europe/Paris", "Mars/Olympus", "../../etc/localtime", "")
EVENT_TYPES = ("com.example.paid", "io.okra.effect.result", "go", "")
POLICY_TEXTS = (
    '{"policy.workflow.query.maxResults": 50}',
    "policy:\n  workflow:\n    run:\n      blocked: [nobody.*]\n",
    "[" * 5000 + "]" * 5000,
    "a: " + "[" * 200 + "]" * 200,
    '{"a": ' * 3000 + "1" + "}" * 3000,
    "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n"
        for i in range(9)
    ),
    '{"policy.workflow.run.condition": "' + "(" * 1000 + "true" + ")" * 1000 + '"}',
    '{"policy.workflow.run.condition": "1' + "+1" * 1500 + ' == 2"}',
    '{"policy.workflow.run.condition": "has(request.auth.claims.role)"}',
    '{"policy.workflow.run.condition": "!has(request.auth.claims.role) || true"}',
    "{not json",
    "- a\n- b\n",
    "a: 1\na: 2\n",
)
INTS = (0, 1, -1, 2, 100, 1000, 1001, 2**31 - 1, -(2**31), 999)
INT64S = (*INTS, 2**62, -(2**62), 2**63 - 1, -(2**63))
SECONDS = (0, -1, 1, 1_700_000_000, 253402300799, 253402300800, -62135596800, 2**40, -(2**62))
NANOS = (0, 1, 999_999_999, 1_000_000_000, -1)


class RequestGenerator:
    """Cases for every rpc from `seed`; `instance_ids` are real instances to aim at."""

    def __init__(self, seed: int, *, instance_ids: list[str], admin_token: str) -> None:
        self._random = random.Random(seed)
        self._instance_ids = instance_ids
        self._admin = (("authorization", f"Bearer {admin_token}"),)

    def cases(self, count: int) -> list[FuzzCase]:
        """`count` cases, spread over the rpcs in turn so that each gets its share."""
        return [self._case(METHODS[n % len(METHODS)]) for n in range(count)]

    def _case(self, method: Method) -> FuzzCase:
        pick = self._random.random()
        message = method.request()
        self._fill(message, depth=0)
        payload = message.SerializeToString()
        kind = "fields"
        if pick < 0.2:
            payload, kind = self._mutate(payload), "mutated"
        elif pick < 0.25:
            size = self._random.randrange(0, 64)
            payload, kind = self._random.randbytes(size), "random"
        return FuzzCase(method, payload, self._metadata(), kind)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        pick = self._random.random()
        if pick < 0.8:
            return self._admin
        if pick < 0.85:
            return (("authorization", "Bearer not.a.token"),)
        if pick < 0.9:
            # Metadata values are printable ASCII, or the client refuses to send them.
            printable = [w for w in WORKFLOW_IDS if w.isprintable() and w.isascii()]
            return (("okra-caller-workflow", self._random.choice(printable)),)
        return ()

    def _mutate(self, payload: bytes) -> bytes:
        data = bytearray(payload or b"\x0a\x00")
        for _ in range(self._random.randrange(1, 4)):
            at = self._random.randrange(len(data))
            action = self._random.randrange(4)
            if action == 0:
                data[at] ^= 1 << self._random.randrange(8)
            elif action == 1:
                del data[at:]
                data.extend(b"\xff")
            elif action == 2:
                data[at:at] = b"\xff\xfe"
            else:
                data[at:at] = self._random.randbytes(self._random.randrange(1, 8))
        return bytes(data)

    # -- field values ---------------------------------------------------------------------

    def _fill(self, message: Message, *, depth: int) -> None:
        full_name = message.DESCRIPTOR.full_name
        if full_name == "google.protobuf.Value":
            _set_value(message, self._json(depth=0))  # type: ignore[arg-type]
            return
        if full_name == "google.protobuf.Struct":
            message.update(self._object())  # type: ignore[attr-defined]
            return
        if full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            message.seconds = self._random.choice(SECONDS)  # type: ignore[attr-defined]
            message.nanos = self._random.choice(NANOS)  # type: ignore[attr-defined]
            return
        oneofs_set: set[str] = set()
        for field in message.DESCRIPTOR.fields:
            oneof = field.containing_oneof
            if oneof is not None and oneof.name in oneofs_set:
                continue
            if self._random.random() < 0.3:
                continue
            if oneof is not None:
                oneofs_set.add(oneof.name)
            self._fill_field(message, field, depth)

    def _fill_field(self, message: Message, field: Any, depth: int) -> None:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(message, field.name)
            for _ in range(self._random.choice((1, 2, 70))):
                target[self._text("key")] = self._text(field.name)
            return
        if field.is_repeated:
            target = getattr(message, field.name)
            for _ in range(self._random.choice((0, 1, 3, 200))):
                if field.message_type is not None:
                    self._fill(target.add(), depth=depth + 1)
                else:
                    target.append(self._scalar(field))
            return
        if field.message_type is not None:
            if depth < 4:
                self._fill(getattr(message, field.name), depth=depth + 1)
            return
        setattr(message, field.name, self._scalar(field))

    def _scalar(self, field: Any) -> Any:
        kind = field.type
        if kind == FieldDescriptor.TYPE_STRING:
            return self._text(field.name)
        if kind == FieldDescriptor.TYPE_BOOL:
            return self._random.random() < 0.5
        if kind == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            values = [v.number for v in field.enum_type.values]
            return self._random.choice([*values, 999, -1])
        if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
            return self._random.choice(INT64S)
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return self._random.choice((0.0, -1.0, 1e308, float("nan"), float("inf")))
        if kind == FieldDescriptor.TYPE_BYTES:
            return self._random.randbytes(self._random.randrange(0, 32))
        return self._random.choice(INTS)

    def _text(self, name: str) -> str:
        """A hostile value, usually one that fits what the field is named for."""
        if self._random.random() < 0.3:
            return self._random.choice(STRINGS)
        pools: dict[str, tuple[str, ...]] = {
            "workflow_id": WORKFLOW_IDS,
            "cron_expression": CRONS,
            "time_zone": TIME_ZONES,
            "type": EVENT_TYPES,
            "text": POLICY_TEXTS,
            "signal": ("go", "approve", "x" * 129, "a b", "io.okra.effect.result"),
        }
        if name in pools:
            return self._random.choice(pools[name])
        if name in ("instance_id", "schedule_id"):
            return self._instance_id()
        if name in ("task_id", "task_ids"):
            return self._random.choice(
                ("fuzz/1-1", "fuzz/99999999999999999999-1", "Fuzz/1-1", f"fuzz/{self._uuid()}")
            )
        if name in ("cursor", "signal_id", "request_id", "id"):
            return self._random.choice(("1-0", "0-0", "abc", "\u0661-\u0661", self._uuid()))
        return self._random.choice(STRINGS)

    def _instance_id(self) -> str:
        pick = self._random.random()
        if pick < 0.5 and self._instance_ids:
            return self._random.choice(self._instance_ids)
        if pick < 0.7:
            return self._uuid()
        if pick < 0.8 and self._instance_ids:
            return self._random.choice(self._instance_ids) + "\n"
        return self._random.choice(STRINGS)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    def _json(self, *, depth: int) -> Any:
        pick = self._random.random()
        if pick < 0.1:
            return _deep(self._random.choice((20, 31, 32, 33, 40, 45)))
        if pick < 0.15:
            return list(range(self._random.choice((100, 5000))))
        if pick < 0.4 and depth < 3:
            return self._object(depth + 1)
        return self._random.choice(
            (None, True, 0, -1, 1e308, 2**53 + 1, "x", "\u0661", "x" * 2000, [], {})
        )

    def _object(self, depth: int = 0) -> dict[str, Any]:
        size = self._random.choice((0, 1, 3, 60))
        return {self._text("key"): self._json(depth=depth + 1) for _ in range(size)}


def _set_value(target: struct_pb2.Value, data: Any) -> None:
    """A Value from JSON-like data without json_format's recursion (depth stays under 50)."""
    if data is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        target.bool_value = data
    elif isinstance(data, int | float):
        target.number_value = float(data)
    elif isinstance(data, str):
        target.string_value = data
    elif isinstance(data, dict):
        target.struct_value.SetInParent()
        for key, value in data.items():
            _set_value(target.struct_value.fields[key], value)
    else:
        target.list_value.SetInParent()
        for value in data:
            _set_value(target.list_value.values.add(), value)
