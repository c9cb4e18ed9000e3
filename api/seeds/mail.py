"""E-mail of generated patient credentials (seed 003's portal), over SMTP."""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage

from neurogate.settings import ApiSettings

log = logging.getLogger(__name__)

SUBJECT = "Your NeuroGate patient portal account"
TIMEOUT_SECONDS = 15.0


def send_credentials(
    settings: ApiSettings, *, to: str, name: str | None, username: str, password: str
) -> bool:
    """Mail a new patient account's username and password to ``to``; ``False`` when no SMTP
    server is configured (``api.smtp_host``) or it refused the message (logged, without the
    address or the password): the admin then hands the credentials over another way."""
    if not settings.smtp_host:
        return False
    message = EmailMessage()
    message["Subject"] = SUBJECT
    message["From"] = settings.smtp_from
    message["To"] = to
    message.set_content(
        f"Dear {name or 'patient'},\n\n"
        "an account of the patient portal has been made for you.\n\n"
        f"Username: {username}\nPassword: {password}\n\n"
        "Please change the password after your first sign-in.\n"
    )
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=TIMEOUT_SECONDS) as smtp:
            if settings.smtp_starttls:
                smtp.starttls()
            if settings.smtp_username and settings.smtp_password is not None:
                smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning(
            "credentials e-mail not sent",
            extra={"username": username, "smtp_host": settings.smtp_host, "error": str(exc)},
        )
        return False
    return True
