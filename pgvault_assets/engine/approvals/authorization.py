"""The two-person rule for production: signed requests, verified approvals, one execution.

A request pins exactly what will happen (kind, target database, backup date and SHA-256,
scope) in canonical bytes; approvers sign those bytes with their SSH keys
(`ssh-keygen -Y sign`, namespace `pgvault-restore`). A name typed on a command line proves
nothing, so every check re-verifies the signatures against the allowed-signers file at the
moment of execution: changing the request, or removing an approver, voids the approval.
Executing writes a once-only record first, so a request can never run twice. This module
decides; `recovery/operations.py` executes what it allows, and `audit.py` records it.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.basics.clock import Clock, aware, utcnow
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.redact import redact
from pgvault_assets.settings import DatabaseUrl

NAMESPACE = "pgvault-restore"
KINDS = ("restore", "recover-rows", "rollback", "restore-to-time")
REQUIRED_APPROVERS = 2
_REQUEST_ID = re.compile(r"^[0-9]{14}-[0-9a-f]{8}$")
_FINGERPRINT = re.compile(r"key (SHA256:[A-Za-z0-9+/=]+)")
T = TypeVar("T")


class AuthorizationRefused(PgvaultError):
    """A production operation lacks a valid, unexpired, unused dual authorization."""


@dataclass(frozen=True)
class RestoreRequest:
    """What two approvers sign: every field that decides what a production operation does."""

    id: str
    kind: str
    environment: str
    target: str
    database: str
    date: date | None
    sha256: str | None
    reason: str
    requester: str
    created_at: datetime
    expires_at: datetime
    scope: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["date"] = self.date.isoformat() if self.date else None
        data["created_at"] = self.created_at.astimezone(UTC).isoformat()
        data["expires_at"] = self.expires_at.astimezone(UTC).isoformat()
        return data

    def canonical_bytes(self) -> bytes:
        """The signed bytes: sorted keys, no whitespace, so any change to any field shows."""
        return json.dumps(
            {"pgvault_request": self.to_dict()},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RestoreRequest:
        expected = set(cls.__dataclass_fields__)
        if set(data) != expected:
            raise ValueError(f"fields {sorted(set(data) ^ expected)} are unexpected or missing")
        if data["kind"] not in KINDS or data["target"] != "production":
            raise ValueError(
                f"kind {data['kind']!r} for target {data['target']!r} is not a request"
            )
        scope = data["scope"]
        if not isinstance(scope, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in scope.items()
        ):
            raise ValueError("scope must map strings to strings")
        return cls(
            id=str(data["id"]),
            kind=str(data["kind"]),
            environment=str(data["environment"]),
            target=str(data["target"]),
            database=str(data["database"]),
            date=date.fromisoformat(data["date"]) if data["date"] else None,
            sha256=str(data["sha256"]) if data["sha256"] else None,
            reason=str(data["reason"]),
            requester=str(data["requester"]),
            created_at=aware(data["created_at"], "created_at"),
            expires_at=aware(data["expires_at"], "expires_at"),
            scope=dict(scope),
        )

    def summary(self) -> str:
        what = {
            "restore": f"restore the {self.date} backup (sha256 {str(self.sha256)[:12]}…)",
            "recover-rows": (
                f"recover rows of {self.scope.get('table')} as of {self.scope['time']} (base "
                f"backup {self.scope.get('base_backup')})"
                if "time" in self.scope
                else f"recover rows of {self.scope.get('table')} from the {self.date} backup"
            ),
            "rollback": f"swap {self.scope.get('swap_in')} back in",
            "restore-to-time": (
                f"recover to {self.scope.get('time')} from base backup "
                f"{self.scope.get('base_backup')}"
            ),
        }[self.kind]
        return f"{what} into {self.database} ({self.target}, {self.environment})"


@dataclass(frozen=True)
class Approval:
    request_id: str
    principal: str
    fingerprint: str
    approved_at: datetime


@dataclass(frozen=True)
class Authorization:
    """A request whose approvals check out now; `approvers` are distinct principals and keys."""

    request: RestoreRequest
    approvers: tuple[Approval, ...]


def request_key(environment: str, request_id: str) -> str:
    return f"{audit.audit_prefix(environment)}requests/{request_id}.json"


def _check_id(request_id: str) -> None:
    if not _REQUEST_ID.match(request_id):
        raise ConfigError(
            f"{request_id!r} is not a request id (like 20251106143000-1a2b3c4d); see pgvault audit"
        )


def create_request(
    vault: Vault,
    *,
    kind: str,
    target: str,
    target_url: DatabaseUrl,
    day: date | None,
    reason: str,
    requester: str,
    ttl: timedelta,
    scope: Mapping[str, str] | None = None,
    now: Clock = utcnow,
) -> RestoreRequest:
    """Record a request for a production operation; refused unless staging proved the backup."""
    if target != "production":
        raise ConfigError(
            "only production operations need a request; run the staging command directly"
        )
    if kind not in KINDS:
        raise ConfigError(f"unknown request kind {kind!r}; use one of {', '.join(KINDS)}")
    if not reason.strip():
        raise ConfigError("a request needs a --reason saying why production must change")
    sha256 = None
    scope = dict(scope or {})
    if kind == "rollback":
        # psycopg only for a rollback: the CLI's parser reads KINDS from this module.
        from pgvault_assets.engine.postgres.postgres import previous_databases

        kept = previous_databases(target_url)
        if not kept:
            raise ConfigError(
                f"there is no earlier database kept for {target_url.dbname}; nothing to roll back"
            )
        scope["swap_in"] = kept[0]
        day = None
    elif kind == "restore-to-time" or (kind == "recover-rows" and "time" in scope):
        if not scope.get("time") or not scope.get("base_backup"):
            raise ConfigError(f"a {kind} request needs --time")
        if kind == "recover-rows" and day is not None:
            raise ConfigError("a recover-rows request takes --date or --time, not both")
        day = None
        require_staging_recovered_first(vault, scope["time"], scope["base_backup"])
    else:
        if day is None:
            raise ConfigError(
                "a recover-rows request needs --date or --time"
                if kind == "recover-rows"
                else f"a {kind} request needs --date"
            )
        sha256 = vault.read_manifest(day).sha256
        require_staging_first(vault, day, sha256)
    created = now().astimezone(UTC)
    request = RestoreRequest(
        id=f"{created.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}",
        kind=kind,
        environment=vault.environment,
        target=target,
        database=target_url.dbname,
        date=day,
        sha256=sha256,
        reason=redact(reason.strip()),
        requester=redact(requester.strip()) or "unknown",
        created_at=created,
        expires_at=created + ttl,
        scope=scope,
    )
    body = {"request": request.to_dict()}
    audit.put_new(
        vault.store,
        request_key(vault.environment, request.id),
        json.dumps(
            {"record": "request", "recorded_at": created.isoformat(), **body},
            indent=2,
            sort_keys=True,
        ).encode(),
    )
    return request


def require_staging_first(vault: Vault, day: date, sha256: str) -> None:
    """The manual's rule, enforced: production gets only what staging restored and checked."""
    if not audit.staging_verified(vault, day, sha256):
        pinned = names.database_option(names.split_namespace(vault.environment)[1])
        raise AuthorizationRefused(
            f"the {day} backup (sha256 {sha256[:12]}…) has no staging restore followed by a passing "
            f"integrity check in the audit trail; run: pgvault restore-from-backup {pinned}--date {day} "
            f"--target staging, then pgvault check-database-integrity {pinned}--target staging "
            f"--date {day}"
        )


