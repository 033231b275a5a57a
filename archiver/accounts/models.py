"""Tables of accounts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    LargeBinary,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from archiver.core.db import Base, UTCDateTime


class Account(Base):
    """A WhatsApp business phone number whose conversations are captured.

    Secrets are kept sealed under the account's own subject key; the display
    number only as a blind token and a sealed copy.
    """

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    phone_number_id: Mapped[str] = mapped_column(String(64), unique=True)
    waba_id: Mapped[str | None] = mapped_column(String(64))
    display_phone_token: Mapped[bytes] = mapped_column(LargeBinary)
    display_phone_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    app_secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    verify_token_sha256: Mapped[str] = mapped_column(String(64))
    access_token_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
