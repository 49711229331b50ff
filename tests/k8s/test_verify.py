"""The repo's manifests and chart verify clean, and each kind of breakage is caught by name."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mlref.k8s.render import Rendered
from mlref.k8s.schemas import SchemaSetupError, Validator
from mlref.k8s.verify import verify
from mlref.settings import Settings
from tests.k8s.conftest import COMMAND, KUBERNETES_VERSION, find, form

IMAGE = Settings().image


@pytest.mark.slow
def test_repo_verifies_clean(forms, validator, checkov, root, knative_features):
    sources = {f.source for f in forms}
    assert {"overlay:base", "overlay:kind", "overlay:canary", "overlay:promote"} <= sources
    assert {"chart:default", "chart:kind", "chart:canary", "chart:standard-canary"} <= sources
    report = verify(
        forms,
        validator,
        IMAGE,
        root / "pipelines",
        knative_features=knative_features,
        command=COMMAND,
    )
    assert report.ok, "\n".join(str(f) for f in report.findings)
    assert len(report.objects) == sum(len(f.objects) for f in forms)


def _broken(forms, mutate) -> Rendered:
    """A copy of the kind overlay with one mutation applied."""
    objects = copy.deepcopy(form(forms, "overlay:kind").objects)
    mutate(objects)
    return Rendered("broken", objects)


def _mlflow_container(objects):
    return find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]


def _isvc(objects):
    return find(objects, "InferenceService", "ctr")


def _raw_canary(objects):
    isvc = _isvc(objects)
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 10


BROKEN = {
    "unknown field": (
        lambda o: _mlflow_container(o).update(colour="blue"),
        ("Deployment", "mlflow", "schema", "colour"),
    ),
    "wrong type": (
        lambda o: find(o, "Deployment", "redis")["spec"].update(replicas="two"),
        ("Deployment", "redis", "schema", "spec.replicas"),
    ),
    "missing required field": (
        lambda o: _mlflow_container(o).pop("name"),
        ("Deployment", "mlflow", "schema", "'name' is a required property"),
    ),
    "privileged container": (
        lambda o: _mlflow_container(o)["securityContext"].update(privileged=True),
        ("Deployment", "mlflow", "security", "privileged"),
    ),
    "misspelled InferenceService field": (
        lambda o: _isvc(o)["spec"]["predictor"].update(minReplica=1),
        ("InferenceService", "ctr", "schema", "minReplica"),
    ),
    "canary in RawDeployment": (
        _raw_canary,
        ("InferenceService", "ctr", "structure", "spec.predictor.canaryTrafficPercent"),
    ),
    "latest tag": (
        lambda o: _mlflow_container(o).update(image="ghcr.io/mlref/mlref:latest"),
        ("Deployment", "mlflow", "security", "latest"),
    ),
    "no limits": (
        lambda o: _mlflow_container(o)["resources"].pop("limits"),
        ("Deployment", "mlflow", "security", "resources.limits.cpu"),
    ),
    "selector mismatch": (
        lambda o: find(o, "Deployment", "redis")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "cache"}
        ),
        ("Deployment", "redis", "structure", "does not match pod labels"),
    ),
}


@pytest.fixture(scope="module")
def broken_report(forms, validator, checkov, knative_features):
    """One verify run (one checkov process) over every broken variant."""
    broken = []
    for label, (mutate, _) in BROKEN.items():
        variant = _broken(forms, mutate)
        variant.source = label
        broken.append(variant)
    return verify(broken, validator, IMAGE, knative_features=knative_features, command=COMMAND)


@pytest.mark.parametrize("label", list(BROKEN))
def test_breakage_is_reported_naming_object_and_field(broken_report, label):
    kind, name, check, needle = BROKEN[label][1]
    hits = [
        f
        for f in broken_report.findings
        if f.source == label and (f.kind, f.name, f.check) == (kind, name, check)
    ]
    assert any(needle in f.message for f in hits), [
        str(f) for f in broken_report.findings if f.source == label
    ]


def test_privileged_container_fails_checkov(broken_report):
    messages = [f.message for f in broken_report.findings if f.source == "privileged container"]
    assert any(m.startswith("CKV_K8S_16") for m in messages), messages


def test_unbroken_objects_stay_clean(broken_report):
    """Each mutation is reported on its own object only: checks do not bleed."""
    for label, (_, (kind, name, _, _)) in BROKEN.items():
        others = [
            f
            for f in broken_report.findings
            if f.source == label and (f.kind, f.name) != (kind, name)
        ]
        assert not others, [str(f) for f in others]


def test_kind_without_schema_is_a_failure(validator):
    errors = validator.validate(
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    )
    assert errors and "no schema for Widget" in errors[0].message


def test_missing_crd_dir_is_an_error(tmp_path):
    with pytest.raises(SchemaSetupError, match="does not exist"):
        Validator(tmp_path / "nowhere", KUBERNETES_VERSION)


def test_crd_dir_comes_from_the_setting_and_strict_mode_fails_without(
    crd_dir, root, tmp_path, monkeypatch
):
    """$MLREF_CRDS_DIR finds the CRDs from a checkout anywhere; a missing directory skips
    the schema tests, and fails them under MLREF_STRICT_TESTS=1."""
    import tests.servers
    from mlref.k8s.schemas import CRDS_DIR_ENV, default_crd_dir
    from tests.k8s.conftest import find_crd_dir

    monkeypatch.setenv(CRDS_DIR_ENV, str(crd_dir))
    assert find_crd_dir(tmp_path / "elsewhere") == crd_dir
    monkeypatch.delenv(CRDS_DIR_ENV)
    assert default_crd_dir(root) == root.parent / "shared" / "crds"
    monkeypatch.setenv(CRDS_DIR_ENV, str(tmp_path / "none"))
    monkeypatch.setattr(tests.servers, "STRICT", False)
    with pytest.raises(pytest.skip.Exception, match=CRDS_DIR_ENV):
        find_crd_dir(root)
    monkeypatch.setattr(tests.servers, "STRICT", True)
    with pytest.raises(pytest.fail.Exception, match="MLREF_STRICT_TESTS=1"):
        find_crd_dir(root)


def test_unsupported_kubernetes_version_is_an_error(crd_dir):
    with pytest.raises(SchemaSetupError, match="no schemas"):
        Validator(crd_dir, "1.2")


def test_object_sets_must_match_between_chart_and_overlay(forms, validator):
    chart = form(forms, "chart:kind")
    overlay = form(forms, "overlay:kind")
    fewer = Rendered(
        "chart:kind", [o for o in chart.objects if o["metadata"]["name"] != "seaweedfs"]
    )
    report = verify([fewer, overlay], validator, IMAGE, security_scan=False, command=COMMAND)
    missing = {(f.kind, f.name) for f in report.findings if "only in overlay:kind" in f.message}
    assert missing == {
        ("Service", "seaweedfs"),
        ("StatefulSet", "seaweedfs"),
        ("NetworkPolicy", "seaweedfs"),
    }


def test_pipeline_image_must_match_manifests(forms, validator, tmp_path: Path, knative_features):
    (tmp_path / "training.yaml").write_text(
        "deploymentSpec:\n  executors:\n    exec-train:\n      container:\n"
        "        image: ghcr.io/mlref/mlref:0.0.9\n"
    )
    report = verify(
        [form(forms, "overlay:base")],
        validator,
        IMAGE,
        tmp_path,
        security_scan=False,
        knative_features=knative_features,
        command=COMMAND,
    )
    assert [f.message for f in report.findings] == [
        f"image ghcr.io/mlref/mlref:0.0.9 is not the image the manifests deploy ({IMAGE})"
    ]
