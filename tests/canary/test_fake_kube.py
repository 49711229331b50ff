"""The API server stand-in is as strict as the server: 404 for what it does not hold, 422 for
what the CRD refuses, 409 for another manager's field, and server-side apply's pruning."""

from __future__ import annotations

import copy

import pytest
from kubernetes.client.exceptions import ApiException

from tests.canary.fake_kube import RecordedCustomObjectsApi, server_side_apply
from tests.canary.test_rollout import live_isvc

WHERE = ("serving.kserve.io", "v1beta1", "mlref", "inferenceservices", "ctr")


def patch_of(**predictor) -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "ctr", "namespace": "mlref"},
        "spec": {"predictor": {"model": {"storageUri": "s3://new"}, **predictor}},
    }


@pytest.mark.parametrize("where", range(5), ids=["group", "version", "namespace", "plural", "name"])
def test_any_other_resource_is_not_found(where):
    api = RecordedCustomObjectsApi(live_isvc())
    wrong = list(WHERE)
    wrong[where] = "other"
    with pytest.raises(ApiException) as read:
        api.get_namespaced_custom_object(*wrong)
    with pytest.raises(ApiException) as patched:
        api.patch_namespaced_custom_object(*wrong, patch_of(), field_manager="mlref", force=True)
    assert read.value.status == patched.value.status == 404
    assert api.isvc == live_isvc()
    assert api.get_namespaced_custom_object(*WHERE)["metadata"]["name"] == "ctr"


@pytest.mark.parametrize(
    ("predictor", "field"),
    [
        ({"canaryTrafficPercent": "ten"}, "canaryTrafficPercent"),
        ({"canaryTrafficPercnt": 10}, "canaryTrafficPercnt"),
        ({"model": {"storageUri": 7}}, "storageUri"),
    ],
)
def test_what_the_crd_refuses_is_unprocessable(predictor, field):
    api = RecordedCustomObjectsApi(live_isvc())
    with pytest.raises(ApiException) as caught:
        api.patch_namespaced_custom_object(
            *WHERE, patch_of(**predictor), field_manager="mlref", force=True
        )
    assert caught.value.status == 422 and field in caught.value.reason
    assert api.isvc == live_isvc()


def test_a_result_without_required_fields_is_unprocessable():
    api = RecordedCustomObjectsApi(live_isvc())
    body = patch_of()
    body["spec"]["predictor"]["model"]["env"] = [{"value": "no name"}]
    with pytest.raises(ApiException) as caught:
        api.patch_namespaced_custom_object(*WHERE, body, field_manager="mlref", force=True)
    assert caught.value.status == 422


def test_another_managers_field_conflicts_unless_forced():
    api = RecordedCustomObjectsApi(None)
    api.kubectl_apply(live_isvc(), server_side=True)
    body = patch_of(canaryTrafficPercent=10)
    with pytest.raises(ApiException) as caught:
        api.patch_namespaced_custom_object(*WHERE, body, field_manager="mlref", force=False)
    assert caught.value.status == 409 and "kubectl" in caught.value.reason
    assert "storageUri" in caught.value.reason
    api.patch_namespaced_custom_object(*WHERE, body, field_manager="mlref", force=True)
    assert api.isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://new"


def test_apply_removes_only_what_no_other_manager_owns():
    """mlref's promote leaves canaryTrafficPercent out: gone if mlref alone set it, kept
    (the server's behaviour that kube.takeover_patch answers) if kubectl set it too."""
    canary = server_side_apply(live_isvc(), patch_of(canaryTrafficPercent=10))
    assert "canaryTrafficPercent" not in server_side_apply(canary, patch_of())["spec"]["predictor"]

    shared = server_side_apply(canary, patch_of(canaryTrafficPercent=10), "kubectl", force=False)
    kept = server_side_apply(shared, patch_of())
    assert kept["spec"]["predictor"]["canaryTrafficPercent"] == 10
    untouched = copy.deepcopy(live_isvc())
    assert server_side_apply(untouched, patch_of())["spec"]["predictor"]["serviceAccountName"]
