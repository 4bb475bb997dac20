"""Structural comparison of a primary and a candidate response.

Pure: two `Reply` values and `CompareRules` in, a `Comparison` out. JSON bodies are compared as a
typed tree and every difference is flattened to a path (`$.results[3].price`) with a kind; other
content types are compared as text. Equal subtrees are skipped by C-level equality tests plus a
serialisation of everything `==` called equal (so `true` never equals `1`), which keeps large,
mostly equal bodies fast. Those proofs, and the key-order probe that picks the serialisation,
live in `facade.shadow.jsonequal`.
"""

from __future__ import annotations

import difflib
import enum
import gc
import itertools
import operator
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from facade.shadow.jsonequal import canonical, identical, same, same_document, serialise_same, unlike
from facade.shadow.rules import CompareRules, CompiledRules

__all__ = ["Comparison", "DiffKind", "Difference", "Reply", "compare", "compare_all", "field_of"]

SAMPLE_CHARS = 200
TEXT_DIFF_MAX_LINES = 2000


class DiffKind(str, enum.Enum):
    """What kind of difference was found at a path."""

    VALUE = "value"
    TYPE = "type"
    MISSING = "missing"  # present in the primary, absent in the candidate
    EXTRA = "extra"  # absent in the primary, present in the candidate
    ARRAY_LENGTH = "array_length"
    ARRAY_ORDER = "array_order"
    TEXT = "text"

    def mirrored(self) -> DiffKind:
        """The kind seen when primary and candidate swap places."""
        if self is DiffKind.MISSING:
            return DiffKind.EXTRA
        if self is DiffKind.EXTRA:
            return DiffKind.MISSING
        return self


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response as the comparator sees it. Header names are lower case."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Difference:
    """One difference: a concrete `path`, its `kind`, and short samples of both sides."""

    path: str
    kind: DiffKind
    primary: str | None = None
    candidate: str | None = None

    @property
    def field(self) -> str:
        """The path with array positions generalised, so differences aggregate per field."""
        return field_of(self.path)

    def mirrored(self) -> Difference:
        return Difference(self.path, self.kind.mirrored(), self.candidate, self.primary)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of comparing two replies."""

    differences: tuple[Difference, ...]

    @property
    def matches(self) -> bool:
        return not self.differences

    def fields(self) -> frozenset[str]:
        return frozenset(d.field for d in self.differences)


_INDEX = re.compile(r"\[(?:\d+|[^\]=]+=[^\]]*)\]")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_\-@$]+$")


def field_of(path: str) -> str:
    """`$.results[3].price` → `$.results[*].price`; `$.items[id=7]` → `$.items[*]`."""
    return _INDEX.sub("[*]", path)


def _key_segment(key: str) -> str:
    if key.isascii() and key.isalnum():
        return "." + key
    return "." + key if _PLAIN_KEY.match(key) else "[" + orjson.dumps(key).decode() + "]"


def _sample(value: Any) -> str | None:
    if value is _ABSENT:
        return None
    if isinstance(value, str):
        text = value
    elif type(value) is int:
        text = str(value)  # what orjson writes, for less
    else:
        # A sample shows the first SAMPLE_CHARS characters: a large array or object is cut to
        # its first members before it is serialised, not after.
        head = value
        if isinstance(value, list) and len(value) > _SAMPLE_MEMBERS:
            head = value[:_SAMPLE_MEMBERS]
        elif isinstance(value, dict) and len(value) > _SAMPLE_MEMBERS:
            head = dict(itertools.islice(value.items(), _SAMPLE_MEMBERS))
        try:
            text = orjson.dumps(head).decode()
        except TypeError:
            text = repr(head)
        if head is not value:
            text = text[:-1] + ",…" + text[-1]
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


_SAMPLE_MEMBERS = 50


class _Absent:
    __slots__ = ()


_ABSENT: Any = _Absent()
_JSON_TYPES: dict[type, str] = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _Differ:
    __slots__ = ("rules", "out", "limit", "_ignore", "_segments", "_normalised")

    def __init__(self, rules: CompiledRules, limit: int) -> None:
        self.rules = rules
        self.out: list[Difference] = []
        self.limit = limit
        self._ignore = rules.ignore
        self._segments: dict[str, str] = {}
        # Normalised texts, when no normaliser depends on the path: values such as timestamps
        # repeat in every element of a large array.
        self._normalised: dict[str, str] | None = {} if all(where is None for _, _, where in rules.normalize) else None

    def add(self, path: str, kind: DiffKind, a: Any, b: Any) -> None:
        if len(self.out) < self.limit:
            self.out.append(Difference(path, kind, _sample(a), _sample(b)))

    def ignored(self, path: str) -> bool:
        return any(p.matches(path) for p in self._ignore)

    def segment(self, key: str) -> str:
        seg = self._segments.get(key)
        if seg is None:
            seg = self._segments[key] = _key_segment(key)
        return seg

    def tolerance(self, path: str) -> float:
        for pattern, value in self.rules.tolerances:
            if pattern.matches(path):
                return value
        return self.rules.tolerance

    def normalise(self, path: str, text: str) -> str:
        cache = self._normalised
        if cache is not None:
            done = cache.get(text)
            if done is None:
                done = cache[text] = self._normalise(path, text)
            return done
        return self._normalise(path, text)

    def _normalise(self, path: str, text: str) -> str:
        for regex, replacement, where in self.rules.normalize:
            if where is None or where.matches(path):
                text = regex.sub(replacement, text)
        return text

    def walk(self, path: str, a: Any, b: Any) -> None:
        if len(self.out) >= self.limit or (self._ignore and self.ignored(path)):
            return
        ta = _JSON_TYPES.get(type(a)) or _json_type(a)
        tb = _JSON_TYPES.get(type(b)) or _json_type(b)
        if ta != tb:
            if ta == "string" or tb == "string":
                # A normaliser may map both sides onto the same text (e.g. a number to a mask).
                sa = a if ta == "string" else orjson.dumps(a).decode()
                sb = b if tb == "string" else orjson.dumps(b).decode()
                if self.rules.normalize and self.normalise(path, sa) == self.normalise(path, sb):
                    return
            self.add(path, DiffKind.TYPE, a, b)
        elif ta == "object":
            self.walk_object(path, a, b)
        elif ta == "array":
            self.walk_array(path, a, b)
        elif ta == "number":
            if a != b and abs(a - b) > (self.tolerance(path) if self.rules.tolerances else self.rules.tolerance):
                self.add(path, DiffKind.VALUE, a, b)
        elif ta == "string":
            if a != b and (not self.rules.normalize or self.normalise(path, a) != self.normalise(path, b)):
                self.add(path, DiffKind.VALUE, a, b)
        elif a != b:
            self.add(path, DiffKind.VALUE, a, b)

    def walk_object(self, path: str, a: dict[str, Any], b: dict[str, Any]) -> None:
        out, limit = self.out, self.limit
        keys = list(a)
        if keys == list(b):
            # The same keys in the same order, the usual case: one C-level pass finds the members
            # that differ by `!=`, one serialisation of the others (those blanked) proves them the
            # same types included. If it does not, the member-by-member loop below decides.
            va, vb = list(a.values()), list(b.values())
            differing = list(itertools.compress(range(len(keys)), map(operator.ne, va, vb)))
            proven = True
            if len(differing) < len(keys):
                xs, ys = va.copy(), vb.copy()
                for i in differing:
                    xs[i] = ys[i] = None
                proven = serialise_same(xs, ys)
            if proven:
                for i in differing:
                    if len(out) >= limit:
                        return
                    self.walk(path + self.segment(keys[i]), va[i], vb[i])
                return
        ignore, get = self._ignore, b.get
        missing = 0
        for key, va in a.items():
            if len(out) >= limit:
                return
            vb = get(key, _ABSENT)
            if vb is _ABSENT:
                missing += 1
                sub = path + self.segment(key)
                if not (ignore and self.ignored(sub)):
                    self.add(sub, DiffKind.MISSING, va, _ABSENT)
                continue
            kind = type(va)
            # `same` inlined: this loop runs for every member of every object that differs.
            if kind is type(vb) and va == vb and ((kind is not dict and kind is not list) or identical(va, vb)):
                continue
            self.walk(path + self.segment(key), va, vb)
        if len(b) > len(a) - missing:  # `b` has keys that `a` lacks
            for key, vb in b.items():
                if key not in a:
                    sub = path + self.segment(key)
                    if not (ignore and self.ignored(sub)):
                        self.add(sub, DiffKind.EXTRA, _ABSENT, vb)

    def walk_array(self, path: str, a: list[Any], b: list[Any]) -> None:
        for pattern, key in self.rules.array_keys:
            if pattern.matches(path) and self.walk_keyed(path, key, a, b):
                return
        unordered = any(p.matches(path) for p in self.rules.unordered)
        if len(a) == len(b) and not unordered:
            pairs, canon = unlike(a, b)
            if not pairs:
                return
            for i in pairs:
                if i not in canon:
                    canon[i] = (canonical(a[i]), canonical(b[i]))
            if Counter(ca for ca, _ in canon.values()) == Counter(cb for _, cb in canon.values()):
                self.add(path, DiffKind.ARRAY_ORDER, a, b)
                return
            for i in pairs:
                self.walk(f"{path}[{i}]", a[i], b[i])
            return
        if unordered:
            ca, cb = [canonical(x) for x in a], [canonical(y) for y in b]
            common = Counter(ca) & Counter(cb)
            left_a = _leftovers(a, ca, common)
            left_b = _leftovers(b, cb, common)
            if len(a) != len(b):
                self.add(path, DiffKind.ARRAY_LENGTH, len(a), len(b))
            # Leftovers have no counterpart by position; `[*]` keeps the path the same both ways.
            for (_, x), (_, y) in zip(left_a, left_b):
                self.walk(f"{path}[*]", x, y)
            return
        self.add(path, DiffKind.ARRAY_LENGTH, len(a), len(b))
        common_length = min(len(a), len(b))
        for i in unlike(a[:common_length], b[:common_length])[0]:
            self.walk(f"{path}[{i}]", a[i], b[i])

    def walk_keyed(self, path: str, key: str, a: list[Any], b: list[Any]) -> bool:
        names_a = _key_values(a, key)
        names_b = _key_values(b, key)
        if names_a is None or names_b is None:
            return False  # not every element carries the key: fall back to positions
        # An element is named by its key's text: a string as it is, anything else as JSON (`7`,
        # `true`). Integer keys on both sides name themselves: their text matches the same way.
        numbered = _all_ints(names_a) and _all_ints(names_b)
        if not numbered:
            names_a, names_b = _key_names(names_a), _key_names(names_b)
        ka, kb = dict(zip(names_a, a)), dict(zip(names_b, b))
        out, limit, ignore = self.out, self.limit, self._ignore
        equal = []
        missing = 0
        for k, x in ka.items():
            if len(out) >= limit:
                return True  # nothing more can be recorded, here or anywhere else
            y = kb.get(k, _ABSENT)
            if y is _ABSENT:
                missing += 1
                sub = f"{path}[{key}={k}]"
                if not (ignore and self.ignored(sub)):
                    self.add(sub, DiffKind.MISSING, x, _ABSENT)
            elif x == y:
                equal.append(k)
            elif ignore:
                self.walk(f"{path}[{key}={k}]", x, y)
            else:
                self.walk_object(f"{path}[{key}={k}]", x, y)  # what `walk` would do: both are objects
        if equal and not identical([ka[k] for k in equal], [kb[k] for k in equal]):
            for k in equal:
                if len(out) >= limit:
                    break
                if not same(ka[k], kb[k]):
                    self.walk(f"{path}[{key}={k}]", ka[k], kb[k])
        if len(kb) > len(ka) - missing:  # `b` has elements that `a` lacks
            for k, y in kb.items():
                if k not in ka:
                    sub = f"{path}[{key}={k}]"
                    if not (ignore and self.ignored(sub)):
                        self.add(sub, DiffKind.EXTRA, _ABSENT, y)
        order_a = [k for k in ka if k in kb]
        order_b = [k for k in kb if k in ka]
        if order_a != order_b and not any(p.matches(path) for p in self.rules.unordered):
            if numbered:
                order_a, order_b = list(map(str, order_a)), list(map(str, order_b))
            self.add(path, DiffKind.ARRAY_ORDER, order_a, order_b)
        return True


def _leftovers(items: list[Any], canon: list[bytes], common: Counter[bytes]) -> list[tuple[int, Any]]:
    budget = Counter(common)
    out = []
    for i, (item, c) in enumerate(zip(items, canon)):
        if budget[c] > 0:
            budget[c] -= 1
        else:
            out.append((i, item))
    return out


def _key_values(items: list[Any], key: str) -> list[Any] | None:
    try:
        return list(map(operator.itemgetter(key), items))
    except (KeyError, TypeError):
        return None  # an element is not an object, or lacks the key


def _all_ints(values: list[Any]) -> bool:
    return set(map(type, values)) <= {int}


def _key_names(values: list[Any]) -> list[Any]:
    if set(map(type, values)) <= {str}:
        return values
    return [v if type(v) is str else orjson.dumps(v).decode() for v in values]


def _is_json(reply: Reply) -> bool:
    ct = reply.content_type
    return ct == "application/json" or ct.endswith("+json")


def _parse(reply: Reply) -> Any:
    try:
        return orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return _ABSENT


def _text_diff(differ: _Differ, a: bytes, b: bytes) -> None:
    ta = a.decode("utf-8", "replace")
    tb = b.decode("utf-8", "replace")
    if ta == tb or (differ.rules.normalize and differ.normalise("body", ta) == differ.normalise("body", tb)):
        return
    la = differ.normalise("body", ta).splitlines()[:TEXT_DIFF_MAX_LINES]
    lb = differ.normalise("body", tb).splitlines()[:TEXT_DIFF_MAX_LINES]
    removed = added = 0
    first: tuple[str, str] | None = None
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, la, lb, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        removed += i2 - i1
        added += j2 - j1
        if first is None:
            first = ("\n".join(la[i1 : min(i2, i1 + 3)]), "\n".join(lb[j1 : min(j2, j1 + 3)]))
    summary = f"{removed} line(s) removed, {added} added"
    if first is None:  # only differences past the line cap, or in line endings
        first = (ta[:SAMPLE_CHARS], tb[:SAMPLE_CHARS])
    differ.out.append(Difference("body", DiffKind.TEXT, _sample(f"{summary}: {first[0]}"), _sample(f"{summary}: {first[1]}")))


def compare(primary: Reply, candidate: Reply, rules: CompareRules | None = None, *, limit: int = 200) -> Comparison:
    """Compare `candidate` against `primary` under `rules`; at most `limit` differences are kept."""
    return compare_all(primary, (candidate,), rules, limit=limit)[0]


def compare_all(primary: Reply, others: Sequence[Reply], rules: CompareRules | None = None, *, limit: int = 200) -> list[Comparison]:
    """Compare several replies against one primary, parsing the primary's body at most once."""
    compiled = (rules or _DEFAULT_RULES)._compiled
    parsed: list[Any] = []

    def primary_doc() -> Any:
        if not parsed:
            parsed.append(_parse(primary) if _is_json(primary) else _ABSENT)
        return parsed[0]

    # Parsing a large body allocates tens of thousands of containers, and the collections they
    # trigger would traverse them for nothing: parsed JSON holds no cycles. Paused, not turned off:
    # the collector runs again as before once the comparison is done.
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return [_compare_one(primary, primary_doc, other, compiled, limit) for other in others]
    finally:
        if paused:
            gc.enable()


