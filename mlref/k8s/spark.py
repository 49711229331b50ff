"""Spark on Kubernetes: the pipeline step's own pod is the driver, executors are pods.

With a ``k8s://`` master Spark's scheduler (``KubernetesClusterSchedulerBackend``, in
pyspark's ``spark-kubernetes`` jar) creates executor pods of the same image in the step's
namespace, owned by the step's pod (``spark.kubernetes.driver.pod.name``), and deletes them
when the session stops. What it needs from the cluster is data here, so the session's
settings (:func:`kubernetes_conf`), the driver's Role (:data:`DRIVER_RULES`, rendered by the
chart and the ``spark`` kustomize component) and ``mlref manifests verify``
(:func:`role_problems`) cannot drift apart.

Executors read and write the object store through fsspec like every other step: no Hadoop S3
connector. They get the driver's object-store env (``spark.executorEnv.*``) and the
credentials from the same Secret (``spark.kubernetes.executor.secretKeyRef.*``), never as
values in the Spark conf, which Spark copies into a ConfigMap.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlref.k8s.checks import Problem
from mlref.k8s.install import OBJECT_STORE_KEYS, OBJECT_STORE_SECRET
from mlref.k8s.workloads import containers
from mlref.settings import EngineSettings, Settings

KUBERNETES_MASTER = "k8s://https://kubernetes.default.svc"
# The pod's own address and namespace, from the downward API (pipelines/training.py gives
# them to the steps that run Spark); KFP_POD_NAME is set on every pipeline pod by Kubeflow.
POD_FIELDS = {"POD_IP": "status.podIP", "POD_NAMESPACE": "metadata.namespace"}
POD_NAME_ENV = "KFP_POD_NAME"
# Settings keys the chart puts in the pipelines' ConfigMap when Spark is enabled; the steps
# that run Spark map them (with the usual POD_SETTINGS) when compiled with engine.data=spark.
SETTINGS_KEYS = (
    "MLREF_ENGINE__DATA",
    "MLREF_ENGINE__SPARK_EXECUTORS",
    "MLREF_ENGINE__SPARK_EXECUTOR_CORES",
    "MLREF_ENGINE__SPARK_EXECUTOR_MEMORY",
    "MLREF_ENGINE__SPARK_DRIVER_PORT",
    "MLREF_ENGINE__SPARK_BLOCK_MANAGER_PORT",
)
# The driver's env that executors get too: where the object store is (not its credentials).
EXECUTOR_ENV_PREFIXES = ("AWS_", "MLREF_", "MLFLOW_S3_")
# Pod labels the NetworkPolicies between driver and executors select (chart: spark.yaml).
DRIVER_LABELS = {
    "app.kubernetes.io/part-of": "mlref",
    "app.kubernetes.io/component": "spark-driver",
}
EXECUTOR_LABELS = {
    "app.kubernetes.io/part-of": "mlref",
    "app.kubernetes.io/component": "spark-executor",
}

# What the driver asks of the API server, read from Spark 4.0's scheduler:
# - pods: get (its own pod, for the executors' ownerReference), create (ExecutorPodsAllocator),
#   list and watch (ExecutorPodsPollingSnapshotSource, ExecutorPodsWatchSnapshotSource),
#   patch (executor id and decommission labels), delete and deletecollection (lost
#   executors; all of them, selected by label, when the session stops);
# - configmaps: create (the executors' spark.properties, setUpExecutorConfigMap), delete,
#   deletecollection (by label when the session stops).
# Nothing else: kubernetes_conf turns off the executor PVCs the driver would own and list
# (ownPersistentVolumeClaim, reusePersistentVolumeClaim) and the deletion of a driver
# Service, which client mode never creates.
DRIVER_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "watch"],
    },
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "verbs": ["create", "delete", "deletecollection"],
    },
)


class SparkConfigError(RuntimeError):
    """The pod lacks what Spark on Kubernetes needs; the message names the fix."""


def kubernetes_conf(
    settings: Settings, master: str, env: Mapping[str, str], python: str
) -> dict[str, str]:
    """The Spark settings that make this process the driver of executor pods."""
    engine = settings.engine
    missing = [name for name in POD_FIELDS if not env.get(name)]
    if missing:
        raise SparkConfigError(
            f"engine.data is spark with master {master} but {', '.join(missing)} is not set: "
            "compile the pipeline with MLREF_ENGINE__DATA=spark (it gives the Spark steps "
            "their pod's IP and namespace through the downward API)"
        )
    conf = {
        "spark.master": master,
        "spark.submit.deployMode": "client",
        "spark.kubernetes.container.image": settings.image,
        "spark.kubernetes.namespace": env["POD_NAMESPACE"],
        "spark.driver.host": env["POD_IP"],
        "spark.driver.bindAddress": "0.0.0.0",
        "spark.driver.port": str(engine.spark_driver_port),
        "spark.driver.blockManager.port": str(engine.spark_block_manager_port),
        "spark.blockManager.port": str(engine.spark_block_manager_port),
        "spark.executor.instances": str(engine.spark_executors),
        "spark.executor.cores": str(engine.spark_executor_cores),
        "spark.executor.memory": engine.spark_executor_memory,
        "spark.kubernetes.driver.ownPersistentVolumeClaim": "false",
        "spark.kubernetes.driver.reusePersistentVolumeClaim": "false",
        "spark.kubernetes.driver.service.deleteOnTermination": "false",
        "spark.ui.enabled": "false",
        "spark.executorEnv.PYSPARK_PYTHON": python,
    }
    if env.get(POD_NAME_ENV):
        conf["spark.kubernetes.driver.pod.name"] = env[POD_NAME_ENV]
    for key, value in EXECUTOR_LABELS.items():
        conf[f"spark.kubernetes.executor.label.{key}"] = value
    for name in sorted(env):
        if name.startswith(EXECUTOR_ENV_PREFIXES) and name not in OBJECT_STORE_KEYS:
            conf[f"spark.executorEnv.{name}"] = env[name]
    for key in OBJECT_STORE_KEYS:
        conf[f"spark.kubernetes.executor.secretKeyRef.{key}"] = f"{OBJECT_STORE_SECRET}:{key}"
    return conf


def pyspark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def executor_command(env: Mapping[str, str]) -> list[str]:
    """The executor JVM's argv from the env Spark gives an executor pod: what the ``executor``
    case of Spark's image entrypoint (``entrypoint.sh``) runs, with pyspark's jars."""
    home = pyspark_home()
    java = str(Path(env["JAVA_HOME"]) / "bin" / "java") if env.get("JAVA_HOME") else "java"
    options = [
        env[name]
        for name in sorted(
            (n for n in env if n.startswith("SPARK_JAVA_OPT_")),
            key=lambda n: int(n.rsplit("_", 1)[1]),
        )
    ]
    classpath = [env.get("SPARK_CONF_DIR", "/opt/spark/conf"), str(home / "jars" / "*")]
    memory = env["SPARK_EXECUTOR_MEMORY"]
    return [
        java,
        *options,
        f"-Xms{memory}",
        f"-Xmx{memory}",
        "-cp",
        ":".join(classpath),
        "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend",
        "--driver-url",
        env["SPARK_DRIVER_URL"],
        "--executor-id",
        env["SPARK_EXECUTOR_ID"],
        "--cores",
        env["SPARK_EXECUTOR_CORES"],
        "--app-id",
        env["SPARK_APPLICATION_ID"],
        "--hostname",
        env["SPARK_EXECUTOR_POD_IP"],
        "--resourceProfileId",
        env["SPARK_RESOURCE_PROFILE_ID"],
        "--podName",
        env["SPARK_EXECUTOR_POD_NAME"],
    ]


def entrypoint_argv(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """The image's entrypoint: Spark's ``executor`` pods start the executor JVM; any other
    command (every mlref pod sets its own) runs as given."""
    if argv[:1] == ["executor"]:
        return executor_command(env)
    if not argv:
        raise SystemExit("usage: python -m mlref.k8s.spark executor | <command> [args...]")
    return argv


def main() -> None:
    """``ENTRYPOINT`` of the image (Dockerfile): exec the command, so signals reach it."""
    argv = entrypoint_argv(sys.argv[1:], os.environ)
    os.environ.setdefault("SPARK_HOME", str(pyspark_home()))
    os.execvp(argv[0], argv)


Found = dict[tuple[str, str], list[Problem]]
DRIVER_ROLE_BINDING = "mlref-spark-driver"
DEFAULT_ACCOUNT = EngineSettings.model_fields["spark_service_account"].default


def _rules(rules: Any) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    """Role rules in a canonical order, to compare what they grant."""
    return sorted(
        (
            tuple(sorted(rule.get("apiGroups") or [])),
            tuple(sorted(rule.get("resources") or [])),
            tuple(sorted(rule.get("verbs") or [])),
        )
        for rule in rules or []
    )


def _ports(policy: dict[str, Any], direction: str) -> set[int]:
    return {
        port.get("port")
        for rule in policy.get("spec", {}).get(direction) or []
        for port in rule.get("ports") or []
    }


def _env(obj: dict[str, Any]) -> dict[str, str]:
    return {
        var["name"]: str(var.get("value", ""))
        for container in containers(obj)
        for var in container.spec.get("env") or []
        if "value" in var
    }


def role_problems(objects: list[dict[str, Any]]) -> Found:
    """In a form that runs the data steps on Spark (its pipelines' ConfigMap says
    ``MLREF_ENGINE__DATA: spark``): every Spark setting the steps map is there; the
    ServiceAccount runs are submitted with exists in that namespace, bound to a Role that
    grants exactly :data:`DRIVER_RULES`; NetworkPolicies let executors reach the driver's
    ports and the driver and executors reach the executors' block manager."""
    found: Found = {}

    def add(obj: dict[str, Any], path: str, message: str) -> None:
        found.setdefault((obj["kind"], obj["metadata"]["name"]), []).append((path, message))

    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj.get("kind", ""), []).append(obj)
    for config in by_kind.get("ConfigMap", []):
        data = config.get("data") or {}
        if config["metadata"]["name"] != "mlref-settings" or data.get(SETTINGS_KEYS[0]) != "spark":
            continue
        namespace = config["metadata"].get("namespace", "")
        missing = [key for key in SETTINGS_KEYS if key not in data]
        if missing:
            add(config, "data", f"the Spark steps map {', '.join(missing)}: missing")
        submitters = [
            _env(job) for job in by_kind.get("CronJob", []) if SETTINGS_KEYS[0] in _env(job)
        ]
        accounts = {
            env.get("MLREF_ENGINE__SPARK_SERVICE_ACCOUNT", DEFAULT_ACCOUNT) for env in submitters
        } or {DEFAULT_ACCOUNT}
        local = [o for o in objects if o["metadata"].get("namespace") == namespace]
        for account in sorted(accounts):
            if not any(
                o["kind"] == "ServiceAccount" and o["metadata"]["name"] == account for o in local
            ):
                add(config, "data", f"runs use ServiceAccount {account}: none in {namespace}")
        binding = next(
            (
                o
                for o in local
                if o["kind"] == "RoleBinding" and o["metadata"]["name"] == DRIVER_ROLE_BINDING
            ),
            None,
        )
        if binding is None:
            add(config, "data", f"no RoleBinding {DRIVER_ROLE_BINDING} in {namespace}")
            continue
        subjects = {
            s.get("name")
            for s in binding.get("subjects") or []
            if s.get("kind") == "ServiceAccount"
        }
        if not accounts <= subjects:
            add(binding, "subjects", f"binds {sorted(subjects)}, not {sorted(accounts)}")
        ref = binding.get("roleRef") or {}
        role = next(
            (
                o
                for o in local
                if o["kind"] == ref.get("kind") and o["metadata"]["name"] == ref.get("name")
            ),
            None,
        )
        if ref.get("kind") != "Role" or role is None:
            add(
                binding,
                "roleRef",
                f"{ref.get('kind')}/{ref.get('name')}: not a Role in {namespace}",
            )
        elif _rules(role.get("rules")) != _rules(DRIVER_RULES):
            add(
                role,
                "rules",
                "the Spark driver's Role must grant exactly what Spark's Kubernetes scheduler "
                f"uses (mlref/k8s/spark.py DRIVER_RULES): {list(DRIVER_RULES)}",
            )
        driver_port = int(data.get("MLREF_ENGINE__SPARK_DRIVER_PORT", 0) or 0)
        block_port = int(data.get("MLREF_ENGINE__SPARK_BLOCK_MANAGER_PORT", 0) or 0)
        policies = [o for o in local if o["kind"] == "NetworkPolicy"]
        for role_name, labels, ports in (
            ("driver's", DRIVER_LABELS, {driver_port, block_port}),
            ("executors'", EXECUTOR_LABELS, {block_port}),
        ):
            opened: set[int] = set()
            for policy in policies:
                if (policy["spec"].get("podSelector") or {}).get("matchLabels") == labels:
                    opened |= _ports(policy, "ingress")
            if not ports <= opened:
                add(
                    config,
                    "data",
                    f"no NetworkPolicy in {namespace} opens the Spark {role_name} ports "
                    f"{sorted(ports - opened)} (pods labelled {labels})",
                )
    return found


if __name__ == "__main__":
    main()
