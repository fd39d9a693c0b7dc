"""Every mutant of a stored backup is refused, even when its manifest is rewritten to match."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgvault_assets.engine.basics.names import manifest_key, object_key
from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.errors import IntegrityError, KeyUnavailable, PgvaultError
from pgvault_assets.settings import DatabaseUrl
from tests.dbcompare import database_snapshot
from tests.test_engine.helpers import DAY, back_up, vault

mutations = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("drop"), st.floats(0, 1, exclude_max=True), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0)),
)


def mutate(data: bytes, kind: str, where: float, value: int) -> bytes:
    at = int(where * len(data))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ value]) + data[at + 1 :]
    if kind == "insert":
        return data[:at] + bytes([value]) + data[at:]
    if kind == "drop":
        return data[:at] + data[at + value :]
    return data[:at]


def test_mutated_objects_are_refused_with_honest_and_lying_manifests(local_env, awkward_database):
    original = back_up(awkward_database)
    store = local_env / "store"
    object_path = store / object_key("test", DAY)
    manifest_path = store / manifest_key("test", DAY)
    pristine = object_path.read_bytes()
    tried = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutations, st.booleans())
    def check(mutation, lying_manifest):
        mutant = mutate(pristine, *mutation)
        if mutant == pristine:
            return
        object_path.write_bytes(mutant)
        manifest = original
        if lying_manifest:
            manifest = replace(
                original, sha256=hashlib.sha256(mutant).hexdigest(), size_bytes=len(mutant)
            )
        manifest_path.write_bytes(manifest.to_json())
        tried.append(mutation)
        try:
            verify_backup(vault(), DAY, full=True)
        except (IntegrityError, KeyUnavailable):
            return
        raise AssertionError(f"mutant {mutation} passed verification")

    check()
    object_path.write_bytes(pristine)
    manifest_path.write_bytes(original.to_json())
    assert verify_backup(vault(), DAY).sha256 == original.sha256
    assert len(tried) >= 100


def test_mutated_manifests_are_refused_or_restore_exactly_the_original(
    local_env, awkward_database, make_database
):
    """Flip, insert, drop or truncate bytes of the manifest itself: every mutant is refused
    (before restore, or before the swap with the target untouched) or restores the original."""
    original = back_up(awkward_database)
    manifest_path = local_env / "store" / manifest_key("test", DAY)
    pristine = manifest_path.read_bytes()
    source = database_snapshot(awkward_database)

    def marked_target() -> str:
        url = make_database("target")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE untouched (id int)")
        return url

    target = [marked_target()]
    outcomes: dict[str, int] = {"refused": 0, "refused before the swap": 0, "restored": 0}

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutations)
    def check(mutation):
        mutant = mutate(pristine, *mutation)
        if mutant == pristine:
            return
        manifest_path.write_bytes(mutant)
        try:
            verify_backup(vault(), DAY, full=True)
        except PgvaultError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
            return
        try:
            restore_backup(vault(), DAY, DatabaseUrl.parse(target[0], "target"))
        except PgvaultError:
            assert database_snapshot(target[0])["tables"].keys() == {"public.untouched"}
            outcomes["refused before the swap"] += 1
            return
        assert database_snapshot(target[0]) == source, f"mutant {mutation} restored other data"
        outcomes["restored"] += 1
        target[0] = marked_target()

    check()
    manifest_path.write_bytes(pristine)
    assert verify_backup(vault(), DAY).sha256 == original.sha256
    assert sum(outcomes.values()) >= 40, outcomes
    assert outcomes["refused"] > 0
