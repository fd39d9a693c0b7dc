"""The engine's settings, vault and notifier as Dagster resources.

A resource's fields are the variables it reads, made from their declarations in settings.py
(name, meaning), never listed here again. They are bound to `EnvVar`s, so the UI shows which
variable feeds each one and never its value, and a secret is read only when a run starts. A
variable that is not set is not bound: Dagster refuses an `EnvVar` for an unset variable, and
settings.py has a default for it. The values stay text: settings.py types and checks them, as
it does for the CLI.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, create_model

from pgvault_assets.alerts import Notifier
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import pin_database
from pgvault_assets.settings import (
    PlatformVariables,
    Settings,
    declared,
    load_settings,
    own_variables,
)

SETTINGS_VARIABLES = tuple(
    name for name in own_variables() if name not in dict(PlatformVariables.variables())
)
"""What a run reads of pgvault's own: every variable but the platform's, which shape the
definitions themselves and are read once, when the code location loads, and but the ones
other tools share (AWS_*, XDG_DATA_HOME, DAGSTER_PG_URL), read where they are found: a run's
environment need repeat none of those, and a worker with an instance role has no AWS keys."""
ALERT_VARIABLES = ("SENTRY_DSN", "ALERT_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY")
"""Where alerts go: the alerts resource can point them elsewhere than the settings do."""


def _fields(names: tuple[str, ...]) -> dict[str, Any]:
    """A text field per variable, named as the variable in lower case, described as declared."""
    declarations = declared()
    return {
        name.lower(): (str | None, Field(default=None, description=declarations[name].description))
        for name in names
    }


class _Variables(ConfigurableResource):
    """A resource whose fields are environment variables by their lower-case names."""

    def variables(self, names: tuple[str, ...]) -> dict[str, str]:
        values = {name: getattr(self, name.lower()) for name in names}
        return {name: value for name, value in values.items() if value is not None}


class _VaultResource(_Variables):
    """pgvault's settings and the store and keys they name.

    Each field overrides the environment variable of the same name in upper case; fields left
    unset fall back to the process environment, as the CLI reads it.
    """

    def environ(self) -> dict[str, str]:
        """The process environment with the fields set over it: the fleet file's own URL
        variables are read from it too."""
        return {**os.environ, **self.variables(SETTINGS_VARIABLES)}

    def settings(self, database: str | None = None) -> Settings:
        """The settings, pinned to the fleet database `database` when one is named."""
        env = self.environ()
        settings = load_settings(env)
        return settings if database is None else pin_database(settings, env, database)

    def vault(self, settings: Settings | None = None) -> Vault:
        """The vault of `settings` when the caller has read them already (once per run)."""
        return Vault.from_settings(settings or self.settings())


class _AlertsResource(_Variables):
    """Where alerts go: Sentry when `SENTRY_DSN` is set, a webhook when `ALERT_WEBHOOK_URL` is,
    PagerDuty when `PAGERDUTY_ROUTING_KEY` is."""

    def notifier(self, settings: Settings) -> Notifier:
        """A notifier that also knows `settings`' secrets, to scrub them from what it sends."""
        chosen = self.variables(ALERT_VARIABLES)
        routing_key = chosen.get("PAGERDUTY_ROUTING_KEY") or settings.pagerduty.routing_key
        return Notifier.from_settings(
            dataclasses.replace(
                settings,
                sentry_dsn=chosen.get("SENTRY_DSN") or settings.sentry_dsn,
                alert_webhook_url=chosen.get("ALERT_WEBHOOK_URL") or settings.alert_webhook_url,
                pagerduty=dataclasses.replace(settings.pagerduty, routing_key=routing_key),
            )
        )


if TYPE_CHECKING:  # a type checker sees the methods; the fields are made below
    VaultResource = _VaultResource
    AlertsResource = _AlertsResource
else:
    VaultResource = create_model(
        "VaultResource",
        __base__=_VaultResource,
        __module__=__name__,
        __doc__=_VaultResource.__doc__,
        **_fields(SETTINGS_VARIABLES),
    )
    AlertsResource = create_model(
        "AlertsResource",
        __base__=_AlertsResource,
        __module__=__name__,
        __doc__=_AlertsResource.__doc__,
        **_fields(ALERT_VARIABLES),
    )


def _bound(names: tuple[str, ...]) -> dict[str, Any]:
    return {name.lower(): EnvVar(name) for name in names if os.environ.get(name)}


def resource_defs() -> dict[str, Any]:
    return {
        "vault": VaultResource(**_bound(SETTINGS_VARIABLES)),
        "alerts": AlertsResource(**_bound(ALERT_VARIABLES)),
    }
