{{/* Labels on every object's metadata. */}}
{{- define "mlref.labels" -}}
app.kubernetes.io/part-of: mlref
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Pod labels and selectors: one component of mlref. Call with (list $ "component"). */}}
{{- define "mlref.selector" -}}
app.kubernetes.io/name: mlref
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "mlref.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}

{{/* Object annotations that justify checkov skips: pinned tags, and local pulls. */}}
{{- define "mlref.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_43=images are pinned by exact version tag; digests are set per environment by the image policy
{{- if ne .Values.image.pullPolicy "Always" }}
checkov.io/skip9: CKV_K8S_15=imagePullPolicy {{ .Values.image.pullPolicy }} is set for clusters that run locally loaded images
{{- end }}
{{- end }}

{{- define "mlref.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{- define "mlref.securityContext" -}}
runAsNonRoot: true
runAsUser: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities: {drop: ["ALL"]}
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{- define "mlref.objectStoreEndpoint" -}}
{{- if .Values.seaweedfs.enabled -}}
{{ printf "http://seaweedfs.%s.svc:8333" .Release.Namespace }}
{{- else -}}
{{ .Values.objectStore.endpoint }}
{{- end }}
{{- end }}

{{/* One workload's object-store identity. Call with (list $ "serving"|"drift"|"mlflow"|"pipeline"). */}}
{{- define "mlref.objectStoreSecret" -}}
{{- $root := index . 0 }}
{{- if eq (index . 1) "pipeline" -}}
{{ $root.Values.objectStore.secretName }}
{{- else -}}
{{ index $root.Values.objectStore.secrets (index . 1) }}
{{- end }}
{{- end }}

{{- define "mlref.objectStoreCredentials" -}}
{{- $secret := include "mlref.objectStoreSecret" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: AWS_SECRET_ACCESS_KEY}
{{- end }}

{{/* The predictor of one model: the ServingRuntime carries the container. A Standard-mode
canary ("fixedReplicas") runs fixed replicas: KServe's webhook refuses maxReplicas and
autoscaling on spec.canary (inference_service_validation.go, validateCanarySpecs). */}}
{{- define "mlref.predictor" -}}
{{- if hasKey . "name" }}
name: {{ .name }}
{{- end }}
serviceAccountName: mlref-serving
minReplicas: {{ .root.Values.serving.minReplicas }}
{{- if not (hasKey . "fixedReplicas") }}
maxReplicas: {{ .root.Values.serving.maxReplicas }}
{{- end }}
securityContext:
  {{- include "mlref.podSecurityContext" .root | nindent 2 }}
{{- if hasKey . "percent" }}
canaryTrafficPercent: {{ .percent }}
{{- end }}
model:
  {{- if hasKey . "name" }}
  {{- /* Required of a canary's model; it names the merged container, which KServe's pod
  mutator finds only as kserve-container. */}}
  name: kserve-container
  {{- end }}
  modelFormat: {name: mlref-onnx}
  runtime: mlref-onnx
  storageUri: {{ .uri }}
  {{- if hasKey . "variant" }}
  env:
    - {name: MLREF_SERVING__VARIANT, value: {{ .variant }}}
  {{- end }}
{{- end }}

{{/* Inference log through a logger sink: "true" when the chart deploys `mlref serve log-sink`
(sink http without a sinkUrl of its own), else empty. */}}
{{- define "mlref.logSinkDeployed" -}}
{{- if and (eq .Values.inferenceLog.sink "http") (not .Values.inferenceLog.sinkUrl) }}true{{ end }}
{{- end }}

{{- define "mlref.logSinkUrl" -}}
{{- default (printf "http://log-sink.%s.svc/" .Release.Namespace) .Values.inferenceLog.sinkUrl }}
{{- end }}

{{/* Settings of the data steps on Spark's Kubernetes scheduler (values spark.*). */}}
{{- define "mlref.sparkSettings" -}}
MLREF_ENGINE__DATA: spark
MLREF_ENGINE__SPARK_EXECUTORS: {{ .Values.spark.executors | quote }}
MLREF_ENGINE__SPARK_EXECUTOR_CORES: {{ .Values.spark.executorCores | quote }}
MLREF_ENGINE__SPARK_EXECUTOR_MEMORY: {{ .Values.spark.executorMemory | quote }}
MLREF_ENGINE__SPARK_DRIVER_PORT: {{ .Values.spark.driverPort | quote }}
MLREF_ENGINE__SPARK_BLOCK_MANAGER_PORT: {{ .Values.spark.blockManagerPort | quote }}
{{- end }}

{{/* The shadow InferenceService's predictor, as the transformer calls it: KServe names its
Service <isvc>-predictor (Knative: the Knative Service, reached cluster-local). */}}
{{/* The host of the predictor's HTTPRoute in Standard mode (KServe's default domain
template over <isvc>-predictor): the transformer sends it to the Gateway. */}}
{{- define "mlref.predictorRouteHost" -}}
{{- printf "%s-predictor-%s.%s" .Values.serving.name .Release.Namespace .Values.serving.gateway.domain }}
{{- end }}

{{- define "mlref.shadowUrl" -}}
{{- printf "http://%s-shadow-predictor.%s.svc.cluster.local" .Values.serving.name .Release.Namespace }}
{{- end }}
