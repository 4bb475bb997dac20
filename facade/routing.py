"""The route table: which route a request takes and which upstream serves it. Pure, no I/O.

Path templates (see `facade.config.parse_path_template`): literal segments, `{name}` or `*` for
exactly one non-empty segment, `**` as the last segment for zero or more segments. So
`/api/products/**` matches `/api/products`, `/api/products/` and `/api/products/7/reviews` but not
`/api/productsx`; `/api/products/{id}` matches `/api/products/7` but neither `/api/products/` nor
`/api/products/7/`: a trailing slash is significant (upstreams see it too). Paths are matched as
the ASGI server hands them over (percent-decoded `scope["path"]`).

Only canonical paths are matched (`path_problem`): a path with a `.` or `..` segment, one that
percent-encodes a character that needs no encoding (letters, digits, `-._~`), or one with an encoded
slash or backslash is refused, so the path a route (or the admin prefix) is chosen by is the one
the upstream sees, byte for byte. nginx resolves such paths instead; resolving and then forwarding the raw form would let
`/api/products/../../admin` reach the catalog as itself.

Assignment: `bucket = blake2b(route id, sticky key) mod 10000`; upstream *i* of the route's `to:`
(in declared order) owns buckets `[c[i-1], c[i])` where `c` are the cumulative weights × 100.
With two upstreams, any weight change moves users across the single boundary only, in one
direction: raising the new upstream's weight only moves users old → new, and weight 0 sends nobody.
With more upstreams the rule is monotone in list order: when weight only moves toward upstreams
listed later (no cumulative sum grows), no user ever moves to an earlier-listed upstream — so list
upstreams oldest first. Replicas agree without sharing state: the bucket is a stable hash.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from facade.config import (
    FacadeConfig,
    MatchConfig,
    RouteConfig,
    UpstreamConfig,
    parse_path_template,
)

__all__ = ["BUCKETS", "Route", "RouteTable", "canonical_path", "override", "path_problem", "sticky_key"]

BUCKETS = 10_000
"""Buckets per route: weights have a resolution of 0.01%."""

DEFAULT_ROUTE_ID = "default"

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^[0-9a-fA-F]{16,}$")

# A compiled condition: takes the request's value(s) for one name, says whether it holds.
_Check = Callable[[str], bool]


def _compile_condition(value: str) -> _Check:
    if value.startswith("~"):
        return re.compile(value[1:]).fullmatch  # type: ignore[return-value]
    literal = value[1:] if value.startswith("\\~") else value
    return literal.__eq__


def canonical_segment(segment: str) -> str:
    """`{id}` for numbers, `{uuid}` for UUIDs, `{hex}` for long hex tokens, else the segment."""
    if segment.isascii() and segment.isdigit():
        return "{id}"
    if len(segment) >= 16:
        if len(segment) in (32, 36) and _UUID.match(segment):
            return "{uuid}"
        if _HEX.match(segment):
            return "{hex}"
    return segment


def canonical_path(template: tuple[str, ...], path: str) -> str:
    """The endpoint path of `path` under a template's segments.

    Template literals and `{name}` stay as written (`*` becomes `{*}`); the part matched by `**`
    has identifiers replaced (`canonical_segment`), so stats aggregate per endpoint.
    """
    parts = path.split("/")[1:] if path.startswith("/") else [path]
    out: list[str] = []
    for index, segment in enumerate(template):
        if segment == "**":
            out.extend(canonical_segment(part) for part in parts[index:])
            break
        out.append("{*}" if segment == "*" else segment)
    return "/" + "/".join(out)


_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
# Escapes that make a path non-canonical: unreserved characters (RFC 3986 2.3), whose encoded and
# plain forms are the same path, and the separators, whose encoded forms are not.
_NEEDLESS_ESCAPES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SEPARATOR_ESCAPES = frozenset(b"/\\")


def path_problem(raw_path: bytes, path: str) -> str | None:
    """Why a request path is not canonical (a sentence naming the fix), or None when it is.

    `raw_path` is the path as sent, `path` its percent-decoded form. Cheap for the usual path
    with no `%` and no `/.`: two substring tests.
    """
    if b"%" in raw_path:
        for match in _ESCAPE.finditer(raw_path):
            code = int(match[1], 16)
            shown = raw_path.decode("latin-1")
            if code in _NEEDLESS_ESCAPES:
                plain = _ESCAPE.sub(lambda m: bytes([int(m[1], 16)]) if int(m[1], 16) in _NEEDLESS_ESCAPES else m[0], raw_path)
                return (
                    f"the path {shown!r} percent-encodes {chr(code)!r} ({match[0].decode()}), which needs no encoding; "
                    f"send it as {_resolved(plain.decode('latin-1').split('/'))!r}"
                )
            if code in _SEPARATOR_ESCAPES:
                return (
                    f"the path {shown!r} has an encoded {chr(code)!r} ({match[0].decode()}), which the façade does not route on; "
                    "send the path without it"
                )
    if "/." in path:
        segments = path.split("/")
        if "." in segments or ".." in segments:
            return f"the path {path!r} has a dot segment ('.' or '..'), which the façade does not resolve; send it as {_resolved(segments)!r}"
    return None


def _resolved(segments: list[str]) -> str:
    """The path with dot segments removed (RFC 3986 5.2.4), for the error message's hint."""
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    trailing = segments[-1] in (".", "..")
    return "/" + "/".join(out) + ("/" if trailing and out else "")