def _compare_one(primary: Reply, primary_doc: Callable[[], Any], candidate: Reply, compiled: CompiledRules, limit: int) -> Comparison:
    differ = _Differ(compiled, limit)
    if primary.status != candidate.status and not differ.ignored("status"):
        differ.add("status", DiffKind.VALUE, primary.status, candidate.status)
    for name in compiled.headers:
        path = "headers." + name
        if differ.ignored(path):
            continue
        ha, hb = primary.headers.get(name), candidate.headers.get(name)
        if ha is None and hb is not None:
            differ.add(path, DiffKind.EXTRA, _ABSENT, hb)
        elif hb is None and ha is not None:
            differ.add(path, DiffKind.MISSING, ha, _ABSENT)
        elif ha != hb and ha is not None and hb is not None and differ.normalise(path, ha) != differ.normalise(path, hb):
            differ.add(path, DiffKind.VALUE, ha, hb)
    if primary.body == candidate.body or differ.ignored("$"):
        return Comparison(tuple(differ.out))
    if primary.truncated or candidate.truncated:
        _text_diff(differ, primary.body, candidate.body)
        return Comparison(tuple(differ.out))
    ja, jb = _is_json(primary), _is_json(candidate)
    a = primary_doc() if ja else _ABSENT
    b = _parse(candidate) if jb else _ABSENT
    if a is not _ABSENT and b is not _ABSENT:
        if not same_document(a, b):
            differ.walk("$", a, b)
    elif ja != jb and (a is not _ABSENT or b is not _ABSENT):
        differ.add("$", DiffKind.TYPE, primary.content_type or "none", candidate.content_type or "none")
    else:
        _text_diff(differ, primary.body, candidate.body)
    return Comparison(tuple(differ.out))


_DEFAULT_RULES = CompareRules()
