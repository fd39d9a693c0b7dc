"""Remove secrets from any text pgvault is about to print, log or send."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s/]+)@"
)
_SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "SENTRY_DSN",
    "PGPASSWORD",
    "ALERT_WEBHOOK_URL",
)
_URL_VARIABLES = ("DATABASE_URL", "STAGING_DATABASE_URL", "DAGSTER_PG_URL")


def secrets_in(env: Mapping[str, str] | None = None) -> list[str]:
    """The secret values configured in the environment, longest first."""
    env = os.environ if env is None else env
    found: set[str] = set()
    for name in _SECRET_VARIABLES:
        if env.get(name):
            found.add(env[name])
    for name in _URL_VARIABLES:
        value = env.get(name)
        if not value:
            continue
        try:
            password = urlsplit(value).password
        except ValueError:
            continue
        if password:
            found.update({password, unquote(password)})
    dsn = env.get("SENTRY_DSN")
    if dsn:
        try:
            key = urlsplit(dsn).username
        except ValueError:
            key = None
        if key:
            found.add(key)
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Mask URL passwords and every configured secret value in `text`."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for secret in [*extra, *secrets_in()]:
        if secret:
            text = text.replace(secret, "***")
    return text