def _seed(route_id: str) -> Any:
    """blake2b already fed with the route id: bucket = hash(route id, NUL, sticky key)."""
    hasher = hashlib.blake2b(digest_size=8)
    hasher.update(route_id.encode("utf-8") + b"\0")
    return hasher


@dataclass(frozen=True, slots=True)
class _PathMatcher:
    """One path template compiled to the cheapest test: equality, a prefix, or segment checks."""

    kind: int  # EXACT, PREFIX or SEGMENTS
    text: str  # EXACT: the path; PREFIX: the prefix without trailing slash; SEGMENTS: literal lead
    segments: tuple[str | None, ...]  # SEGMENTS: literal, or None for a one-segment wildcard
    rest: bool  # SEGMENTS: ends with **

    @classmethod
    def compile(cls, template: str) -> _PathMatcher:
        segments = parse_path_template(template)
        rest = bool(segments) and segments[-1] == "**"
        fixed = segments[:-1] if rest else segments
        wildcard = [segment == "*" or segment.startswith("{") for segment in fixed]
        if not any(wildcard) and not rest:
            return cls(EXACT, template, (), False)
        if not any(wildcard):
            return cls(PREFIX, "/" + "/".join(fixed) if fixed else "", (), True)
        lead = fixed[: wildcard.index(True)]
        compiled = tuple(None if is_wild else segment for segment, is_wild in zip(fixed, wildcard))
        # Every matching path starts with the literal segments before the first wildcard.
        return cls(SEGMENTS, "/" + "".join(segment + "/" for segment in lead), compiled, rest)

    def matches(self, path: str) -> bool:
        kind = self.kind
        if kind == EXACT:
            return path == self.text
        if kind == PREFIX:
            prefix = self.text
            return (path == prefix or path.startswith(prefix + "/")) if prefix else path.startswith("/")
        if not path.startswith(self.text):
            return False
        parts = path.split("/")
        wanted = self.segments
        count = len(parts) - 1
        if count < len(wanted) or (not self.rest and count != len(wanted)):
            return False
        for index, expected in enumerate(wanted, 1):
            actual = parts[index]
            if expected is None:
                if not actual:
                    return False
            elif expected != actual:
                return False
        return True


