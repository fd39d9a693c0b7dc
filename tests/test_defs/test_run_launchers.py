"""The README's production run launchers: the repository's dagster.yaml with `deploy/ecs.yaml` or
`deploy/k8s.yaml` added loads as a real instance, and a fleet database's `run_size` sizes its
run's task or pod through the launcher's own reading of the run's tags."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRun
from dagster_aws.ecs import EcsRunLauncher
from dagster_aws.ecs.container_context import EcsContainerContext
from dagster_k8s import K8sRunLauncher

from pgvault_assets.defs.backup import run_tags
from pgvault_assets.errors import ConfigError
from pgvault_assets.fleet import parse_fleet

REPO = Path(__file__).resolve().parents[2]
FLEET = parse_fleet(
    """
servers: [{name: main, url_env: MAIN_DATABASE_URL}]
databases:
  - {name: billing, server: main, dbname: billing, run_size: {cpu: 2, memory_mib: 8192}}
  - {name: wiki, server: main, dbname: wiki}
""",
    Path("fleet.yaml"),
)
KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "u", "user": {"token": "t"}}],
    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "c",
}


def _instance_home(tmp_path: Path, launcher: str, **config_changes: object) -> Path:
    """dagster.yaml with the launcher block of `deploy/<launcher>.yaml` added."""
    home = tmp_path / launcher
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    block = yaml.safe_load((REPO / "deploy" / f"{launcher}.yaml").read_text())
    block["run_launcher"]["config"].update(config_changes)
    with (home / "dagster.yaml").open("a") as config:
        config.write("\n" + yaml.safe_dump(block))
    return home


def _run(database: str) -> DagsterRun:
    return DagsterRun(job_name="fleet_backup_job", tags=run_tags(FLEET.choose(database)))


@pytest.fixture
def dagster_database(local_env, make_database, monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_PG_URL", make_database("dagster"))


def test_ecs_runs_are_sized_by_the_databases_run_size(dagster_database, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with DagsterInstance.from_config(str(_instance_home(tmp_path, "ecs"))) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, EcsRunLauncher)
        sized = {}
        for name in ("billing", "wiki"):
            run = _run(name)
            context = EcsContainerContext.create_for_run(run, launcher)
            sized[name] = dict(launcher.get_cpu_and_memory_overrides(context, run))
        # The secrets the task gets are named, never inline, and no volume is mounted.
        assert {secret["name"] for secret in launcher.secrets} >= {"DAGSTER_PG_URL"}
        assert all(secret["valueFrom"].startswith("arn:aws:") for secret in launcher.secrets)
        assert "volumes" not in launcher.task_definition_dict

    assert sized["billing"] == {"cpu": "2048", "memory": "8192"}
    assert sized["wiki"] == {"cpu": "512", "memory": "2048"}  # the launcher's default size


def test_kubernetes_runs_are_sized_by_the_databases_run_size(
    dagster_database, tmp_path, monkeypatch
):
    # Outside a cluster the launcher reads a kubeconfig instead; nothing else changes.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    home = _instance_home(
        tmp_path, "k8s", load_incluster_config=False, kubeconfig_file=str(kubeconfig)
    )
    with DagsterInstance.from_config(str(home)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, K8sRunLauncher)
        billing = launcher.get_container_context_for_run(_run("billing"))
        wiki = launcher.get_container_context_for_run(_run("wiki"))
        assert not launcher.volumes

    assert billing.run_k8s_config.container_config["resources"] == {
        "requests": {"cpu": "2000m", "memory": "8192Mi"},
        "limits": {"memory": "8192Mi"},
    }
    # Without a run_size, the launcher's default size.
    assert wiki.run_k8s_config.container_config["resources"] == {
        "requests": {"cpu": "500m", "memory": "2Gi"},
        "limits": {"memory": "2Gi"},
    }


def test_a_size_given_twice_is_refused_naming_the_field():
    with pytest.raises(
        ConfigError, match=r"databases\[0\]\.run_tags: 'ecs/cpu' is set by run_size"
    ):
        parse_fleet(
            """
servers: [{name: main, url_env: MAIN_URL}]
databases:
  - {name: a, server: main, dbname: a, run_size: {cpu: 1, memory_mib: 1024},
     run_tags: {ecs/cpu: "256"}}
""",
            Path("fleet.yaml"),
        )
