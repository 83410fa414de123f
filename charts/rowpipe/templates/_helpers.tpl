{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "rowpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource name prefix. The release name alone when it already contains the chart
name (release "rowpipe" gives "rowpipe-upload", not "rowpipe-rowpipe-upload").
Truncated to 50 characters so that "-consumer-metrics" etc. still fit in 63.
*/}}
{{- define "rowpipe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Names of the component workloads. */}}
{{- define "rowpipe.upload.fullname" -}}
{{- printf "%s-upload" (include "rowpipe.fullname" .) }}
{{- end }}
{{- define "rowpipe.consumer.fullname" -}}
{{- printf "%s-consumer" (include "rowpipe.fullname" .) }}
{{- end }}
{{- define "rowpipe.migration.fullname" -}}
{{- printf "%s-migrate" (include "rowpipe.fullname" .) }}
{{- end }}

{{/* chart label value: name-version */}}
{{- define "rowpipe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels common to every resource.
*/}}
{{- define "rowpipe.labels" -}}
helm.sh/chart: {{ include "rowpipe.chart" . }}
{{ include "rowpipe.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rowpipe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels (immutable on Deployments: never add to them).
*/}}
{{- define "rowpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rowpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Per-component labels. Usage: include "rowpipe.componentLabels" (dict "root" $ "component" "upload")
*/}}
{{- define "rowpipe.componentLabels" -}}
{{ include "rowpipe.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- define "rowpipe.componentSelectorLabels" -}}
{{ include "rowpipe.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Image reference. Usage: include "rowpipe.image" (dict "root" $ "image" .Values.upload.image)
registry/repository:tag, the tag falling back to image.tag, then appVersion.
*/}}
{{- define "rowpipe.image" -}}
{{- $root := .root }}
{{- $tag := .image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- if $root.Values.image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) .image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}


{{- define "rowpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rowpipe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Secret names: the chart-managed Secret unless existingSecret is set.
*/}}
{{- define "rowpipe.database.secretName" -}}
{{- default (printf "%s-database" (include "rowpipe.fullname" .)) .Values.database.existingSecret }}
{{- end }}
{{- define "rowpipe.redis.secretName" -}}
{{- default (printf "%s-redis" (include "rowpipe.fullname" .)) .Values.redis.existingSecret }}
{{- end }}
{{- define "rowpipe.auth.secretName" -}}
{{- default (printf "%s-auth" (include "rowpipe.fullname" .)) .Values.auth.existingSecret }}
{{- end }}
{{/* The migration hook's own Secret (copies of chart-managed credentials). */}}
{{- define "rowpipe.migration.hookSecretName" -}}
{{- printf "%s-migrate" (include "rowpipe.fullname" .) }}
{{- end }}
{{/* The migration hook's ConfigMap (non-secret env). */}}
{{- define "rowpipe.migration.hookConfigName" -}}
{{- printf "%s-migrate" (include "rowpipe.fullname" .) }}
{{- end }}

{{/* ConfigMap names */}}
{{- define "rowpipe.common.configName" -}}
{{- printf "%s-common" (include "rowpipe.fullname" .) }}
{{- end }}
{{- define "rowpipe.upload.configName" -}}
{{- include "rowpipe.upload.fullname" . }}
{{- end }}
{{- define "rowpipe.consumer.configName" -}}
{{- include "rowpipe.consumer.fullname" . }}
{{- end }}

{{/*
Where the migration Job reads DATABASE_URL: (secretName, key).
  1. migration.existingSecret          (pre-existing, not a hook)
  2. migration.databaseUrl             (the hook Secret)
  3. database.existingSecret           (pre-existing, not a hook)
  4. database.url                      (copied into the hook Secret)
*/}}
{{- define "rowpipe.migration.dbSecretName" -}}
{{- if .Values.migration.existingSecret }}
{{- .Values.migration.existingSecret }}
{{- else if .Values.migration.databaseUrl }}
{{- include "rowpipe.migration.hookSecretName" . }}
{{- else if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- include "rowpipe.migration.hookSecretName" . }}
{{- end }}
{{- end }}
{{- define "rowpipe.migration.dbSecretKey" -}}
{{- if .Values.migration.existingSecret }}
{{- .Values.migration.urlKey }}
{{- else if .Values.migration.databaseUrl }}
{{- "database-url" }}
{{- else if .Values.database.existingSecret }}
{{- .Values.database.urlKey }}
{{- else }}
{{- "database-url" }}
{{- end }}
{{- end }}
{{/* The hook Secret is needed when some credential of the migration is chart-managed. */}}
{{- define "rowpipe.migration.needsHookSecret" -}}
{{- if or (eq (include "rowpipe.migration.dbSecretName" .) (include "rowpipe.migration.hookSecretName" .)) (not .Values.redis.existingSecret) }}true{{- end }}
{{- end }}

{{/*
Guard rails evaluated by every workload template.
*/}}
{{- define "rowpipe.validate" -}}
{{- if and (not .Values.database.existingSecret) (hasPrefix "sqlite:" .Values.database.url) }}
{{- fail "database.url: sqlite:// cannot be used in Kubernetes (read-only root filesystem, several replicas); use postgres:// or mysql://" }}
{{- end }}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) }}
{{- fail "set database.url or database.existingSecret" }}
{{- end }}
{{- if and (not .Values.redis.existingSecret) (not .Values.redis.url) }}
{{- fail "set redis.url or redis.existingSecret" }}
{{- end }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- fail "keda.minReplicaCount must not exceed keda.maxReplicaCount" }}
{{- end }}
{{- end }}

