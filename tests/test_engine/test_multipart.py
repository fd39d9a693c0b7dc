"""Any backup up to S3's 5 TiB object limit fits in its 10,000 parts, with memory bounded by
the part size, not the backup's: proven with the limits made small, against the moto server."""

from __future__ import annotations

import os

import pytest

from pgvault_assets.engine.storage.store import multipart
from pgvault_assets.engine.storage.store.multipart import (
    LARGEST_PART,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    capacity,
    first_part_size,
    part_size,
)
from pgvault_assets.engine.storage.store.s3 import S3Store
from pgvault_assets.errors import StoreError

MiB = 1024 * 1024
TiB = 1024**4


def test_ten_thousand_parts_hold_more_than_s3s_largest_object_in_parts_of_at_most_a_gib():
    assert part_size(1) == MIN_PART_SIZE == 8 * MiB
    assert sum(part_size(n) for n in range(1, MAX_PARTS + 1)) > 5 * TiB
    # Memory is about three parts: the cap, not S3's 5 GiB per part, bounds it.
    assert max(part_size(n) for n in range(1, MAX_PARTS + 1)) == LARGEST_PART == 1024**3
    assert LARGEST_PART < MAX_PART_SIZE


def test_parts_stay_small_until_the_backup_is_large():
    assert first_part_size(None) == first_part_size(100 * 1024**3) == MIN_PART_SIZE
    uploaded, number = 0, 0
    while uploaded < 100 * 1024**3:  # a 100 GiB backup's parts grow to 128 MiB, no more
        number += 1
        uploaded += part_size(number)
    assert part_size(number) == 128 * MiB
    # The previous backup was 4 TiB: parts start larger, so twice that would still fit.
    big = first_part_size(4 * TiB)
    assert big > MIN_PART_SIZE and capacity(big) >= 8 * TiB


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three parts at most, the size doubling every part, from moto's 5 MiB minimum."""
    monkeypatch.setattr(multipart, "MAX_PARTS", 3)
    monkeypatch.setattr(multipart, "PARTS_PER_SIZE", 1)
    monkeypatch.setattr(multipart, "MIN_PART_SIZE", 5 * MiB)


def _upload(store: S3Store, key: str, data: bytes) -> None:
    writer = store.open_writer(key)
    for start in range(0, len(data), MiB):
        writer.write(data[start : start + MiB])
    writer.commit()


def test_an_upload_past_the_part_limit_at_its_first_size_completes_in_growing_parts(
    aws_env, small_limits
):
    store = S3Store(aws_env.bucket, aws_env.kms_key_id)
    data = os.urandom(30 * MiB)  # six parts of 5 MiB, but three parts of 5, 10 and 15 MiB
    _upload(store, "test/big", data)

    head = aws_env.s3.head_object(Bucket=aws_env.bucket, Key="test/big", PartNumber=1)
    assert head["PartsCount"] == 3
    body = aws_env.s3.get_object(Bucket=aws_env.bucket, Key="test/big")["Body"].read()
    assert body == data


def test_an_object_larger_than_the_parts_can_hold_fails_in_one_line_and_leaves_no_upload(
    aws_env, small_limits
):
    store = S3Store(aws_env.bucket, aws_env.kms_key_id)
    with pytest.raises(StoreError, match=r"needs more than S3's 3 parts") as refused:
        _upload(store, "test/huge", os.urandom(40 * MiB))  # 5 + 10 + 20 MiB hold 35
    assert "\n" not in str(refused.value)
    assert aws_env.s3.list_multipart_uploads(Bucket=aws_env.bucket).get("Uploads", []) == []
