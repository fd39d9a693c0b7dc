"""Remove secrets from any text pgvault is about to print, log or send."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

from pgvault_assets.settings import secret_variables

REDACTED = "[redacted]"
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s/]*@", re.I
)
_AWS_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>password|passwd|secret|token|aws_secret_access_key|pgpassword)(?P<sep>\s*[=:]\s*)\S+",
    re.I,
)
# The variables settings.py declares secret, and two it does not read but children inherit.
_SECRET_VARIABLES = (*secret_variables("value"), "AWS_SESSION_TOKEN", "PGPASSWORD")
_URL_VARIABLES = secret_variables("password")


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
    """Mask every configured secret value in `text`, and anything shaped like a secret."""
    for secret in sorted({*extra, *secrets_in()}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _AWS_ACCESS_KEY.sub(REDACTED, text)
    return _SECRET_ASSIGNMENT.sub(lambda m: f"{m['name']}{m['sep']}{REDACTED}", text)
