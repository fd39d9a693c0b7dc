"""One key, wherever pgvault runs from: a second key is never minted beside backups made with
the first, and a copy of the key can be checked against the live one before it is needed."""

from __future__ import annotations

import shutil
from datetime import date

import pytest
from test_defs.backup_history import fake_manifest, write_backup

from pgvault_assets.cli import main
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import KeyUnavailable
from pgvault_assets.settings import load_settings


def test_a_missing_key_beside_existing_backups_is_refused_not_replaced(local_env):
    vault = Vault.from_settings(load_settings())
    vault.encryption_keys()  # the first backup creates the key
    write_backup(vault, fake_manifest("test", date(2025, 6, 1)))
    key = local_env / "key" / "backup.key"
    key.unlink()  # a command run with another key path, or a lost key

    with pytest.raises(KeyUnavailable) as refused:
        Vault.from_settings(load_settings()).encryption_keys()
    message = str(refused.value)
    assert f"there is no key file at {key}" in message and "holds 1 backups" in message
    assert "pgvault key-fingerprint --file" in message and "\n" not in message
    assert not key.exists()


def test_the_first_key_is_created_where_there_are_no_backups(local_env):
    Vault.from_settings(load_settings()).encryption_keys()
    assert (local_env / "key" / "backup.key").exists()


def test_key_fingerprint_tells_a_true_copy_from_another_key(local_env, tmp_path, capsys):
    Vault.from_settings(load_settings()).encryption_keys()
    live = local_env / "key" / "backup.key"
    copy = tmp_path / "safe" / "backup.key"
    copy.parent.mkdir(mode=0o700)
    shutil.copy2(live, copy)

    assert main(["key-fingerprint", "--file", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "the copy matches the live key" in out
    assert live.read_bytes().hex() not in out  # a fingerprint, never the key

    copy.write_bytes(b"\x00" * 32)
    assert main(["key-fingerprint", "--file", str(copy)]) == 1
    assert "is not a copy of" in capsys.readouterr().err


def test_key_fingerprint_before_any_backup_says_so_in_one_line(local_env, capsys):
    assert main(["key-fingerprint"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: there is no key file at") and err.count("\n") == 1


def test_key_fingerprint_of_a_copy_that_is_not_there_names_the_copy(local_env, tmp_path, capsys):
    Vault.from_settings(load_settings()).encryption_keys()
    assert main(["key-fingerprint", "--file", str(tmp_path / "usb" / "backup.key")]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: there is no file at {tmp_path / 'usb' / 'backup.key'}; give --file the copy to check\n"
    )
