"""Redaction of secrets before anything shadow-related is stored or recorded.

`Authorization`, `Proxy-Authorization`, `Cookie` and `Set-Cookie` are always redacted, plus the
configured headers; configured body fields are redacted at any depth in JSON bodies, in form and
query parameters, and (by a textual pass) in bodies that do not parse, such as truncated JSON.
Bodies are truncated to a cap. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from facade.shadow.compare import Difference

__all__ = ["ALWAYS_REDACTED", "REDACTED", "Redactor", "scrub_urls", "truncate"]

REDACTED = "[REDACTED]"
ALWAYS_REDACTED = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# `"name": "[REDACTED]"` in a JSON text, as `Redactor.body` writes it.
_REDACTED_FIELD = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*"' + re.escape(REDACTED.encode()) + rb'"')
# The query of any URL in a text: an error message may quote the URL it failed on.
_URL_QUERY = re.compile(r"""(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'"]*)\?[^\s#'"]*""")


def scrub_urls(text: str) -> str:
    """`text` with the query of every URL in it redacted (the configured fields are unknown where
    errors are made, so the whole query goes)."""
    return _URL_QUERY.sub(r"\1?" + REDACTED, text)


def truncate(body: bytes, cap: int) -> tuple[bytes, bool]:
    """The first `cap` bytes of `body`, and whether anything was cut."""
    if len(body) <= cap:
        return body, False
    return body[:cap], True


@dataclass(frozen=True, slots=True)
class Redactor:
    """Removes secrets from headers, bodies, query strings and comparison samples."""

    headers: frozenset[str] = ALWAYS_REDACTED
    body_fields: frozenset[str] = frozenset()
    max_body: int = 64 * 1024

    @classmethod
    def build(cls, headers: Iterable[str] = (), body_fields: Iterable[str] = (), max_body: int = 64 * 1024) -> Redactor:
        return cls(
            headers=ALWAYS_REDACTED | {h.lower() for h in headers},
            body_fields=frozenset(f.lower() for f in body_fields),
            max_body=max_body,
        )

    @property
    def _text_pattern(self) -> re.Pattern[str] | None:
        if not self.body_fields:
            return None
        names = "|".join(re.escape(f) for f in sorted(self.body_fields))
        # "name": <string | scalar>   — also when the string is cut off by truncation.
        return re.compile(rf'("(?i:{names})"\s*:\s*)("(?:[^"\\]|\\.)*"?|[^,}}\]\s]+)')

    def also_redacting_fields_redacted_in(self, body: bytes) -> Redactor:
        """This redactor plus every body field that `body` (a redacted answer) shows redacted,
        so another answer can be redacted the same way without the configuration behind it."""
        fields = {m.decode("utf-8", "replace").lower() for m in _REDACTED_FIELD.findall(body)}
        if fields <= self.body_fields:
            return self
        return replace(self, body_fields=self.body_fields | fields)

    def header_pairs(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(k, REDACTED if k.lower() in self.headers else v) for k, v in pairs]

    def header_map(self, headers: dict[str, str]) -> dict[str, str]:
        return {k: REDACTED if k.lower() in self.headers else v for k, v in headers.items()}

    def query(self, query: str) -> str:
        if not query or not self.body_fields:
            return query
        pairs = parse_qsl(query, keep_blank_values=True)
        if not any(k.lower() in self.body_fields for k, _ in pairs):
            return query
        return urlencode([(k, REDACTED if k.lower() in self.body_fields else v) for k, v in pairs])

    def value(self, value: Any) -> Any:
        """A parsed JSON value with the configured fields redacted at any depth."""
        if isinstance(value, dict):
            return {k: REDACTED if k.lower() in self.body_fields else self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value

    def text(self, text: str) -> str:
        pattern = self._text_pattern
        return pattern.sub(lambda m: m.group(1) + '"' + REDACTED + '"', text) if pattern else text

    def body(self, body: bytes, content_type: str = "") -> tuple[bytes, bool]:
        """The body redacted, then truncated to `max_body`; returns (bytes, truncated)."""
        if self.body_fields and body:
            ct = content_type.split(";", 1)[0].strip().lower()
            if ct == "application/x-www-form-urlencoded":
                body = self.query(body.decode("latin-1")).encode("latin-1")
            else:
                try:
                    body = orjson.dumps(self.value(orjson.loads(body)))
                except orjson.JSONDecodeError:
                    body = self.text(body.decode("utf-8", "replace")).encode()
        cut, truncated = truncate(body, self.max_body)
        if truncated and self.body_fields:
            cut = self.text(cut.decode("utf-8", "ignore")).encode()
        return cut, truncated

    def difference(self, diff: Difference) -> Difference:
        """A comparison difference whose samples cannot carry a redacted value."""
        if self._secret_path(diff.path):
            return Difference(diff.path, diff.kind, _mask(diff.primary), _mask(diff.candidate))
        return Difference(diff.path, diff.kind, self._sample(diff.primary), self._sample(diff.candidate))

    def differences(self, diffs: Sequence[Difference]) -> tuple[Difference, ...]:
        return tuple(self.difference(d) for d in diffs)

    def _sample(self, sample: str | None) -> str | None:
        return None if sample is None else self.text(sample)

    def _secret_path(self, path: str) -> bool:
        if path.startswith("headers."):
            return path[8:].lower() in self.headers
        names = re.findall(r'\.([^.\[]+)|\["((?:[^"\\]|\\.)*)"\]', path)
        return any((a or b).lower() in self.body_fields for a, b in names)


def _mask(sample: str | None) -> str | None:
    return None if sample is None else REDACTED
