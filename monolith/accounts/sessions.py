"""Login sessions stored in `django_session`, found by the `sessionid` cookie."""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session as DbSession
from starlette.requests import Request

from monolith.accounts.models import Session, User
from monolith.db import run_db

SESSION_COOKIE = "sessionid"
CSRF_COOKIE = "csrftoken"
SESSION_AGE = timedelta(weeks=2)
CSRF_AGE = timedelta(weeks=52)
IDENTITY_TTL = 2.0
"""Seconds a worker reuses a session's looked-up user (Django's `cached_db` sessions, per worker):
a logout here takes effect at once, a change made elsewhere within this."""


@dataclass(frozen=True, kw_only=True)
class Identity:
    """The user behind a session, as `/accounts/api/whoami` reports it."""

    id: int
    username: str
    is_staff: bool

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "username": self.username, "is_staff": self.is_staff}


def create_session(db: DbSession, user_id: int) -> str:
    """Store a new session for `user_id`; return its key (the cookie value)."""
    key = secrets.token_hex(16)
    data = json.dumps({"_auth_user_id": str(user_id), "_auth_user_backend": "monolith.accounts"})
    db.add(Session(session_key=key, session_data=data, expire_date=datetime.now(UTC) + SESSION_AGE))
    return key


def delete_session(db: DbSession, key: str) -> None:
    db.execute(delete(Session).where(Session.session_key == key))


def identity_for(db: DbSession, key: str) -> Identity | None:
    """The active user of an unexpired session `key`, or None."""
    if not key or len(key) > 40:
        return None
    row = db.execute(
        select(Session.session_data).where(Session.session_key == key, Session.expire_date > datetime.now(UTC))
    ).scalar_one_or_none()
    if row is None:
        return None
    try:
        user_id = int(json.loads(row)["_auth_user_id"])
    except (ValueError, KeyError, TypeError):
        return None
    user = db.execute(
        select(User.id, User.username, User.is_staff).where(User.id == user_id, User.is_active.is_(True))
    ).one_or_none()
    return Identity(id=user.id, username=user.username, is_staff=user.is_staff) if user else None


class IdentityCache:
    """Session key → its user (or None), each for `ttl` seconds, at most `size` keys (oldest go first).

    Every authenticated request looks its session up; an API client sends the same cookie for
    many requests in a row, so a worker answers those from here instead of a transaction each."""

    def __init__(self, *, ttl: float = IDENTITY_TTL, size: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.size, self.clock = ttl, size, clock
        self._entries: OrderedDict[str, tuple[float, Identity | None]] = OrderedDict()

    def get(self, key: str) -> tuple[bool, Identity | None]:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self.clock():
            return False, None
        return True, entry[1]

    def put(self, key: str, identity: Identity | None) -> None:
        self._entries[key] = (self.clock() + self.ttl, identity)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)


async def current_user(request: Request) -> Identity | None:
    """The request's logged-in user (looked up once per request, and reused for `IDENTITY_TTL`)."""
    if "identity" not in request.state._state:
        key = request.cookies.get(SESSION_COOKIE, "")
        identity: Identity | None = None
        if key:
            cache: IdentityCache = request.app.state.identities
            found, identity = cache.get(key)
            if not found:
                identity = await run_db(request, identity_for, key)
                cache.put(key, identity)
        request.state.identity = identity
    known: Identity | None = request.state.identity
    return known


def new_csrf_token() -> str:
    return secrets.token_hex(16)
