"""Spark on Kubernetes: the session a data step's pod starts, the image's executor entrypoint,
the driver's RBAC and NetworkPolicies in the chart and the kustomize component, and the
pipeline and submission that put the Spark steps on them."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from mlref.k8s import spark
from mlref.k8s.install import OBJECT_STORE_KEYS, OBJECT_STORE_SECRET
from mlref.k8s.render import Rendered
from mlref.pipelines.runner import run_service_account
from mlref.pipelines.training import SETTINGS_CONFIG_MAP
from mlref.platform import platform_for
from mlref.settings import Settings
from tests.k8s.conftest import form

POD_ENV = {
    "POD_IP": "10.244.1.7",
    "POD_NAMESPACE": "kubeflow",
    "KFP_POD_NAME": "mlref-training-abc-ingest-123",
    "AWS_ENDPOINT_URL": "http://seaweedfs.mlref.svc:8333",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "key-id",
    "AWS_SECRET_ACCESS_KEY": "the-secret",
    "MLREF_STORAGE__ROOT": "s3://mlref",
    "HOME": "/tmp",
}
PYTHON = "/opt/mlref/bin/python"


def cluster_settings(**engine) -> Settings:
    return Settings(mode="cluster", storage={"root": "s3://mlref"}, engine=engine)


def test_a_cluster_step_drives_executor_pods_from_its_own_pod() -> None:
    settings = cluster_settings(data="spark", spark_executors=4, spark_executor_memory="3g")
    conf = platform_for(settings).spark_conf(PYTHON, POD_ENV)
    assert conf["spark.master"] == "k8s://https://kubernetes.default.svc"
    assert conf["spark.submit.deployMode"] == "client"
    assert conf["spark.kubernetes.container.image"] == settings.image
    assert conf["spark.kubernetes.namespace"] == "kubeflow"
    # Executors are owned by the step's pod, and reach it at its IP on fixed ports.
    assert conf["spark.kubernetes.driver.pod.name"] == POD_ENV["KFP_POD_NAME"]
    assert conf["spark.driver.host"] == "10.244.1.7"
    assert conf["spark.driver.port"] == "7078"
    assert conf["spark.blockManager.port"] == conf["spark.driver.blockManager.port"] == "7079"
    assert conf["spark.executor.instances"] == "4"
    assert conf["spark.executor.cores"] == "1"
    assert conf["spark.executor.memory"] == "3g"
    assert conf["spark.executorEnv.PYSPARK_PYTHON"] == PYTHON
    # The object store: its address as env, its credentials from the Secret by reference;
    # no secret value in the conf, which Spark copies into a ConfigMap.
    assert conf["spark.executorEnv.AWS_ENDPOINT_URL"] == POD_ENV["AWS_ENDPOINT_URL"]
    assert conf["spark.executorEnv.MLREF_STORAGE__ROOT"] == "s3://mlref"
    for key in OBJECT_STORE_KEYS:
        assert conf[f"spark.kubernetes.executor.secretKeyRef.{key}"] == (
            f"{OBJECT_STORE_SECRET}:{key}"
        )
    assert not any(POD_ENV["AWS_SECRET_ACCESS_KEY"] in value for value in conf.values())
    assert "spark.executorEnv.HOME" not in conf
    for key, value in spark.EXECUTOR_LABELS.items():
        assert conf[f"spark.kubernetes.executor.label.{key}"] == value
    # What the driver would otherwise ask for beyond the Role.
    assert conf["spark.kubernetes.driver.ownPersistentVolumeClaim"] == "false"
    assert conf["spark.kubernetes.driver.reusePersistentVolumeClaim"] == "false"


def test_without_its_pod_fields_a_cluster_step_names_the_fix() -> None:
    settings = cluster_settings(data="spark")
    env = {k: v for k, v in POD_ENV.items() if k != "POD_IP"}
    with pytest.raises(spark.SparkConfigError, match=r"POD_IP.*MLREF_ENGINE__DATA=spark"):
        platform_for(settings).spark_conf(PYTHON, env)


def test_the_master_is_the_platforms_unless_the_settings_name_one() -> None:
    local = Settings(engine={"data": "spark"})
    assert platform_for(local).spark_conf(PYTHON, {}) == {"spark.master": "local[*]"}
    pinned = Settings(engine={"data": "spark", "spark_master": "local[2,2]"})
    assert platform_for(pinned).spark_conf(PYTHON, {}) == {"spark.master": "local[2,2]"}
    in_pod = cluster_settings(data="spark", spark_master="local[2]")
    assert platform_for(in_pod).spark_conf(PYTHON, {}) == {"spark.master": "local[2]"}


def executor_env() -> dict[str, str]:
    """The env Spark 4.0's BasicExecutorFeatureStep gives an executor container."""
    return {
        "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@10.244.1.7:7078",
        "SPARK_EXECUTOR_CORES": "1",
        "SPARK_EXECUTOR_MEMORY": "2g",
        "SPARK_APPLICATION_ID": "spark-0a1b",
        "SPARK_EXECUTOR_ID": "3",
        "SPARK_RESOURCE_PROFILE_ID": "0",
        "SPARK_EXECUTOR_POD_IP": "10.244.2.9",
        "SPARK_EXECUTOR_POD_NAME": "mlref-exec-3",
        "SPARK_CONF_DIR": "/opt/spark/conf",
        "SPARK_JAVA_OPT_10": "-Dspark.driver.blockManager.port=7079",
        "SPARK_JAVA_OPT_2": "-Dspark.driver.port=7078",
    }


