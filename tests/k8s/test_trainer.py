"""Kubeflow Trainer, only when asked: the training step's access to TrainJobs (chart value
trainer.enabled, overlays/trainer) is what its code calls, and kind-up installs the Trainer
release whose API the step builds, under --trainer alone."""

from __future__ import annotations

import re

from mlref.k8s.render import render_chart, render_overlay
from mlref.training.trainjob import TRAINER_VERSION
from mlref.training.trainjob_client import API_ACCESS
from tests.cluster.trainer_api import CRDS, granted
from tests.k8s.test_install import _script, _script_value

ROLE = "mlref-train-trainjobs"


def test_the_training_step_may_make_what_it_calls_only_where_trainer_is_enabled(root):
    enabled = [
        render_chart(root, {"trainer": {"enabled": True}}, "trainer").objects,
        render_overlay(root, "trainer").objects,
    ]
    for objects in enabled:
        access = granted(objects, "kubeflow", "pipeline-runner")
        for resource, verbs in API_ACCESS.items():
            assert verbs <= access.get(resource, set()), (resource, access)
        assert access[("trainer.kubeflow.org", "trainjobs")] <= {
            "create",
            "get",
            "watch",
            "delete",
        }
    for objects in (
        render_chart(root, {}, "default").objects,
        render_overlay(root, "base").objects,
    ):
        assert not [o for o in objects if o["metadata"]["name"] == ROLE]


def test_kind_up_installs_the_trainer_the_step_builds_for_only_when_asked(root):
    assert _script_value(root, "TRAINER_VERSION") == TRAINER_VERSION
    (crd,) = CRDS.glob("*.yaml")
    assert f"Kubeflow Trainer {TRAINER_VERSION}'s TrainJob CRD" in crd.read_text().splitlines()[0]
    script = _script(root)
    guarded = re.search(r'if \[\[ "\$TRAINER" == 1 \]\]; then\n(.*?)\nfi\n', script, re.DOTALL)
    assert guarded, "the Trainer install is not behind --trainer"
    body = guarded.group(1)
    for overlay in ("manager", "runtimes"):
        url = (
            f"github.com/kubeflow/trainer.git/manifests/overlays/{overlay}?ref=${{TRAINER_VERSION}}"
        )
        assert f'kubectl apply --server-side -k "{url}"' in body
        assert script.count(f"overlays/{overlay}?ref=") == 1
    assert "CHART_EXTRA+=(--set trainer.enabled=true)" in body
    assert '"${CHART_EXTRA[@]}"' in script and 'TRAINER="${MLREF_KIND_TRAINER:-0}"' in script
