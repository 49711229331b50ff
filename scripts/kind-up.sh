#!/usr/bin/env bash
# A local mlref cluster on kind: cert-manager, KServe v0.21 (Knative mode with Knative Serving
# and Kourier, or Standard mode with --standard: Gateway API, Envoy Gateway and KServe's
# Gateway, which splits a canary's traffic), standalone Kubeflow Pipelines, the mlref
# image and Helm chart, then one training run. Every step is idempotent: re-running converges
# instead of failing. CRDs are installed and Established before anything that uses them.
# Needs: docker, kind, kubectl, helm (3.8+ or 4, for OCI charts), and mlref installed from
# this checkout (pip install -e .): it prints the Secrets, uploads raw logs and submits the run.
# Walkthrough: docs/cluster.md.
set -euo pipefail

CLUSTER="${MLREF_KIND_CLUSTER:-mlref}"
NAMESPACE="${MLREF_NAMESPACE:-mlref}"
# Where standalone Kubeflow Pipelines runs, and with it the pipeline's pods.
PIPELINES_NAMESPACE="kubeflow"
KIND_NODE_IMAGE="kindest/node:v1.33.1"
# The versions KServe v0.21's own installer uses (hack/setup/quick-install).
CERT_MANAGER_VERSION="v1.17.0"
KNATIVE_VERSION="knative-v1.21.1"
KOURIER_VERSION="knative-v1.21.0"
# One KServe everywhere: the Python SDK (constraints.txt kserve==0.21.0), the CRDs the
# manifests are verified against, and the controller installed here.
KSERVE_VERSION="v0.21.0"
KSERVE_CHARTS="oci://ghcr.io/kserve/charts"
# One Kubeflow Pipelines: the backend (API server, driver, launcher) of the SDK's release
# (constraints.txt kfp==2.17.0), which compiles the pipeline and whose launcher the tests
# emulate. Its platform-agnostic manifests bring SeaweedFS as the pipelines' object store.
KFP_VERSION="2.17.0"
# Kubeflow Trainer (with its JobSet), only with --trainer or MLREF_KIND_TRAINER=1: the release
# whose TrainJob API the training step builds (mlref/training/trainjob.py TRAINER_VERSION) and
# whose CRD the tests validate against; its torch-distributed runtime runs multi-node training.
TRAINER_VERSION="v2.3.0"
TRAINER="${MLREF_KIND_TRAINER:-0}"
# Standard mode: KServe splits a canary's traffic only on the predictor's Gateway API
# HTTPRoute. Versions of KServe's installer (kserve-deps.env: GATEWAY_API_VERSION,
# ENVOY_GATEWAY_VERSION); the transformer calls the Gateway's Service with the route's host
# <isvc>-predictor-<namespace>.<domain> (chart values serving.gateway.*).
GATEWAY_API_VERSION="v1.5.1"
ENVOY_GATEWAY_VERSION="v1.8.1"
ENVOY_GATEWAY_CHARTS="oci://docker.io/envoyproxy"
KSERVE_GATEWAY="kserve/kserve-ingress-gateway"
GATEWAY_SERVICE="kserve-ingress-gateway.envoy-gateway-system"
INGRESS_DOMAIN="example.com"
# kind.local: Knative does not resolve this registry's tags to digests, which would fail for
# an image that exists only on the kind node (config-deployment's default skip list).
IMAGE_TAG="${MLREF_IMAGE_TAG:-0.1.0}"
IMAGE="kind.local/mlref:${IMAGE_TAG}"
MODE="Knative"

usage() {
  echo "usage: $0 [--standard] [--trainer]   (--standard: KServe Standard mode, no Knative;"
  echo "  --trainer: Kubeflow Trainer too, for train.distributed=torchrun TrainJobs)"
}

for arg in "$@"; do
  case "$arg" in
    --standard) MODE="Standard" ;;
    --trainer) TRAINER=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
step() { printf '\n==> %s\n' "$*"; }
established() { kubectl wait --for condition=established --timeout=120s "$@"; }

for tool in docker kind kubectl helm base64 mlref; do
  command -v "$tool" >/dev/null || { echo "missing $tool: install it first (docs/cluster.md)" >&2; exit 1; }
done

step "1/9 kind cluster ${CLUSTER}"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 120s
fi
kubectl config use-context "kind-${CLUSTER}"

step "2/9 cert-manager ${CERT_MANAGER_VERSION}"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
kubectl -n cert-manager rollout status deploy/cert-manager-webhook --timeout=300s

