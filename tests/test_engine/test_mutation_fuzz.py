"""Every mutant of a stored backup is refused, even when its manifest is rewritten to match."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgvault_assets.engine.manifest import manifest_key, object_key
from pgvault_assets.engine.restore import verify_backup
from pgvault_assets.errors import IntegrityError, KeyUnavailable
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
