"""Production changes only under two valid SSH-signed approvals, before expiry, once.

Every refusal leaves production exactly as it was: the row written after the backup is still
there and no restore has swapped anything in.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.approvals import authorization as auth
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.engine.postgres.postgres import previous_databases
from pgvault_assets.engine.recovery import operations as restore
from pgvault_assets.settings import DatabaseUrl
from tests.test_engine.helpers import DAY, back_up, vault
from tests.test_recovery.conftest import (
    Approvers,
    Databases,
    allowed_signer_line,
    execute,
    scalar,
)
from tests.test_recovery.helpers import (
    approve,
    approved_request,
    prove_on_staging,
    request_restore,
    run,
)

SENTINEL = "written-after-the-backup@example.org"


def write_sentinel(url: str) -> None:
    """A row the backup does not hold: a restore removes it."""
    execute(url, "INSERT INTO public.users (email, created_at) VALUES (%s, now())", (SENTINEL,))


@pytest.fixture
def production(databases: Databases) -> Databases:
    """Production holds one row the backup does not: a restore would remove it."""
    write_sentinel(databases.production)
    return databases


def sentinel_present(url: str) -> bool:
    return scalar(url, "SELECT count(*) FROM public.users WHERE email = %s", (SENTINEL,)) == 1


def assert_production_untouched(databases: Databases) -> None:
    assert sentinel_present(databases.production)
    assert previous_databases(DatabaseUrl(databases.production)) == []


def restore_to_production(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str, str]:
    """`pgvault restore-from-backup` of DAY to production with `flags`."""
    return run(capsys, "restore-from-backup", "--date", str(DAY), "--target", "production", *flags)


def restore_production(capsys: pytest.CaptureFixture[str], request_id: str) -> tuple[int, str]:
    code, _, err = restore_to_production(capsys, "--request", request_id, "--skip-confirmation")
    return code, err


def assert_refused(
    capsys: pytest.CaptureFixture[str], request_id: str, production: Databases, reason: str
) -> None:
    """The restore under `request_id` fails saying `reason`, and production is as it was."""
    code, err = restore_production(capsys, request_id)
    assert code == 1
    assert reason in err
    assert_production_untouched(production)


def only_alice_approved(request_id: str) -> str:
    return f"request {request_id} has valid approvals from alice@example.org; it needs 2 distinct"


def test_two_approvers_restore_production_and_a_second_request_rolls_it_back(
    production, approvers: Approvers, capsys
):
    request_id = approved_request(capsys, approvers.alice, approvers.bob)

    code, err = restore_production(capsys, request_id)

    assert code == 0, err
    assert not sentinel_present(production.production)
    assert len(previous_databases(DatabaseUrl(production.production))) == 1

    code, out, err = run(
        capsys,
        "request-restore",
        *("--kind", "rollback", "--target", "production", "--reason", "wrong day"),
    )
    assert code == 0, err
    rollback_id = out.split()[0]
    assert approve(capsys, rollback_id, approvers.bob)[0] == 0
    assert approve(capsys, rollback_id, approvers.alice)[0] == 0
    code, _, err = run(
        capsys, "rollback-restore", "--target", "production", "--request", rollback_id
    )

    assert code == 0, err
    assert sentinel_present(production.production)
    records = [r["record"] for r in json.loads(run(capsys, "audit", "--json")[1])]
    assert records.count("execution") == 2
    assert records.count("approval") == 4
    assert {"staging-restore", "integrity-check", "request", "execution-result"} <= set(records)


def test_one_approver_is_refused(production, approvers, capsys):
    request_id = approved_request(capsys, approvers.alice)

    assert_refused(capsys, request_id, production, only_alice_approved(request_id))


def test_the_same_approver_twice_counts_once(production, approvers, capsys):
    request_id = approved_request(capsys, approvers.alice, approvers.alice)

    assert_refused(capsys, request_id, production, "it needs 2 distinct approvers")


def test_one_key_listed_under_two_principals_counts_once(production, approvers, capsys):
    with approvers.file.open("a") as allowed:
        allowed.write(allowed_signer_line("alice-again@example.org", approvers.alice))
    request_id = approved_request(capsys, approvers.alice, approvers.alice)

    assert_refused(capsys, request_id, production, only_alice_approved(request_id))


def test_an_unlisted_key_cannot_approve(production, approvers, capsys):
    request_id = approved_request(capsys, approvers.alice)

    code, err = approve(capsys, request_id, approvers.mallory)

    assert code == 1
    assert "is not an approver" in err
    assert_refused(capsys, request_id, production, only_alice_approved(request_id))


def test_a_forged_approval_record_by_an_unlisted_key_is_ignored(production, approvers, capsys):
    request_id = approved_request(capsys, approvers.alice)
    store = vault()
    request = auth.read_request(store, request_id)
    forged = auth.sign_request(request, approvers.mallory)
    audit.append(
        store,
        f"approvals/{request_id}",
        "approval",
        {"request_id": request_id, "principal": "bob@example.org", "signature": forged},
        now=utcnow(),
    )

    assert_refused(capsys, request_id, production, only_alice_approved(request_id))


def test_a_tampered_request_voids_its_approvals(production, approvers, local_env, capsys):
    request_id = approved_request(capsys, approvers.alice, approvers.bob)
    path = local_env / "store" / "test" / "audit" / "requests" / f"{request_id}.json"
    stored = json.loads(path.read_text())
    stored["request"]["expires_at"] = "2099-01-01T00:00:00+00:00"
    path.write_text(json.dumps(stored))

    assert_refused(capsys, request_id, production, "valid approvals from nobody")


def test_an_expired_request_is_refused(production, approvers, capsys):
    request_id = approved_request(capsys, approvers.alice, approvers.bob)
    request = auth.read_request(vault(), request_id)

    with pytest.raises(auth.AuthorizationRefused, match="expired"):
        restore.restore_production(
            vault(),
            request_id,
            DatabaseUrl(production.production),
            approvers.file,
            now=lambda: request.expires_at + timedelta(seconds=1),
        )
    assert_production_untouched(production)


def test_an_expired_request_cannot_be_approved(databases, approvers, capsys):
    prove_on_staging(capsys)
    request_id = request_restore(capsys)
    request = auth.read_request(vault(), request_id)

    with pytest.raises(auth.AuthorizationRefused, match="expired"):
        auth.approve_request(
            vault(), request_id, approvers.alice, approvers.file, now=lambda: request.expires_at
        )


def test_request_lifetime_follows_restore_request_ttl_hours(
    databases, approvers, capsys, monkeypatch
):
    monkeypatch.setenv("RESTORE_REQUEST_TTL_HOURS", "1")
    prove_on_staging(capsys)
    request = auth.read_request(vault(), request_restore(capsys))

    assert request.expires_at - request.created_at == timedelta(hours=1)


def test_a_replayed_request_is_refused(production, approvers, capsys):
    request_id = approved_request(capsys, approvers.alice, approvers.bob)
    assert restore_production(capsys, request_id)[0] == 0
    write_sentinel(production.production)

    code, err = restore_production(capsys, request_id)

    assert code == 1
    assert "already executed" in err
    assert sentinel_present(production.production)
    assert len(previous_databases(DatabaseUrl(production.production))) == 1


def test_an_approval_by_a_key_removed_from_the_approvers_file_no_longer_counts(
    production, approvers, capsys
):
    request_id = approved_request(capsys, approvers.alice, approvers.bob)
    approvers.file.write_text(allowed_signer_line("alice@example.org", approvers.alice))

    assert_refused(capsys, request_id, production, only_alice_approved(request_id))


def test_a_backup_replaced_after_approval_is_refused(production, approvers, capsys):
    request_id = approved_request(capsys, approvers.alice, approvers.bob)
    back_up(production.production)  # same date, new object: a new SHA-256

    assert_refused(capsys, request_id, production, "changed since request")


def test_production_restore_without_a_request_is_refused_even_skipping_confirmation(
    production, capsys
):
    code, _, err = restore_to_production(capsys, "--skip-confirmation")

    assert code == 2
    assert "needs an approved request" in err
    assert_production_untouched(production)


def test_production_rollback_without_a_request_is_refused(production, capsys):
    code, _, err = run(capsys, "rollback-restore", "--target", "production")

    assert code == 2
    assert "needs an approved request" in err


def test_production_request_needs_a_staging_restore_that_passed_its_integrity_check(
    databases, approvers, capsys
):
    refused = run(
        capsys,
        "request-restore",
        *("--date", str(DAY), "--target", "production", "--reason", "x"),
    )
    assert refused[0] == 1
    assert "has no staging restore followed by a passing integrity check" in refused[2]

    assert run(capsys, "restore-from-backup", "--date", str(DAY), "--target", "staging")[0] == 0
    assert (
        run(
            capsys, "request-restore", "--date", str(DAY), "--target", "production", "--reason", "x"
        )[0]
        == 1
    )

    assert (
        run(capsys, "check-database-integrity", "--database", "staging", "--date", str(DAY))[0] == 0
    )
    request_restore(capsys)


def test_an_integrity_pass_of_another_backup_on_staging_does_not_count(databases, capsys):
    assert run(capsys, "restore-from-backup", "--date", str(DAY), "--target", "staging")[0] == 0
    assert (
        run(capsys, "check-database-integrity", "--database", "staging", "--date", str(DAY))[0] == 0
    )
    replaced = back_up(databases.production)  # a new backup of the same date, never on staging

    with pytest.raises(auth.AuthorizationRefused, match="no staging restore"):
        auth.require_staging_first(vault(), DAY, replaced.sha256)


def test_a_declined_confirmation_leaves_the_request_usable(production, approvers, capsys):
    request_id = approved_request(capsys, approvers.alice, approvers.bob)

    def decline(database: str) -> None:
        raise auth.AuthorizationRefused("declined")

    with pytest.raises(auth.AuthorizationRefused, match="declined"):
        restore.restore_production(
            vault(), request_id, DatabaseUrl(production.production), approvers.file, confirm=decline
        )

    assert_production_untouched(production)
    assert restore_production(capsys, request_id)[0] == 0


def test_no_database_password_reaches_the_audit_trail_or_the_output(
    databases, approvers, local_env, monkeypatch, capsys
):
    password = "hunter2-never-shown"
    for name, url in (
        ("DATABASE_URL", databases.production),
        ("STAGING_DATABASE_URL", databases.staging),
    ):
        monkeypatch.setenv(name, url.replace("postgres@", f"postgres:{password}@"))
    request_id = approved_request(capsys, approvers.alice, approvers.bob)

    code, out, err = restore_to_production(capsys, "--request", request_id, "--skip-confirmation")
    records = b"".join(p.read_bytes() for p in (local_env / "store").rglob("*.json"))

    assert code == 0, err
    assert password not in out + err
    assert password.encode() not in records


def test_production_restore_asks_for_the_database_name_and_without_a_terminal_refuses(
    production, approvers, capsys
):
    request_id = approved_request(capsys, approvers.alice, approvers.bob)

    code, _, err = restore_to_production(capsys, "--request", request_id)

    assert code == 2
    assert "confirmation needs a terminal" in err
    assert_production_untouched(production)
    assert restore_production(capsys, request_id)[0] == 0


def test_the_dual_authorized_restore_works_with_the_audit_trail_in_s3(
    aws_env, production, approvers, capsys
):
    request_id = approved_request(capsys, approvers.alice, approvers.bob)

    assert restore_production(capsys, request_id)[0] == 0
    code, err = restore_production(capsys, request_id)
    assert code == 1
    assert f"request {request_id} was already executed" in err
    keys = [
        o["Key"]
        for o in aws_env.s3.list_objects_v2(Bucket=aws_env.bucket, Prefix="test/audit/")["Contents"]
    ]
    assert f"test/audit/executions/{request_id}.json" in keys
    assert not sentinel_present(production.production)