if [[ "$MODE" == "Knative" ]]; then
  step "3/9 Knative Serving ${KNATIVE_VERSION} + Kourier ${KOURIER_VERSION}"
  kubectl apply -f "https://github.com/knative/serving/releases/download/${KNATIVE_VERSION}/serving-crds.yaml"
  established crd -l knative.dev/crd-install=true
  kubectl apply -f "https://github.com/knative/serving/releases/download/${KNATIVE_VERSION}/serving-core.yaml"
  # config-features (the pod securityContext the serving pods set) and Kourier as ingress:
  # server-side apply merges these keys into Knative's own ConfigMaps.
  kubectl apply --server-side --force-conflicts -f "$ROOT/manifests/cluster/knative-serving.yaml"
  kubectl apply -f "https://github.com/knative/net-kourier/releases/download/${KOURIER_VERSION}/kourier.yaml"
  for deployment in controller webhook; do
    kubectl -n knative-serving rollout status "deploy/${deployment}" --timeout=300s
  done
  kubectl -n kourier-system rollout status deploy/3scale-kourier-gateway --timeout=300s
else
  step "3/9 Gateway API ${GATEWAY_API_VERSION} + Envoy Gateway ${ENVOY_GATEWAY_VERSION} + ${KSERVE_GATEWAY}"
  kubectl apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml"
  established crd/gatewayclasses.gateway.networking.k8s.io crd/gateways.gateway.networking.k8s.io \
    crd/httproutes.gateway.networking.k8s.io
  # Envoy Gateway's own CRDs only: the Gateway API ones are those just applied.
  helm template eg-crds "${ENVOY_GATEWAY_CHARTS}/gateway-crds-helm" --version "$ENVOY_GATEWAY_VERSION" \
    --set crds.envoyGateway.enabled=true | kubectl apply --server-side -f -
  established crd/envoyproxies.gateway.envoyproxy.io
  helm upgrade --install eg "${ENVOY_GATEWAY_CHARTS}/gateway-helm" --version "$ENVOY_GATEWAY_VERSION" \
    --namespace envoy-gateway-system --create-namespace --skip-crds --wait
  kubectl -n envoy-gateway-system rollout status deploy/envoy-gateway --timeout=300s
  kubectl create namespace kserve --dry-run=client -o yaml | kubectl apply -f -
  # GatewayClass envoy, the Gateway, and an EnvoyProxy naming its Service ${GATEWAY_SERVICE}.
  kubectl apply -f "$ROOT/manifests/cluster/kserve-gateway.yaml"
  kubectl -n kserve wait --for=condition=Programmed gateway/kserve-ingress-gateway --timeout=300s
fi

step "4/9 KServe ${KSERVE_VERSION} (${MODE})"
helm upgrade --install kserve-crd "${KSERVE_CHARTS}/kserve-crd" --version "$KSERVE_VERSION" \
  --namespace kserve --create-namespace --wait
established crd/inferenceservices.serving.kserve.io crd/servingruntimes.serving.kserve.io
# Kourier is not Istio: no VirtualService (ingress.disableIstioVirtualHost). Standard mode:
# HTTPRoutes on the Gateway (inferenceservice-config ingress.enableGatewayApi), ingress
# creation left on (without it KServe makes no HTTPRoute, and so no canary split).
KSERVE_SETTINGS=(--set "kserve.controller.deploymentMode=${MODE}")
if [[ "$MODE" == "Knative" ]]; then
  KSERVE_SETTINGS+=(--set kserve.controller.gateway.disableIstioVirtualHost=true)
else
  KSERVE_SETTINGS+=(
    --set kserve.controller.gateway.ingressGateway.enableGatewayApi=true
    --set "kserve.controller.gateway.ingressGateway.kserveGateway=${KSERVE_GATEWAY}"
    --set "kserve.controller.gateway.domain=${INGRESS_DOMAIN}"
  )
fi
helm upgrade --install kserve "${KSERVE_CHARTS}/kserve-resources" --version "$KSERVE_VERSION" \
  --namespace kserve --wait "${KSERVE_SETTINGS[@]}"
kubectl -n kserve rollout status deploy/kserve-controller-manager --timeout=300s

step "5/9 Kubeflow Pipelines ${KFP_VERSION} (standalone)"
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
established crd/applications.app.k8s.io
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"
kubectl -n kubeflow rollout status deploy/ml-pipeline --timeout=600s

CHART_EXTRA=()
if [[ "$TRAINER" == 1 ]]; then
  step "5/9 Kubeflow Trainer ${TRAINER_VERSION} (--trainer)"
  kubectl apply --server-side -k "github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=${TRAINER_VERSION}"
  established crd/trainjobs.trainer.kubeflow.org crd/clustertrainingruntimes.trainer.kubeflow.org
  kubectl -n kubeflow-system rollout status deploy/jobset-controller-manager --timeout=300s
  kubectl -n kubeflow-system rollout status deploy/kubeflow-trainer-controller-manager --timeout=300s
  kubectl apply --server-side -k "github.com/kubeflow/trainer.git/manifests/overlays/runtimes?ref=${TRAINER_VERSION}"
  # The training step's service account may create and await TrainJobs (chart trainer.*).
  CHART_EXTRA+=(--set trainer.enabled=true)