EXACT, PREFIX, SEGMENTS = 0, 1, 2


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """A compiled route: its config, path matcher, conditions and weight boundaries."""

    id: str
    config: RouteConfig
    template: str
    index: int
    segments: tuple[str, ...]
    upstreams: tuple[str, ...]
    """Upstream names in declared order (including those at weight 0)."""
    bounds: tuple[int, ...]
    """Cumulative weights in buckets: upstream i owns buckets [bounds[i-1], bounds[i])."""
    methods: frozenset[str] | None
    _path: _PathMatcher = field(repr=False)
    _headers: tuple[tuple[str, _Check], ...] = field(repr=False)
    _cookies: tuple[tuple[str, _Check], ...] = field(repr=False)
    _query: tuple[tuple[str, _Check], ...] = field(repr=False)
    _only: str | None = field(repr=False)
    _seed: Any = field(repr=False)
    _conditional: bool = field(repr=False)
    overridable: frozenset[str] = frozenset()
    """Upstreams the override header may pick on this route: its own and its shadow target."""

    @classmethod
    def compile(cls, config: RouteConfig, index: int) -> Route:
        match = config.match
        names = tuple(config.to)
        cumulative, bounds = 0, []
        for name in names:
            cumulative += round(config.to[name] * 100)
            bounds.append(cumulative)
        if bounds:
            # Rounding never leaves buckets unowned: the last boundary is the end.
            bounds[-1] = BUCKETS
        serving = [name for name in names if config.to[name] > 0]
        return cls(
            id=config.id,
            config=config,
            template=match.path,
            index=index,
            segments=parse_path_template(match.path),
            upstreams=names,
            bounds=tuple(bounds),
            methods=frozenset(match.methods) if match.methods is not None else None,
            _path=_PathMatcher.compile(match.path),
            _headers=tuple((name.lower(), _compile_condition(value)) for name, value in match.headers.items()),
            _cookies=tuple((name, _compile_condition(value)) for name, value in match.cookies.items()),
            _query=tuple((name, _compile_condition(value)) for name, value in match.query.items()),
            _only=serving[0] if len(serving) == 1 else None,
            _seed=_seed(config.id),
            _conditional=bool(match.headers or match.cookies or match.query),
            overridable=frozenset(names) | ({config.shadow.to} if config.shadow is not None else frozenset()),
        )

    @property
    def weights(self) -> Mapping[str, float]:
        """Weights in percent by upstream, in declared order."""
        return MappingProxyType(dict(self.config.to))

    def matches(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        query: Mapping[str, list[str]],
    ) -> bool:
        """Whether this route takes the request (headers keyed by lower-case name)."""
        if self.methods is not None and method not in self.methods:
            return False
        if not self._path.matches(path):
            return False
        if not self._conditional:
            return True
        for name, check in self._headers:
            value = headers.get(name)
            if value is None or not check(value):
                return False
        for name, check in self._cookies:
            value = cookies.get(name)
            if value is None or not check(value):
                return False
        for name, check in self._query:
            values = query.get(name)
            if not values or not any(check(value) for value in values):
                return False
        return True

    def bucket(self, sticky_key: str | None) -> int:
        """The key's bucket in 0..9999 for this route; `None` (no key at all) draws a random one."""
        if sticky_key is None:
            return random.randrange(BUCKETS)
        hasher = self._seed.copy()
        hasher.update(sticky_key.encode("utf-8", "surrogatepass"))
        return int.from_bytes(hasher.digest(), "big") % BUCKETS

    def choose(self, sticky_key: str | None) -> str:
        """The upstream for this key: the one whose cumulative-weight range holds its bucket."""
        if self._only is not None:
            return self._only
        return self.upstream_for_bucket(self.bucket(sticky_key))

    def upstream_for_bucket(self, bucket: int) -> str:
        """The upstream owning `bucket` (0..9999)."""
        for name, bound in zip(self.upstreams, self.bounds):
            if bucket < bound:
                return name
        return self.upstreams[-1]

    def endpoint(self, method: str, path: str) -> str:
        """The canonical endpoint, e.g. `GET /api/products/{id}`, for aggregating stats."""
        return f"{method.upper()} {canonical_path(self.segments, path)}"

    def as_dict(self) -> dict[str, Any]:
        """What the admin API shows for this route."""
        match = self.config.match
        return {
            "id": self.id,
            "path": self.template,
            "methods": list(match.methods) if match.methods is not None else None,
            "headers": dict(match.headers),
            "cookies": dict(match.cookies),
            "query": dict(match.query),
            "to": dict(self.config.to),
            "sticky": self.config.sticky.model_dump(exclude_defaults=True) if self.config.sticky else None,
            "timeout": self.config.timeout,
            "fallback": self.config.fallback,
            "shadow": self.config.shadow.to if self.config.shadow else None,
        }


