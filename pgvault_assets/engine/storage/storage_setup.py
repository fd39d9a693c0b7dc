"""`pgvault init-storage`: the operations manual's AWS setup, done (or checked) idempotently.

Creates what is missing and fixes what falls short: the KMS key with its alias and automatic
rotation; the bucket with versioning, every public access block and default SSE-KMS under the
key; Object Lock when asked. Nothing that exists is replaced, so a second run changes nothing.
It also writes the least-privilege IAM policy for the role that runs pgvault, derived from
the calls the code makes (`OPERATION_ACTIONS`), narrowed to the real bucket and key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions

from pgvault_assets.engine.storage.bucket import read_bucket_settings
from pgvault_assets.errors import PgvaultError
from pgvault_assets.settings import Settings

DEFAULT_KEY_ALIAS = "alias/quran-backend-backup-key"
KEY_DESCRIPTION = "pgvault backup encryption key"

# Every AWS operation pgvault's backup role performs, and the IAM action that allows it.
# tests/test_deploy checks that every client call in the engine appears here.
OPERATION_ACTIONS: dict[str, str] = {
    # objects: backups, manifests, audit records, reports, locks, the doctor's probe
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",
    "get_object@version": "s3:GetObjectVersion",
    "delete_object": "s3:DeleteObject",
    "delete_object@version": "s3:DeleteObjectVersion",
    "put_object_retention": "s3:PutObjectRetention",
    "get_object_retention": "s3:GetObjectRetention",
    # the bucket: listings and the settings checked on first use and by the doctor
    "list_objects_v2": "s3:ListBucket",
    "head_bucket": "s3:ListBucket",
    "list_object_versions": "s3:ListBucketVersions",
    "list_multipart_uploads": "s3:ListBucketMultipartUploads",
    "get_bucket_versioning": "s3:GetBucketVersioning",
    "get_public_access_block": "s3:GetBucketPublicAccessBlock",
    "get_object_lock_configuration": "s3:GetBucketObjectLockConfiguration",
    "get_bucket_encryption": "s3:GetEncryptionConfiguration",
    # the key: resolving the alias, and the Encryption SDK's data keys
    "describe_key": "kms:DescribeKey",
    "generate_data_key": "kms:GenerateDataKey",
    "decrypt": "kms:Decrypt",
}
# Object Lock on writes needs s3:PutObjectRetention; HeadObject shows a version's lock only
# with s3:GetObjectRetention. s3:BypassGovernanceRetention is never granted, on purpose.
_BUCKET_ACTIONS = {
    "s3:ListBucket",
    "s3:ListBucketVersions",
    "s3:ListBucketMultipartUploads",
    "s3:GetBucketVersioning",
    "s3:GetBucketPublicAccessBlock",
    "s3:GetBucketObjectLockConfiguration",
    "s3:GetEncryptionConfiguration",
}


class StorageSetupError(PgvaultError):
    """init-storage met something it must not change on its own."""


@dataclass(frozen=True)
class SetupStep:
    thing: str
    outcome: str  # "created", "enabled", "set" (changed now) or "found", "off" (left as it was)
    detail: str

    @property
    def changed(self) -> bool:
        return self.outcome in ("created", "enabled", "set")


@dataclass(frozen=True)
class StorageSetup:
    bucket: str
    key_id: str
    key_arn: str
    steps: tuple[SetupStep, ...]

    @property
    def policy(self) -> dict[str, Any]:
        return iam_policy(self.bucket, self.key_arn)


def storage_names(settings: Settings) -> tuple[str, str]:
    """The bucket and key pgvault uses: the configured ones, else the manual's names."""
    bucket = settings.s3_bucket or f"quran-backend-backups-{settings.environment}"
    return bucket, settings.kms_key_id or DEFAULT_KEY_ALIAS


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "error"))


def _aws_error(exc: Exception, what: str) -> StorageSetupError:
    reason = _code(exc) if isinstance(exc, botocore.exceptions.ClientError) else type(exc).__name__
    return StorageSetupError(
        f"{what} failed ({reason}); init-storage needs an administrator's S3 and KMS rights"
    )


def ensure_key(kms: Any, key_id: str) -> tuple[str, list[SetupStep]]:
    """The key's ARN, creating key and alias when `key_id` is an alias that names nothing yet."""
    steps = []
    try:
        metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
        steps.append(SetupStep("KMS key", "found", f"{key_id} ({metadata['Arn']})"))
    except botocore.exceptions.ClientError as exc:
        if _code(exc) != "NotFoundException":
            raise _aws_error(exc, f"looking up KMS key {key_id}") from None
        if not key_id.startswith("alias/"):
            raise StorageSetupError(
                f"KMS key {key_id} does not exist; set BACKUP_KMS_KEY_ID to an alias "
                "(alias/NAME) and init-storage creates the key behind it"
            ) from None
        metadata = kms.create_key(
            Description=KEY_DESCRIPTION,
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
            Origin="AWS_KMS",
        )["KeyMetadata"]
        kms.create_alias(AliasName=key_id, TargetKeyId=metadata["KeyId"])
        steps.append(SetupStep("KMS key", "created", f"{key_id} ({metadata['Arn']})"))
    if metadata.get("KeyState", "Enabled") != "Enabled":
        raise StorageSetupError(
            f"KMS key {key_id} is {metadata['KeyState']}; enable it in KMS (backups cannot be "
            "written or read while it is not)"
        )
    if metadata.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
        raise StorageSetupError(
            f"KMS key {key_id} is {metadata['KeySpec']}; backups need a symmetric "
            "ENCRYPT_DECRYPT key: point BACKUP_KMS_KEY_ID at one"
        )
    try:
        rotating = kms.get_key_rotation_status(KeyId=metadata["KeyId"])["KeyRotationEnabled"]
        if not rotating:
            kms.enable_key_rotation(KeyId=metadata["KeyId"])
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise _aws_error(exc, f"automatic rotation of {key_id}") from None
    steps.append(
        SetupStep(
            "key rotation",
            "found" if rotating else "enabled",
            "automatic yearly rotation of the key material",
        )
    )
    return metadata["Arn"], steps


