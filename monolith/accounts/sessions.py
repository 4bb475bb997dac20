"""Login sessions stored in `django_session`, found by the `sessionid` cookie."""

from __future__ import annotations

import json
import secrets
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


async def current_user(request: Request) -> Identity | None:
    """The request's logged-in user (looked up once per request)."""
    if "identity" not in request.state._state:
        key = request.cookies.get(SESSION_COOKIE, "")
        request.state.identity = await run_db(request, identity_for, key) if key else None
    identity: Identity | None = request.state.identity
    return identity


def new_csrf_token() -> str:
    return secrets.token_hex(16)
