"""Password hashes in Django's format: `pbkdf2_sha256$<iterations>$<salt>$<base64 digest>`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ALGORITHM = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000


def make_password(password: str, *, salt: str | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """Hash `password`; a low `iterations` is only for seeding test data quickly."""
    salt = salt or secrets.token_hex(11)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{ALGORITHM}${iterations}${salt}${base64.b64encode(digest).decode('ascii')}"


def check_password(password: str, encoded: str) -> bool:
    """Whether `password` matches the stored hash `encoded` (constant-time comparison)."""
    try:
        algorithm, iterations, salt, _digest = encoded.split("$", 3)
        rounds = int(iterations)
    except ValueError:
        return False
    if algorithm != ALGORITHM or rounds < 1:
        return False
    return hmac.compare_digest(make_password(password, salt=salt, iterations=rounds), encoded)