def test_the_image_entrypoint_starts_the_executor_jvm_spark_asks_for(tmp_path: Path) -> None:
    argv = spark.entrypoint_argv(["executor"], executor_env())
    assert argv[0] == "java"
    # Java options in SPARK_JAVA_OPT_<n> order, as entrypoint.sh sorts them.
    assert argv[1:3] == ["-Dspark.driver.port=7078", "-Dspark.driver.blockManager.port=7079"]
    assert argv[3:5] == ["-Xms2g", "-Xmx2g"]
    classpath = argv[argv.index("-cp") + 1].split(":")
    assert classpath[0] == "/opt/spark/conf"
    assert classpath[1] == str(spark.pyspark_home() / "jars" / "*")
    main = argv.index("org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend")
    options = dict(zip(argv[main + 1 :: 2], argv[main + 2 :: 2], strict=True))
    assert options == {
        "--driver-url": "spark://CoarseGrainedScheduler@10.244.1.7:7078",
        "--executor-id": "3",
        "--cores": "1",
        "--app-id": "spark-0a1b",
        "--hostname": "10.244.2.9",
        "--resourceProfileId": "0",
        "--podName": "mlref-exec-3",
    }
    java_home = {**executor_env(), "JAVA_HOME": "/usr/lib/jvm/java-17"}
    assert spark.executor_command(java_home)[0] == "/usr/lib/jvm/java-17/bin/java"


def test_the_executor_backend_and_its_env_names_are_pysparks_own() -> None:
    """The class the entrypoint starts is in pyspark's jars, and every env name it reads is
    one Spark's Kubernetes constants define (read from the installed jar)."""
    (jar,) = (spark.pyspark_home() / "jars").glob("spark-kubernetes_*.jar")
    with zipfile.ZipFile(jar) as archive:
        backend = "org/apache/spark/scheduler/cluster/k8s/KubernetesExecutorBackend.class"
        assert backend in archive.namelist()
        constants = archive.read("org/apache/spark/deploy/k8s/Constants$.class")
    for name in executor_env():
        stem = "SPARK_JAVA_OPT_" if name.startswith("SPARK_JAVA_OPT_") else name
        assert stem.encode() in constants, name


# A Spark driver with fixed ports on 127.0.0.1 (a process of its own: one SparkContext per
# process): it prints its application id, then runs a Python job on whatever executor joins.
DRIVER = """
import json, os, sys
from pyspark.sql import SparkSession
master, port, block = sys.argv[1:4]
os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers' interpreter, as mlref.spark sets
spark = (
    SparkSession.builder.master(master).appName("executor-check")
    .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    .config("spark.driver.port", port).config("spark.blockManager.port", block)
    .config("spark.cores.max", "1").config("spark.ui.enabled", "false").getOrCreate()
)
print("APP", spark.sparkContext.applicationId, flush=True)
rows = spark.sparkContext.parallelize(range(4), 2).map(
    lambda x: (x * 2, os.environ.get("SPARK_EXECUTOR_POD_NAME"), sys.executable)
).collect()
print("ROWS", json.dumps(rows), flush=True)
spark.stop()
"""