fi

step "6/9 image ${IMAGE}"
docker build --build-arg TORCH_INDEX=cpu -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "7/9 namespace and secrets"
# The namespace, MLflow's PostgreSQL credentials, and one object-store identity per workload
# (its keys in a Secret where its pods run: the pipeline's in Kubeflow's namespace too) with
# SeaweedFS's identities config granting each only its prefixes (mlref/k8s/install.py).
# Values already in the cluster are kept: no secret value is in git or on the command line.
kubectl -n "$NAMESPACE" get secret mlref-postgres mlref-object-store mlref-store-serving \
  mlref-store-drift mlref-store-mlflow mlref-store-operator --ignore-not-found -o yaml \
  | mlref manifests kind-objects --existing - --namespace "$NAMESPACE" \
    --pipelines-namespace "$PIPELINES_NAMESPACE" \
  | kubectl apply -f -

step "8/9 Helm chart"
# No --wait: Helm 4 waits on every release object by kstatus (pkg/kube/statuswait.go), the
# InferenceService included, which stays Ready=False until the first model exists (step 9);
# no annotation exempts one. Helm 3's --wait skips custom resources. So in both, wait on
# what can be ready: the release's own Deployments and StatefulSets.
helm upgrade --install mlref "$ROOT/helm/mlref" --namespace "$NAMESPACE" \
  -f "$ROOT/helm/mlref/values-kind.yaml" \
  --set "image.tag=${IMAGE_TAG}" \
  --set "serving.deploymentMode=${MODE}" \
  --set "serving.gateway.service=${GATEWAY_SERVICE}" \
  --set "serving.gateway.domain=${INGRESS_DOMAIN}" --timeout 10m "${CHART_EXTRA[@]}"
helm get manifest mlref --namespace "$NAMESPACE" \
  | kubectl -n "$NAMESPACE" get -f - -o name | grep -E '^(deployment|statefulset)\.apps/' \
  | while read -r workload; do
    kubectl -n "$NAMESPACE" rollout status "$workload" --timeout=600s || exit 1
  done

step "9/9 raw click logs, training pipeline, served champion"
# The pipeline reads the raw logs from the object store (settings storage.raw_uri: by
# default <storage.root>/data/raw). Generate them here and upload them through a
# port-forward to SeaweedFS as the operator identity (the only one that may make the bucket
# and write the raw logs), then submit the run with that source.
kubectl -n "$PIPELINES_NAMESPACE" port-forward svc/ml-pipeline-ui 8080:80 >/dev/null 2>&1 &
FORWARDS=("$!")
kubectl -n "$NAMESPACE" port-forward svc/seaweedfs 8333:8333 >/dev/null 2>&1 &
FORWARDS+=("$!")
trap 'kill "${FORWARDS[@]}" 2>/dev/null || true' EXIT
sleep 3
store_key() {
  kubectl -n "$NAMESPACE" get secret mlref-store-operator -o "jsonpath={.data.$1}" | base64 -d
}
AWS_ACCESS_KEY_ID="$(store_key AWS_ACCESS_KEY_ID)"
AWS_SECRET_ACCESS_KEY="$(store_key AWS_SECRET_ACCESS_KEY)"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export AWS_ENDPOINT_URL=http://127.0.0.1:8333 AWS_DEFAULT_REGION=us-east-1
# This machine's settings for the two commands: the chart's store (values objectStore.bucket).
export MLREF_MODE=cluster MLREF_STORAGE__ROOT="s3://mlref" MLREF_IMAGE="$IMAGE" \
  MLREF_PIPELINE__HOST=http://127.0.0.1:8080 MLREF_TRAIN__USE_GPU_IN_CLUSTER=false
RAW_URI="${MLREF_STORAGE__ROOT}/data/raw"
mlref data generate --upload
mlref pipeline submit --source "$RAW_URI"
echo "Waiting for the run to register a champion and KServe to serve it (kubectl -n ${PIPELINES_NAMESPACE} get pods -w)"
kubectl -n "$NAMESPACE" wait --for=condition=Ready isvc/ctr --timeout=60m

URL="$(kubectl -n "$NAMESPACE" get isvc ctr -o jsonpath='{.status.url}' 2>/dev/null || true)"
echo
echo "Endpoint: ${URL:-pending - run: kubectl -n ${NAMESPACE} get isvc ctr -w}"