def ensure_bucket(
    s3: Any, bucket: str, key_arn: str, *, object_lock: bool, region: str | None
) -> list[SetupStep]:
    """The bucket with versioning, public access blocked, default SSE-KMS (and Object Lock)."""
    steps = []
    try:
        s3.head_bucket(Bucket=bucket)
        steps.append(SetupStep("bucket", "found", f"s3://{bucket}"))
    except botocore.exceptions.ClientError as exc:
        if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise StorageSetupError(
                f"bucket {bucket} exists but this account cannot use it ({_code(exc)}); "
                "choose another name with BACKUP_S3_BUCKET"
            ) from None
        extra: dict[str, Any] = {}
        if region and region != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=object_lock, **extra)
        steps.append(
            SetupStep(
                "bucket",
                "created",
                f"s3://{bucket}" + (" with Object Lock" if object_lock else ""),
            )
        )
    found = read_bucket_settings(s3, bucket)
    if found.unreadable:
        raise StorageSetupError(
            f"cannot read bucket {bucket}'s settings ({', '.join(found.unreadable)}); "
            "run init-storage with administrator rights"
        )

    if found.versioned:
        steps.append(SetupStep("versioning", "found", "enabled"))
    else:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        steps.append(SetupStep("versioning", "enabled", "every overwrite keeps the old version"))

    if found.public_access_blocked:
        steps.append(SetupStep("public access block", "found", "all four settings on"))
    else:
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        steps.append(SetupStep("public access block", "set", "all four settings on"))

    key_uuid = key_arn.rsplit("/", 1)[-1]
    algorithm, default_key = found.default_encryption or (None, None)
    if algorithm == "aws:kms" and default_key and default_key.rsplit("/", 1)[-1] == key_uuid:
        steps.append(SetupStep("default encryption", "found", "SSE-KMS with the backup key"))
    else:
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {
                            "SSEAlgorithm": "aws:kms",
                            "KMSMasterKeyID": key_arn,
                        },
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
        before = f" (was {algorithm})" if algorithm not in (None, "none") else ""
        steps.append(SetupStep("default encryption", "set", f"SSE-KMS with the backup key{before}"))

    if found.object_lock:
        steps.append(SetupStep("object lock", "found", "backups are locked for their tier"))
    elif object_lock:
        s3.put_object_lock_configuration(
            Bucket=bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
        )
        steps.append(SetupStep("object lock", "enabled", "backups are locked for their tier"))
    else:
        steps.append(
            SetupStep("object lock", "off", "optional: --object-lock makes backups immutable")
        )
    return steps


def init_storage(
    settings: Settings, *, object_lock: bool = False, s3: Any = None, kms: Any = None
) -> StorageSetup:
    """Create or check the key, then the bucket (whose default encryption names the key)."""
    bucket, key_id = storage_names(settings)
    session = boto3.session.Session()
    kms = kms or session.client("kms")
    s3 = s3 or session.client("s3")
    try:
        key_arn, key_steps = ensure_key(kms, key_id)
        bucket_steps = ensure_bucket(
            s3, bucket, key_arn, object_lock=object_lock, region=session.region_name
        )
    except botocore.exceptions.ClientError as exc:
        raise _aws_error(exc, "setting up storage") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageSetupError(
            f"AWS did not answer ({type(exc).__name__}); check the network, region and credentials"
        ) from None
    return StorageSetup(bucket, key_id, key_arn, tuple(key_steps + bucket_steps))


def iam_policy(bucket: str, key_arn: str) -> dict[str, Any]:
    """The manual's policy, narrowed to one bucket and key, with every action pgvault calls.

    Two KMS grants, because the key serves two callers: pgvault's own data keys carry the
    encryption context purpose=backup (the manual's condition); S3's SSE-KMS calls the key on
    pgvault's behalf with the object's ARN as context instead, so that grant is limited to S3
    and this bucket.
    """
    actions = set(OPERATION_ACTIONS.values())
    bucket_arn = f"arn:aws:s3:::{bucket}"
    region = key_arn.split(":")[3] if key_arn.count(":") >= 5 else "*"
    data_key_actions = sorted(actions & {"kms:GenerateDataKey", "kms:Decrypt"})
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PgvaultBucket",
                "Effect": "Allow",
                "Action": sorted(actions & _BUCKET_ACTIONS),
                "Resource": bucket_arn,
            },
            {
                "Sid": "PgvaultObjects",
                "Effect": "Allow",
                "Action": sorted(a for a in actions - _BUCKET_ACTIONS if a.startswith("s3:")),
                "Resource": f"{bucket_arn}/*",
            },
            {
                "Sid": "PgvaultBackupDataKeys",
                "Effect": "Allow",
                "Action": data_key_actions,
                "Resource": key_arn,
                "Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "backup"}},
            },
            {
                "Sid": "PgvaultBucketEncryption",
                "Effect": "Allow",
                "Action": data_key_actions,
                "Resource": key_arn,
                "Condition": {
                    "StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"},
                    "StringLike": {
                        "kms:EncryptionContext:aws:s3:arn": [bucket_arn, f"{bucket_arn}/*"]
                    },
                },
            },
            {
                "Sid": "PgvaultKeyLookup",
                "Effect": "Allow",
                "Action": ["kms:DescribeKey"],
                "Resource": key_arn,
            },
        ],
    }