@pytest.mark.slow
def test_an_executor_started_by_the_image_entrypoint_joins_its_driver_and_runs_tasks(
    tmp_path: Path,
) -> None:
    """The image's entrypoint with the env Spark gives an executor pod starts the executor
    JVM, which registers with its driver (at SPARK_DRIVER_URL), runs the driver's Python tasks
    with the project's interpreter and exits when the driver stops. The driver here has a
    standalone master that starts no executor of its own (it has no worker), in place of the
    Kubernetes scheduler that creates the pod."""
    from mlref.spark import JAVA_HINT, java_available
    from tests.servers import free_port, require, wait_for_port

    require(java_available(), f"Java not found: {JAVA_HINT}")
    master_port, driver_port, block_port = free_port(), free_port(), free_port()
    jars = str(spark.pyspark_home() / "jars" / "*")
    quiet = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    master = subprocess.Popen(
        [
            *("java", "-Xmx256m", "-cp", jars, "org.apache.spark.deploy.master.Master"),
            *("--host", "127.0.0.1", "--port", str(master_port), "--webui-port", "0"),
        ],
        stdout=(tmp_path / "master.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=quiet,
    )
    driver = None
    try:
        wait_for_port(master_port, master, timeout=180)
        driver = subprocess.Popen(
            [
                *(sys.executable, "-c", DRIVER, f"spark://127.0.0.1:{master_port}"),
                *(str(driver_port), str(block_port)),
            ],
            stdout=subprocess.PIPE,
            stderr=(tmp_path / "driver.log").open("wb"),
            text=True,
            env=quiet,
        )
        first = driver.stdout.readline()
        assert first.startswith("APP "), (tmp_path / "driver.log").read_text()[-3000:]
        env = {
            **quiet,
            **executor_env(),
            "SPARK_DRIVER_URL": f"spark://CoarseGrainedScheduler@127.0.0.1:{driver_port}",
            "SPARK_APPLICATION_ID": first.split()[1],
            "SPARK_EXECUTOR_MEMORY": "512m",
            "SPARK_EXECUTOR_POD_IP": "127.0.0.1",
            "SPARK_CONF_DIR": str(tmp_path),
        }
        env.pop("SPARK_JAVA_OPT_2"), env.pop("SPARK_JAVA_OPT_10")
        executor = subprocess.run(
            [sys.executable, "-m", "mlref.k8s.spark", "executor"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        log = executor.stdout + executor.stderr
        assert "KubernetesExecutorBackend" in log and "registered with driver" in log, log[-3000:]
        assert executor.returncode == 0, log[-3000:]  # the driver commanded its shutdown
        out, _ = driver.communicate(timeout=120)
        assert driver.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]
        rows = json.loads(next(line for line in out.splitlines() if line.startswith("ROWS "))[5:])
        assert rows == [[x * 2, "mlref-exec-3", sys.executable] for x in range(4)]
    finally:
        for process in (driver, master):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def test_the_entrypoint_runs_any_other_command_as_given() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mlref.k8s.spark", sys.executable, "-c", "print('as given')"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "as given"


def pipelines_objects(rendered: Rendered) -> list[dict]:
    return [o for o in rendered.objects if o["metadata"].get("namespace") == "kubeflow"]


@pytest.mark.parametrize("source", ["chart:spark", "overlay:spark"])
def test_spark_forms_give_the_driver_exactly_what_sparks_scheduler_uses(forms, source) -> None:
    rendered = form(forms, source)
    assert spark.role_problems(rendered.objects) == {}
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in pipelines_objects(rendered)}
    role = by_key[("Role", "mlref-spark-driver")]
    assert spark._rules(role["rules"]) == spark._rules(spark.DRIVER_RULES)
    assert ("ServiceAccount", "mlref-spark") in by_key
    settings = by_key[("ConfigMap", SETTINGS_CONFIG_MAP)]["data"]
    assert set(spark.SETTINGS_KEYS) <= set(settings)
    drift = next(o for o in rendered.objects if o["metadata"]["name"] == "drift-check")
    env = spark._env(drift)
    assert env["MLREF_ENGINE__DATA"] == "spark"
    assert env["MLREF_ENGINE__SPARK_SERVICE_ACCOUNT"] == "mlref-spark"


def test_spark_is_off_by_default(forms) -> None:
    for source in ("chart:default", "overlay:base", "chart:kind"):
        objects = form(forms, source).objects
        assert not [o for o in objects if "spark" in o["metadata"]["name"]], source
        for config in (o for o in objects if o["kind"] == "ConfigMap"):
            assert "MLREF_ENGINE__DATA" not in (config.get("data") or {}), source


def _mutated(forms, mutate) -> dict:
    objects = copy.deepcopy(form(forms, "chart:spark").objects)
    mutate({(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")): o for o in objects})
    return spark.role_problems([o for o in objects if o])


def test_a_driver_role_granting_more_or_less_is_reported(forms) -> None:
    def more(objs):
        objs[("Role", "mlref-spark-driver", "kubeflow")]["rules"].append(
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
        )

    def less(objs):
        objs[("Role", "mlref-spark-driver", "kubeflow")]["rules"][0]["verbs"].remove("watch")

    for mutate in (more, less):
        found = _mutated(forms, mutate)
        assert list(found) == [("Role", "mlref-spark-driver")]
        assert "exactly" in found[("Role", "mlref-spark-driver")][0][1]


def test_a_missing_service_account_setting_or_port_is_reported(forms) -> None:
    def no_account(objs):
        objs[("ServiceAccount", "mlref-spark", "kubeflow")]["metadata"]["name"] = "other"

    def no_key(objs):
        objs[("ConfigMap", "mlref-settings", "kubeflow")]["data"].pop(
            "MLREF_ENGINE__SPARK_EXECUTORS"
        )

    def other_port(objs):
        policy = objs[("NetworkPolicy", "mlref-spark-driver", "kubeflow")]
        policy["spec"]["ingress"][0]["ports"][0]["port"] = 7000

    for mutate, text in (
        (no_account, "ServiceAccount mlref-spark: none in kubeflow"),
        (no_key, "MLREF_ENGINE__SPARK_EXECUTORS: missing"),
        (other_port, "driver's ports [7078]"),
    ):
        found = _mutated(forms, mutate)
        messages = [m for problems in found.values() for _, m in problems]
        assert any(text in m for m in messages), (text, messages)


def test_chart_values_reach_the_settings_and_the_policies(root) -> None:
    from mlref.k8s.render import render_chart

    values = {
        "spark": {"enabled": True, "executors": 8, "driverPort": 7100, "blockManagerPort": 7101}
    }
    objects = render_chart(root, values, "spark-ports").objects
    assert spark.role_problems(objects) == {}
    settings = next(
        o["data"]
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["namespace"] == "kubeflow"
    )
    assert settings["MLREF_ENGINE__SPARK_EXECUTORS"] == "8"
    assert settings["MLREF_ENGINE__SPARK_DRIVER_PORT"] == "7100"


def test_the_spark_pipeline_maps_what_the_spark_forms_hold(forms, tmp_path: Path) -> None:
    """Compiled with engine.data=spark (kfp builds the graph when the module is imported, so
    in a process of its own, as `mlref pipeline submit` does), the data steps map the Spark
    settings, get their pod's IP and namespace and the driver's labels; every key they map
    is in the spark forms' pipelines ConfigMap. The other steps are unchanged."""
    path = tmp_path / "spark.yaml"
    script = (
        "import sys, pathlib; from mlref.pipelines.runner import compile_pipeline; "
        "compile_pipeline(pathlib.Path(sys.argv[1]))"
    )
    env = {**os.environ, "MLREF_ENGINE__DATA": "spark"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    platform = list(yaml.safe_load_all(path.read_text()))[1]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    data_steps = {"exec-ingest-op", "exec-features-op", "exec-training-set-op"}
    for name, config in executors.items():
        fields = {e["name"]: e["fieldPath"] for e in config.get("fieldPathAsEnv", [])}
        mapped = {
            pair["configMapKey"] for entry in config["configMapAsEnv"] for pair in entry["keyToEnv"]
        }
        if name not in data_steps:
            assert not fields and not set(spark.SETTINGS_KEYS) & mapped, name
            continue
        assert fields == spark.POD_FIELDS, name
        assert config["podMetadata"]["labels"] == spark.DRIVER_LABELS, name
        for source in ("chart:spark", "overlay:spark"):
            held = next(
                o["data"]
                for o in form(forms, source).objects
                if o["kind"] == "ConfigMap" and o["metadata"].get("namespace") == "kubeflow"
            )
            assert mapped <= set(held), (name, source, mapped - set(held))


def test_a_spark_run_is_submitted_with_the_drivers_service_account() -> None:
    assert run_service_account(Settings(engine={"data": "spark"})) == "mlref-spark"
    named = Settings(engine={"data": "spark", "spark_service_account": "spark-runs"})
    assert run_service_account(named) == "spark-runs"
    assert run_service_account(Settings()) is None
