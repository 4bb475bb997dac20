"""Users and sessions, with Django's table names (`accounts_user`, `django_session`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, String, Text, false, true
from sqlalchemy.orm import Mapped, mapped_column

from monolith.db import Base


class User(Base):
    """A shop user; `is_staff` users may edit the catalog."""

    __tablename__ = "accounts_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True, nullable=False)
    email: Mapped[str] = mapped_column(String(254), nullable=False)
    password: Mapped[str] = mapped_column(String(128), nullable=False)
    is_staff: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false(), default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true(), default=True)
    date_joined: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Session(Base):
    """A login session, keyed by the `sessionid` cookie's value."""

    __tablename__ = "django_session"
    __table_args__ = (Index("django_session_expire_date_idx", "expire_date"),)

    session_key: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_data: Mapped[str] = mapped_column(Text, nullable=False)
    expire_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
