#!/usr/bin/env bash
# A local mlref cluster on kind: cert-manager, KServe (Serverless with Knative, or Standard
# with --standard), standalone Kubeflow Pipelines, the mlref image and Helm chart, then one
# training run. Every step is idempotent: re-running converges instead of failing.
# Needs: docker, kind, kubectl, helm, openssl. Walkthrough: docs/cluster.md.
set -euo pipefail

CLUSTER="${MLREF_KIND_CLUSTER:-mlref}"
NAMESPACE="${MLREF_NAMESPACE:-mlref}"
KIND_NODE_IMAGE="kindest/node:v1.33.1"
CERT_MANAGER_VERSION="v1.16.2"
KNATIVE_VERSION="knative-v1.17.0"
KSERVE_VERSION="v0.15.2"
KFP_VERSION="2.4.1"
IMAGE="${MLREF_IMAGE:-ghcr.io/mlref/mlref:0.1.0}"
MODE="Serverless"

usage() {
  echo "usage: $0 [--standard]   (--standard: KServe Standard/RawDeployment mode, no Knative)"
}

for arg in "$@"; do
  case "$arg" in
    --standard) MODE="Standard" ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
step() { printf '\n==> %s\n' "$*"; }

for tool in docker kind kubectl helm openssl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: install it first (docs/cluster.md)" >&2; exit 1; }
done

step "1/8 kind cluster ${CLUSTER}"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 120s
fi
kubectl config use-context "kind-${CLUSTER}"

step "2/8 cert-manager ${CERT_MANAGER_VERSION}"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
kubectl -n cert-manager rollout status deploy/cert-manager-webhook --timeout=300s

step "3/8 KServe ${KSERVE_VERSION} (${MODE})"
if [[ "$MODE" == "Serverless" ]]; then
  kubectl apply -f "https://github.com/knative/serving/releases/download/${KNATIVE_VERSION}/serving-crds.yaml"
  kubectl apply -f "https://github.com/knative/serving/releases/download/${KNATIVE_VERSION}/serving-core.yaml"
  kubectl apply -f "https://github.com/knative/net-kourier/releases/download/${KNATIVE_VERSION}/kourier.yaml"
  kubectl patch configmap/config-network -n knative-serving --type merge \
    -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
  kubectl -n knative-serving rollout status deploy/controller --timeout=300s
fi
kubectl apply --server-side --force-conflicts \
  -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve.yaml"
kubectl -n kserve rollout status deploy/kserve-controller-manager --timeout=300s
kubectl apply --server-side --force-conflicts \
  -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve-cluster-resources.yaml"
kubectl patch configmap/inferenceservice-config -n kserve --type merge \
  -p "{\"data\":{\"deploy\":\"{\\\"defaultDeploymentMode\\\":\\\"${MODE}\\\"}\"}}"

step "4/8 Kubeflow Pipelines ${KFP_VERSION} (standalone)"
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"
kubectl -n kubeflow rollout status deploy/ml-pipeline --timeout=600s

step "5/8 image ${IMAGE}"
docker build -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "6/8 namespace and secrets"
kubectl apply -f "$ROOT/manifests/base/namespace.yaml"
if ! kubectl -n "$NAMESPACE" get secret mlref-postgres >/dev/null 2>&1; then
  kubectl -n "$NAMESPACE" create secret generic mlref-postgres \
    --from-literal=POSTGRES_USER=mlflow \
    --from-literal=POSTGRES_PASSWORD="$(openssl rand -hex 24)"
fi
if ! kubectl -n "$NAMESPACE" get secret mlref-object-store >/dev/null 2>&1; then
  kubectl -n "$NAMESPACE" create secret generic mlref-object-store \
    --from-literal=AWS_ACCESS_KEY_ID="mlref-$(openssl rand -hex 4)" \
    --from-literal=AWS_SECRET_ACCESS_KEY="$(openssl rand -hex 24)"
fi

step "7/8 Helm chart"
helm upgrade --install mlref "$ROOT/helm/mlref" --namespace "$NAMESPACE" \
  -f "$ROOT/helm/mlref/values-kind.yaml" \
  --set "serving.deploymentMode=${MODE}" --wait --timeout 10m

step "8/8 training pipeline"
kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 >/dev/null 2>&1 &
FORWARD_PID=$!
trap 'kill "$FORWARD_PID" 2>/dev/null || true' EXIT
sleep 3
MLREF_MODE=cluster MLREF_PIPELINE__HOST=http://127.0.0.1:8080 MLREF_IMAGE="$IMAGE" \
  mlref pipeline submit

URL="$(kubectl -n "$NAMESPACE" get isvc ctr -o jsonpath='{.status.url}' 2>/dev/null || true)"
echo
echo "Endpoint: ${URL:-pending - run: kubectl -n ${NAMESPACE} get isvc ctr -w}"