{{/*
Pod volumes and mounts shared by all containers: a writable /tmp.
*/}}
{{- define "rowpipe.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- define "rowpipe.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
topologySpreadConstraints for a component.
Usage: include "rowpipe.topologySpread" (dict "root" $ "component" "consumer")
*/}}
{{- define "rowpipe.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
{{- range .root.Values.topologySpread.topologyKeys }}
  - maxSkew: {{ $.root.Values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $.root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "rowpipe.componentSelectorLabels" (dict "root" $.root "component" $.component) | nindent 8 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Probe timing. Usage: include "rowpipe.probeTiming" .Values.upload.livenessProbe */}}
{{- define "rowpipe.probeTiming" -}}
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end }}

{{/* Environment variables read from Secrets by both programs. */}}
{{- define "rowpipe.secretEnv" -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "rowpipe.redis.secretName" . }}
      key: {{ .Values.redis.urlKey }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "rowpipe.database.secretName" . }}
      key: {{ .Values.database.urlKey }}
{{- end }}

{{/* Non-secret configuration shared by every program (ConfigMap data). */}}
{{- define "rowpipe.commonEnv" -}}
ROWPIPE_STREAM: {{ .Values.stream.name | quote }}
ROWPIPE_GROUP: {{ .Values.stream.group | quote }}
RUST_LOG: {{ .Values.logging.level | quote }}
ROWPIPE_LOG_FORMAT: {{ .Values.logging.format | quote }}
{{- if .Values.otel.endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .Values.otel.endpoint | quote }}
OTEL_EXPORTER_OTLP_PROTOCOL: {{ .Values.otel.protocol | quote }}
{{- end }}
OTEL_TRACES_SAMPLER: {{ .Values.otel.sampler | quote }}
OTEL_TRACES_SAMPLER_ARG: {{ .Values.otel.samplerArg | quote }}
{{- end }}

{{/* NetworkPolicy egress rules. Usage: include "rowpipe.egressRules" .Values.networkPolicy */}}
{{- define "rowpipe.egressRules" -}}
# DNS
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# Redis, the database and the OTLP collector
- ports:
    - port: {{ .redisPort }}
      protocol: TCP
    - port: {{ .databasePort }}
      protocol: TCP
    {{- range .otlpPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .egressTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
