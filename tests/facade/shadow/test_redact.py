from __future__ import annotations

import json

from facade.shadow.compare import Difference, DiffKind, Reply, compare
from facade.shadow.redact import REDACTED, Redactor, truncate

SECRET = "s3cr3t-value"


def test_auth_and_cookie_headers_always_redacted_plus_configured() -> None:
    r = Redactor.build(headers=["X-Api-Key"])
    out = r.header_pairs([("Authorization", "Bearer " + SECRET), ("cookie", SECRET), ("Set-Cookie", SECRET), ("x-api-key", SECRET), ("Accept", "a")])
    assert [v for _, v in out] == [REDACTED] * 4 + ["a"]
    assert r.header_map({"set-cookie": SECRET, "x": "y"}) == {"set-cookie": REDACTED, "x": "y"}


def test_json_body_fields_redacted_at_any_depth() -> None:
    r = Redactor.build(body_fields=["password", "Token"])
    body = json.dumps({"user": {"password": SECRET, "name": "a", "items": [{"token": SECRET}]}}).encode()
    out, truncated = r.body(body, "application/json")
    assert SECRET not in out.decode() and not truncated
    assert json.loads(out)["user"] == {"password": REDACTED, "name": "a", "items": [{"token": REDACTED}]}


def test_truncated_or_invalid_json_is_redacted_textually() -> None:
    r = Redactor.build(body_fields=["password"], max_body=40)
    body = b'{"a": 1, "nested": {"password" : "' + SECRET.encode() * 5 + b'"}}'
    out, truncated = r.body(body, "application/json")
    assert truncated and len(out) <= 40 + len(REDACTED) and SECRET[:4] not in out.decode()
    broken = b'{"password": "' + SECRET.encode() + b'", oops'
    assert SECRET not in r.body(broken, "application/json")[0].decode()
    assert SECRET not in r.text('{"password": 12345678}'.replace("12345678", SECRET))


def test_form_bodies_and_query_strings() -> None:
    r = Redactor.build(body_fields=["password"])
    out, _ = r.body(f"user=a&password={SECRET}".encode(), "application/x-www-form-urlencoded")
    assert SECRET not in out.decode() and b"user=a" in out
    assert SECRET not in r.query(f"q=1&password={SECRET}")
    assert r.query("q=1&x=2") == "q=1&x=2"


def test_truncate() -> None:
    assert truncate(b"abcdef", 3) == (b"abc", True)
    assert truncate(b"abc", 3) == (b"abc", False)


def test_difference_samples_never_carry_secrets() -> None:
    r = Redactor.build(body_fields=["password"])
    a = Reply(200, {"content-type": "application/json"}, json.dumps({"u": {"password": SECRET}, "v": 1}).encode())
    b = Reply(200, {"content-type": "application/json"}, json.dumps({"u": {"password": SECRET + "x"}, "w": {"password": SECRET}}).encode())
    diffs = r.differences(compare(a, b).differences)
    assert diffs and all(SECRET not in (d.primary or "") + (d.candidate or "") for d in diffs)
    cookie = r.difference(Difference("headers.set-cookie", DiffKind.VALUE, SECRET, SECRET))
    assert cookie.primary == REDACTED == cookie.candidate
