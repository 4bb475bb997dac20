"""Proofs that two parsed JSON documents are the same JSON, types included.

`==` on parsed JSON is fast but loose: it says `True == 1` and `1 == 1.0`. Equal serialisations are
not, so a value is proven the same as another only by equal bytes from one serialisation of both.
The serialisation is chosen by a probe of a few objects' key order (`key_orders`): unsorted when
both sides list keys alike, sorted (or as it is, for a side that sorts its keys already) otherwise.
The probe is only a guess and equal bytes are the only proof, so a wrong guess costs time, never a
wrong answer: unequal bytes fall back to the sorted serialisation or to a closer look.

Pure functions over the values `orjson.loads` returns; `facade.shadow.compare` uses them to skip the equal
subtrees of large, mostly equal bodies.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable
from typing import Any

import orjson

__all__ = [
    "canon_equal",
    "canonical",
    "identical",
    "key_orders",
    "same",
    "same_document",
    "serialise_same",
    "unlike",
]

_dumps = orjson.dumps
# The sorted-key serialisation: the same bytes for the same JSON, whatever its key order.
canonical: Callable[[Any], bytes] = functools.partial(orjson.dumps, option=orjson.OPT_SORT_KEYS)
_PROBE_MIN = 16  # members above which a container's key order is probed before it is serialised
_PROBE_NODES = 12  # containers one probe looks at


def key_orders(a: Any, b: Any) -> tuple[bool, bool, bool]:
    """A guess, from a few objects near the top and along the first and last array members: do both
    sides list keys in the same order, does `a` list them sorted, does `b`?

    The guess only picks the serialisation that proves two values the same; a wrong guess costs
    time, never a wrong answer.
    """
    agree = sorted_a = sorted_b = True
    todo = [(a, b)]
    for _ in range(_PROBE_NODES):
        if not todo:
            break
        x, y = todo.pop()
        kind = type(x)
        if kind is not type(y):
            continue
        if kind is dict:
            kx, ky = list(x), list(y)
            agree = agree and kx == ky
            sorted_a = sorted_a and kx == sorted(kx)
            sorted_b = sorted_b and ky == sorted(ky)
            if not (agree or sorted_a or sorted_b):
                break
            todo.extend((v, y[k]) for k, v in x.items() if (type(v) is dict or type(v) is list) and k in y)
        elif kind is list and x and y:
            todo.append((x[-1], y[-1]))
            todo.append((x[0], y[0]))
    return agree, sorted_a, sorted_b


def canon_equal(a: Any, b: Any, sorted_a: bool, sorted_b: bool) -> bool:
    """Whether the sorted-key serialisations of `a` and `b` are equal. A side that lists its keys
    sorted already is serialised as it is, which is cheaper: equal bytes prove the same JSON whichever
    option made them, and unequal ones are made again sorted."""
    ba = _dumps(a) if sorted_a else canonical(a)
    bb = _dumps(b) if sorted_b else canonical(b)
    if ba == bb:
        return True
    if not (sorted_a or sorted_b) or len(ba) != len(bb):
        return False  # the order of keys never changes the length
    return (canonical(a) if sorted_a else ba) == (canonical(b) if sorted_b else bb)


def serialise_same(a: Any, b: Any) -> bool:
    """Whether `a` and `b` serialise to the same bytes, unsorted or else sorted. Sorting keys never
    changes the length, so unequal lengths unsorted settle it without sorting."""
    ba, bb = _dumps(a), _dumps(b)
    return ba == bb or (len(ba) == len(bb) and canonical(a) == canonical(b))


def identical(a: Any, b: Any) -> bool:
    """Whether containers `a` and `b`, equal by `==`, are the same JSON types included: `==` says
    `True == 1`, their serialisations tell them apart. Unsorted serialisation is cheaper but depends
    on key order, so large containers whose keys are not in the same order go straight to sorted."""
    if len(a) > _PROBE_MIN:
        agree, sorted_a, sorted_b = key_orders(a, b)
        if not agree:
            return canon_equal(a, b, sorted_a, sorted_b)
    return serialise_same(a, b)


def same(a: Any, b: Any) -> bool:
    """Whether `a` and `b` are the same JSON, types included (`true` is not `1`, `1` is not `1.0`
    here; the leaf comparison settles `1` against `1.0` as equal numbers)."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict or kind is list:
        return a == b and identical(a, b)
    return bool(a == b)


def same_document(a: Any, b: Any) -> bool:
    """`same` for two whole bodies, choosing the proof by a probe of their key order."""
    kind = type(a)
    if kind is not type(b) or (kind is not dict and kind is not list):
        return same(a, b)
    agree, sorted_a, sorted_b = key_orders(a, b)
    if agree:
        # `==` fails fast on a difference; equal bodies then serialise to the same bytes unsorted.
        return a == b and serialise_same(a, b)
    # Keys in another order (one side sorts them, say): the sorted serialisations decide alone, as
    # `==` first would cost as much again on equal bodies, the common case.
    return canon_equal(a, b, sorted_a, sorted_b)


def unlike(a: list[Any], b: list[Any]) -> tuple[list[int], dict[int, tuple[bytes, bytes]]]:
    """The positions where equal-length arrays hold values that are not `same`, ascending, and the
    sorted serialisations of the containers among them."""
    n = len(a)
    if not n:
        return [], {}
    canon: dict[int, tuple[bytes, bytes]] = {}
    first = a[0]
    if type(first) is dict or type(first) is list:
        # One serialisation per member and side: equal bytes prove a pair the same. Unequal bytes
        # may still be the same JSON with keys in another order, so they are settled one by one.
        agree, sorted_a, sorted_b = key_orders(a, b)
        enc_a = _dumps if agree or sorted_a else canonical
        enc_b = _dumps if agree or sorted_b else canonical
        pairs = []
        for i in itertools.compress(range(n), map(operator.ne, map(enc_a, a), map(enc_b, b))):
            x, y = a[i], b[i]
            kind = type(x)
            if kind is not type(y):
                pairs.append(i)
            elif kind is dict or kind is list:
                cx, cy = canonical(x), canonical(y)
                if cx != cy:
                    canon[i] = (cx, cy)
                    pairs.append(i)
            elif x != y:
                pairs.append(i)
        return pairs, canon
    # Scalars: `!=` finds the values that differ; the positions it calls equal are proven equal
    # types included by one serialisation of all of them (the others blanked), and only when that
    # fails (a boolean for a number, `1` for `1.0`) position by position.
    differing = list(itertools.compress(range(n), map(operator.ne, a, b)))
    if len(differing) < n:
        xs, ys = a, b
        if differing:
            xs, ys = list(a), list(b)
            for i in differing:
                xs[i] = ys[i] = None
        if not identical(xs, ys):
            known = set(differing)
            differing = [i for i in range(n) if i in known or not same(a[i], b[i])]
    return differing, canon