@dataclass(frozen=True, slots=True, eq=False)
class RouteTable:
    """An immutable, compiled routing table: declared routes in order, then the default route."""

    config: FacadeConfig
    version: str
    routes: tuple[Route, ...]
    """Declared routes in order (without the default)."""
    default: Route
    upstreams: Mapping[str, UpstreamConfig]
    by_id: Mapping[str, Route]
    _by_two: Mapping[tuple[str, str], tuple[Route, ...]] = field(repr=False)
    _by_one: Mapping[str, tuple[Route, ...]] = field(repr=False)
    _by_none: tuple[Route, ...] = field(repr=False)

    @classmethod
    def build(cls, config: FacadeConfig, version: str) -> RouteTable:
        """Compile `config` (already validated) into a table tagged with `version`."""
        routes = tuple(Route.compile(route, index) for index, route in enumerate(config.routes))
        default_config = RouteConfig(
            id="placeholder",
            match=MatchConfig(path="/**"),
            to={config.default.to: 100},
            timeout=config.default.timeout,
            retries=config.default.retries,
            fallback=config.default.fallback,
        ).model_copy(update={"id": DEFAULT_ROUTE_ID})
        default = Route.compile(default_config, len(routes))
        by_id = {route.id: route for route in routes}
        by_id[DEFAULT_ROUTE_ID] = default
        # Candidates by the path's first two segments, in declared order: only routes whose leading
        # literal segments agree with them can match, so most routes are never looked at.
        leads = {route.id: _lead(route) for route in routes}
        by_two = {
            key: tuple(route for route in routes if leads[route.id] == key[: len(leads[route.id])])
            for key in {lead for lead in leads.values() if len(lead) == 2}
        }
        by_one = {
            key[0]: tuple(route for route in routes if leads[route.id] in ((), key))
            for key in {lead[:1] for lead in leads.values() if lead}
        }
        return cls(
            config=config,
            version=version,
            routes=routes,
            default=default,
            upstreams=MappingProxyType(dict(config.upstreams)),
            by_id=MappingProxyType(by_id),
            _by_two=MappingProxyType(by_two),
            _by_one=MappingProxyType(by_one),
            _by_none=tuple(route for route in routes if not _lead(route)),
        )

    @property
    def all_routes(self) -> tuple[Route, ...]:
        """Declared routes, then the default."""
        return (*self.routes, self.default)

    def match(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        query: Mapping[str, list[str]],
    ) -> Route:
        """The first declared route taking the request, else the default route (never None).

        `method` is upper-case, `headers` are keyed by lower-case name, `query` maps each key to
        all its values.
        """
        parts = path.split("/", 3)
        candidates = None
        if len(parts) > 2:
            candidates = self._by_two.get((parts[1], parts[2]))
        if candidates is None:
            candidates = self._by_one.get(parts[1], self._by_none) if len(parts) > 1 else self._by_none
        for route in candidates:
            if route.matches(method, path, headers, cookies, query):
                return route
        return self.default

    def as_dict(self) -> dict[str, Any]:
        """What the admin API shows for the table."""
        return {
            "version": self.version,
            "routes": [route.as_dict() for route in self.routes],
            "default": self.default.as_dict(),
            "upstreams": {
                name: {"url": upstream.url, "timeout": upstream.timeout, "sandbox": upstream.sandbox}
                for name, upstream in self.upstreams.items()
            },
        }


def _lead(route: Route) -> tuple[str, ...]:
    """Up to two leading literal segments of the template: `("api", "products")` for `/api/products/**`."""
    lead: list[str] = []
    for segment in route.segments[:2]:
        if segment == "**" or segment == "*" or segment.startswith("{"):
            break
        lead.append(segment)
    return tuple(lead)


def sticky_key(route: Route, headers: Mapping[str, str], cookies: Mapping[str, str], client_host: str | None) -> str | None:
    """The route's sticky key from the request, or None for an anonymous client.

    None means the proxy uses (or sets) the assignment cookie. `headers` keyed by lower-case name.
    """
    sticky = route.config.sticky
    if sticky is None:
        return None
    if sticky.header is not None:
        value = headers.get(sticky.header.lower())
    elif sticky.cookie is not None:
        value = cookies.get(sticky.cookie)
    else:
        value = client_host
    return value or None


def override(table: RouteTable, route: Route, headers: Mapping[str, str]) -> str | None:
    """The upstream a tester forces with the override header on the matched `route`, if any.

    Only the route's own upstreams (weight 0 included) and its shadow target can be forced; any
    other value is ignored, so the header never reaches a service the route does not use.
    Whether the client may use the header at all is the proxy's decision (`override_secrets`).
    """
    name = table.config.assignment.override_header
    if name is None:
        return None
    value = headers.get(name.lower())
    if value is None:
        return None
    value = value.strip()
    return value if value in route.overridable else None