def require_staging_recovered_first(vault: Vault, time: str, base_backup: str) -> None:
    """The same rule for a point in time: staging recovered to exactly this time, from exactly
    this base backup, and still holds it."""
    if not audit.staging_recovered_to(vault, time, base_backup):
        pinned = names.database_option(names.split_namespace(vault.environment)[1])
        raise AuthorizationRefused(
            f"staging does not hold a recovery to {time} from base backup {base_backup} by the "
            f"audit trail; run: pgvault restore-to-time {pinned}--time {time.replace(' ', 'T')} "
            "--target staging"
        )


@dataclass(frozen=True)
class PinnedTime:
    """An authorization whose request names a time and base backup staging still holds."""

    authorization: Authorization
    time: str
    base_backup: str


def authorize_pinned_time(
    vault: Vault,
    request_id: str,
    approvers_file: Path,
    *,
    database: str,
    kind: str = "restore-to-time",
    now: Clock = utcnow,
) -> PinnedTime:
    """Authorize a request that recovers production's cluster to a time (`restore-to-time`,
    or `recover-rows` as of a time): staging must hold that same recovery first."""
    authorization = authorize(
        vault, request_id, approvers_file, kind=kind, database=database, now=now
    )
    scope = authorization.request.scope
    time, base_backup = scope.get("time"), scope.get("base_backup")
    if not time or not base_backup:
        raise AuthorizationRefused(
            f"request {request_id} names no time and base backup; create a new request"
        )
    require_staging_recovered_first(vault, time, base_backup)
    return PinnedTime(authorization, time, base_backup)


