"""Login, logout and `whoami` (which the extracted services call to validate a session)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from monolith.accounts.models import User
from monolith.accounts.passwords import check_password
from monolith.accounts.sessions import (
    CSRF_AGE,
    CSRF_COOKIE,
    SESSION_AGE,
    SESSION_COOKIE,
    Identity,
    create_session,
    current_user,
    delete_session,
    new_csrf_token,
)
from monolith.db import run_db
from monolith.web import read_json

INVALID_LOGIN = "Invalid username or password."


def _wants_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip() == "application/json"


def safe_next(value: str | None) -> str:
    """A local redirect target only (no `//host` or absolute URLs: no open redirect)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def _login(db: DbSession, username: str, password: str) -> tuple[Identity, str] | None:
    user = db.execute(select(User).where(User.username == username, User.is_active.is_(True))).scalar_one_or_none()
    if user is None or not check_password(password, user.password):
        return None
    return Identity(id=user.id, username=user.username, is_staff=user.is_staff), create_session(db, user.id)


def _set_login_cookies(response: Response, session_key: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, session_key, max_age=int(SESSION_AGE.total_seconds()), path="/", httponly=True, samesite="lax"
    )
    response.set_cookie(CSRF_COOKIE, new_csrf_token(), max_age=int(CSRF_AGE.total_seconds()), path="/", samesite="lax")


async def login_form(request: Request) -> Response:
    """GET /accounts/login: the HTML form."""
    return _render_login(request, error=None, status=200)


def _render_login(request: Request, *, error: str | None, status: int) -> Response:
    response: Response = request.app.state.templates.TemplateResponse(
        request,
        "login.html",
        {"error": error, "next": safe_next(request.query_params.get("next")), "user": None},
        status_code=status,
    )
    if CSRF_COOKIE not in request.cookies:
        response.set_cookie(CSRF_COOKIE, new_csrf_token(), max_age=int(CSRF_AGE.total_seconds()), path="/", samesite="lax")
    return response


async def login(request: Request) -> Response:
    """POST /accounts/login with a form or a JSON body `{"username", "password"}`."""
    if _wants_json(request):
        data: Any = await read_json(request)
        if not isinstance(data, dict):
            data = {}
        username, password, target = data.get("username"), data.get("password"), None
    else:
        form = await request.form()
        username, password = form.get("username"), form.get("password")
        target = safe_next(str(form.get("next") or request.query_params.get("next") or "/"))
    result = None
    if isinstance(username, str) and isinstance(password, str) and username:
        result = await run_db(request, _login, username, password)
    if result is None:
        if target is None:
            return JSONResponse({"detail": INVALID_LOGIN}, status_code=401)
        return _render_login(request, error=INVALID_LOGIN, status=200)
    identity, session_key = result
    response: Response = (
        JSONResponse(identity.as_json()) if target is None else RedirectResponse(target, status_code=303)
    )
    _set_login_cookies(response, session_key)
    return response


async def logout(request: Request) -> Response:
    """POST /accounts/logout: forget the session; 303 to `/` for browsers, 204 for API clients."""
    key = request.cookies.get(SESSION_COOKIE)
    if key:
        await run_db(request, delete_session, key)
        request.app.state.identities.forget(key)
    response: Response = (
        RedirectResponse("/", status_code=303) if "text/html" in request.headers.get("accept", "") else Response(status_code=204)
    )
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def whoami(request: Request) -> Response:
    """GET /accounts/api/whoami: `{"id", "username", "is_staff"}` of the session's user, or 401."""
    identity = await current_user(request)
    if identity is None:
        return JSONResponse({"detail": "Authentication credentials were not provided."}, status_code=401)
    return JSONResponse(identity.as_json(), headers={"Cache-Control": "private, no-store"})