@dataclass(frozen=True)
class PinnedBackup:
    """An authorization whose request names a backup that is still the one approved."""

    authorization: Authorization
    day: date
    sha256: str


def authorize_pinned_backup(
    vault: Vault,
    request_id: str,
    approvers_file: Path,
    *,
    kind: str,
    database: str,
    undone: str,
    now: Clock = utcnow,
) -> PinnedBackup:
    """Authorize a request that applies a backup to production: the approvals check out, the
    backup's SHA-256 is still the approved one, and staging restored and checked it first.
    `undone` says what did not happen when refused ("nothing was restored")."""
    authorization = authorize(
        vault, request_id, approvers_file, kind=kind, database=database, now=now
    )
    request = authorization.request
    if request.date is None or request.sha256 is None:
        raise AuthorizationRefused(
            f"request {request.id} names no backup (date and sha256); create a new request"
        )
    stored = vault.read_manifest(request.date).sha256
    if stored != request.sha256:
        raise AuthorizationRefused(
            f"the {request.date} backup changed since request {request.id} was approved "
            f"(sha256 {stored[:12]}…, approved {request.sha256[:12]}…); {undone}"
        )
    require_staging_first(vault, request.date, request.sha256)
    return PinnedBackup(authorization, request.date, request.sha256)


def read_request(vault: Vault, request_id: str) -> RestoreRequest:
    _check_id(request_id)
    raw = vault.store.get_bytes(request_key(vault.environment, request_id))
    if raw is None:
        raise AuthorizationRefused(
            f"no request {request_id} in {vault.environment}; create one with pgvault request-restore"
        )
    try:
        request = RestoreRequest.from_dict(json.loads(raw)["request"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise AuthorizationRefused(
            f"request {request_id} is malformed ({exc}); create a new request"
        ) from None
    if request.id != request_id or request.environment != vault.environment:
        raise AuthorizationRefused(
            f"request {request_id} does not match its key; create a new request"
        )
    return request


def _ssh_keygen(args: list[str], data: bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["ssh-keygen", *args], input=data, capture_output=True, cwd=cwd, timeout=60
        )
    except FileNotFoundError:
        raise ConfigError("ssh-keygen is not installed; install openssh-client") from None


def sign_request(request: RestoreRequest, key_file: Path) -> str:
    """An SSH signature over the request's canonical bytes; the key never leaves ssh-keygen."""
    if not key_file.exists():
        raise ConfigError(f"no key file {key_file}; pass --key with your SSH private key")
    with tempfile.TemporaryDirectory() as tmp:
        result = _ssh_keygen(
            ["-Y", "sign", "-n", NAMESPACE, "-f", str(key_file)],
            request.canonical_bytes(),
            Path(tmp),
        )
    signature = result.stdout.decode(errors="replace")
    if result.returncode != 0 or "BEGIN SSH SIGNATURE" not in signature:
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise AuthorizationRefused(
            f"ssh-keygen could not sign with {key_file} ({reason[-1] if reason else 'no output'}); "
            "check the key file and its passphrase"
        )
    return signature


def signer_of(
    request: RestoreRequest, signature: str, approvers_file: Path
) -> tuple[str, str] | None:
    """(principal, key fingerprint) of a valid signature by a listed approver, else None."""
    with tempfile.TemporaryDirectory() as tmp:
        sig = Path(tmp) / "request.sig"
        sig.write_text(signature)
        found = _ssh_keygen(
            ["-Y", "find-principals", "-s", str(sig), "-f", str(approvers_file)], b"", Path(tmp)
        )
        if found.returncode != 0:
            return None
        listed = found.stdout.decode(errors="replace").replace(",", " ").split()
        for principal in listed:
            verify = ["-Y", "verify", "-f", str(approvers_file), "-n", NAMESPACE]
            checked = _ssh_keygen(
                [*verify, "-I", principal, "-s", str(sig)],
                request.canonical_bytes(),
                Path(tmp),
            )
            fingerprint = _FINGERPRINT.search(checked.stdout.decode(errors="replace"))
            if checked.returncode == 0 and fingerprint:
                return principal, fingerprint.group(1)
    return None


def approve_request(
    vault: Vault, request_id: str, key_file: Path, approvers_file: Path, *, now: Clock = utcnow
) -> Approval:
    """Sign a request and record the signature, once the signer is known to be an approver."""
    request = read_request(vault, request_id)
    moment = now()
    _refuse_unusable(vault, request, moment)
    signature = sign_request(request, key_file)
    signer = signer_of(request, signature, approvers_file)
    if signer is None:
        raise AuthorizationRefused(
            f"the key {key_file} is not an approver in {approvers_file}; nothing was recorded"
        )
    principal, fingerprint = signer
    audit.append(
        vault,
        f"approvals/{request.id}",
        "approval",
        {
            "request_id": request.id,
            "principal": principal,
            "fingerprint": fingerprint,
            "signature": signature,
        },
        now=moment,
    )
    return Approval(request.id, principal, fingerprint, moment)


def _refuse_unusable(vault: Vault, request: RestoreRequest, moment: datetime) -> None:
    if moment >= request.expires_at:
        raise AuthorizationRefused(
            f"request {request.id} expired at {request.expires_at:%Y-%m-%d %H:%M} UTC; create a new request"
        )
    if vault.store.get_bytes(execution_key(vault.environment, request.id)) is not None:
        raise AuthorizationRefused(
            f"request {request.id} was already executed; a request runs once, create a new one"
        )


def execution_key(environment: str, request_id: str) -> str:
    return f"{audit.audit_prefix(environment)}executions/{request_id}.json"


def valid_approvals(
    vault: Vault, request: RestoreRequest, approvers_file: Path
) -> tuple[Approval, ...]:
    """Approvals whose signatures verify now over the request as stored, one per principal and key."""
    approvals: list[Approval] = []
    for record in audit.audit_records(vault, f"approvals/{request.id}"):
        signature = record.body.get("signature")
        if not isinstance(signature, str):
            continue
        signer = signer_of(request, signature, approvers_file)
        if signer is None:
            continue
        principal, fingerprint = signer
        if any(a.principal == principal or a.fingerprint == fingerprint for a in approvals):
            continue
        approvals.append(Approval(request.id, principal, fingerprint, record.recorded_at))
    return tuple(approvals)


def authorize(
    vault: Vault,
    request_id: str,
    approvers_file: Path,
    *,
    kind: str,
    database: str,
    now: Clock = utcnow,
) -> Authorization:
    """Check that a request may run now; raise `AuthorizationRefused` saying why not."""
    request = read_request(vault, request_id)
    if request.kind != kind:
        raise AuthorizationRefused(
            f"request {request_id} is for {request.kind}, not {kind}; create a {kind} request"
        )
    if request.database != database:
        raise AuthorizationRefused(
            f"request {request_id} is for database {request.database}, not {database}; create a new request"
        )
    _refuse_unusable(vault, request, now())
    approvals = valid_approvals(vault, request, approvers_file)
    if len(approvals) < REQUIRED_APPROVERS:
        who = ", ".join(a.principal for a in approvals) or "nobody"
        raise AuthorizationRefused(
            f"request {request_id} has valid approvals from {who}; it needs {REQUIRED_APPROVERS} "
            f"distinct approvers: pgvault approve-restore {request_id} "
            f"{names.database_option(names.split_namespace(vault.environment)[1])}--key PATH"
        )
    return Authorization(request, approvals)


def consume(vault: Vault, authorization: Authorization, *, now: Clock = utcnow) -> None:
    """Claim the request's one execution; a second claim, even a concurrent one, fails."""
    request = authorization.request
    try:
        audit.append(
            vault,
            "executions",
            "execution",
            {
                "request_id": request.id,
                "kind": request.kind,
                "database": request.database,
                "approvers": [a.principal for a in authorization.approvers],
            },
            now=now(),
            name=request.id,
        )
    except audit.RecordExists:
        raise AuthorizationRefused(
            f"request {request.id} was already executed; a request runs once, create a new one"
        ) from None


def record_outcome(
    vault: Vault, request: RestoreRequest, *, succeeded: bool, detail: str, now: Clock = utcnow
) -> None:
    audit.append(
        vault,
        "outcomes",
        "execution-result",
        {"request_id": request.id, "succeeded": succeeded, "detail": redact(detail)},
        now=now(),
    )


def run_authorized(
    vault: Vault,
    authorization: Authorization,
    action: Callable[[], T],
    describe: Callable[[T], str],
    *,
    now: Clock = utcnow,
) -> T:
    """Consume the request, run `action`, and record how it ended (also when it failed)."""
    consume(vault, authorization, now=now)
    try:
        result = action()
    except BaseException as exc:
        record_outcome(vault, authorization.request, succeeded=False, detail=str(exc), now=now)
        raise
    record_outcome(vault, authorization.request, succeeded=True, detail=describe(result), now=now)
    return result
