{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "rowpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource name prefix. The release name alone when it already contains the chart
name (release "rowpipe" gives "rowpipe-upload", not "rowpipe-rowpipe-upload").
Truncated to 46 characters so that the longest suffix the chart adds
("-consumer-metrics", 17) still fits the 63 characters of a Service name, a
label value (job-name, scaledobject.keda.sh/name) and a DNS label, for any
release name Helm accepts (53 characters). scripts/chart_checks.py renders
every resource with a 53-character release name and checks each limit.
*/}}
{{- define "rowpipe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
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
registry/repository:tag, or registry/repository@digest when the component sets a
digest. The registry is global.imageRegistry (the umbrella-chart convention),
else image.registry; the tag falls back to image.tag, then appVersion.
*/}}
{{- define "rowpipe.image" -}}
{{- $root := .root }}
{{- $registry := (($root.Values.global).imageRegistry) | default $root.Values.image.registry }}
{{- $repo := .image.repository }}
{{- if $registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" $registry) .image.repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion) }}
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
{{- if and .Values.keda.enabled (not .Values.keda.assumeInstalled) (not (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject")) }}
{{- fail "keda.enabled=true but this cluster has no KEDA (keda.sh/v1alpha1 ScaledObject is not served): install KEDA >= 2.12 first, or set keda.enabled=false (fixed consumer.replicaCount). With helm template, pass --api-versions keda.sh/v1alpha1/ScaledObject (or keda.assumeInstalled=true)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) }}
{{- fail "metrics.serviceMonitor.enabled=true but monitoring.coreos.com/v1 ServiceMonitor is not served (Prometheus Operator CRDs missing); with helm template, pass --api-versions monitoring.coreos.com/v1/ServiceMonitor" }}
{{- end }}
{{- if and .Values.metrics.prometheusRule.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule")) }}
{{- fail "metrics.prometheusRule.enabled=true but monitoring.coreos.com/v1 PrometheusRule is not served (Prometheus Operator CRDs missing); with helm template, pass --api-versions monitoring.coreos.com/v1/PrometheusRule" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.database.existingSecret) }}
{{- $dbPort := include "rowpipe.portOf" .Values.database.url }}
{{- if and $dbPort (ne $dbPort (toString (int .Values.networkPolicy.databasePort))) }}
{{- fail (printf "networkPolicy.databasePort is %d but database.url uses port %s: the NetworkPolicy would block the database" (int .Values.networkPolicy.databasePort) $dbPort) }}
{{- end }}
{{- end }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- fail "keda.minReplicaCount must not exceed keda.maxReplicaCount" }}
{{- end }}
{{- if and (gt (int .Values.stream.shards) 1) (contains "{" .Values.stream.name) }}
{{- fail (printf "stream.name %q contains \"{\": with stream.shards=%d the shard keys are <stream.name>:{<tag>}, and Redis Cluster hashes a key by its first {...}, so every shard would land in the slot of the name's own hash tag; drop the braces" .Values.stream.name (int .Values.stream.shards)) }}
{{- end }}
{{- if .Values.redis.cluster }}
{{- if ne (int .Values.redis.databaseIndex) 0 }}
{{- fail (printf "redis.databaseIndex is %d but a Redis Cluster has only database 0 (redis.cluster=true)" (int .Values.redis.databaseIndex)) }}
{{- end }}
{{- else }}
{{- if contains "," .Values.redis.address }}
{{- fail "redis.address names several nodes (comma-separated) but redis.cluster is false: set redis.cluster=true for a Redis Cluster, or give the one host:port" }}
{{- end }}
{{- if and (not .Values.redis.existingSecret) (contains "," .Values.redis.url) }}
{{- fail "redis.url names several nodes (comma-separated) but redis.cluster is false: set redis.cluster=true for a Redis Cluster" }}
{{- end }}
{{- end }}
{{- $_ := include "rowpipe.consumer.servedShards" . }}
{{- end }}

{{/*
The stream's shard keys, in shard order, as a JSON list (fromJsonArray):
[stream.name] with one shard, else <stream.name>:{<tag>} for shard i of N with
the tags of files/shard-tags.yaml, which `rowpipe shards --table` prints from
the programs' own code (the chart cannot compute CRC16), so the KEDA triggers
watch exactly the keys the programs use. scripts/chart_checks.py recomputes
them from the table.
*/}}
{{- define "rowpipe.streamKeys" -}}
{{- $n := int .Values.stream.shards }}
{{- if le $n 1 }}
{{- list .Values.stream.name | toJson }}
{{- else }}
{{- $table := .Files.Get "files/shard-tags.yaml" | fromYaml }}
{{- $tags := index $table (toString $n) }}
{{- if ne (len $tags) $n }}
{{- fail (printf "files/shard-tags.yaml has no %d tags for stream.shards=%d (regenerate it with `rowpipe shards --table`)" $n $n) }}
{{- end }}
{{- $keys := list }}
{{- range $tags }}
{{- $keys = append $keys (printf "%s:{%s}" $.Values.stream.name .) }}
{{- end }}
{{- $keys | toJson }}
{{- end }}
{{- end }}

{{/*
The shard indexes the consumer Deployment serves, in order, as a JSON list:
consumer.shards ("0,3-5"; empty: all of stream.shards), parsed as the consumer
parses ROWPIPE_SHARDS; a shard the stream does not have fails the render.
*/}}
{{- define "rowpipe.consumer.servedShards" -}}
{{- $n := int .Values.stream.shards }}
{{- $spec := trim .Values.consumer.shards }}
{{- $wanted := dict }}
{{- if $spec }}
{{- range $part := splitList "," $spec }}
{{- $ends := splitList "-" (trim $part) }}
{{- $from := int (trim (first $ends)) }}
{{- $to := int (trim (last $ends)) }}
{{- if gt $from $to }}
{{- fail (printf "consumer.shards %q: the range %q is empty" $spec $part) }}
{{- end }}
{{- if ge $to $n }}
{{- fail (printf "consumer.shards %q names shard %d, but stream.shards=%d has shards 0-%d" $spec $to $n (sub $n 1)) }}
{{- end }}
{{- range $i := untilStep $from (add $to 1 | int) 1 }}
{{- $_ := set $wanted (toString $i) true }}
{{- end }}
{{- end }}
{{- end }}
{{- $served := list }}
{{- range $i := until $n }}
{{- if or (not $spec) (hasKey $wanted (toString $i)) }}
{{- $served = append $served $i }}
{{- end }}
{{- end }}
{{- $served | toJson }}
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

{{/* Non-secret configuration shared by every program (ConfigMap data). Every program,
the migration included, must see the same shard count and Redis topology. */}}
{{- define "rowpipe.commonEnv" -}}
ROWPIPE_STREAM: {{ .Values.stream.name | quote }}
ROWPIPE_GROUP: {{ .Values.stream.group | quote }}
ROWPIPE_STREAM_SHARDS: {{ .Values.stream.shards | int64 | quote }}
ROWPIPE_REDIS_CLUSTER: {{ .Values.redis.cluster | quote }}
RUST_LOG: {{ .Values.logging.level | quote }}
ROWPIPE_LOG_FORMAT: {{ .Values.logging.format | quote }}
{{- if .Values.otel.endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .Values.otel.endpoint | quote }}
OTEL_EXPORTER_OTLP_PROTOCOL: {{ .Values.otel.protocol | quote }}
{{- end }}
OTEL_TRACES_SAMPLER: {{ .Values.otel.sampler | quote }}
OTEL_TRACES_SAMPLER_ARG: {{ .Values.otel.samplerArg | quote }}
{{- end }}

{{/*
Port of a host:port address or of a URL's authority ("" when it has none).
Usage: include "rowpipe.portOf" "redis-master.data.svc:6380"
*/}}
{{- define "rowpipe.portOf" -}}
{{- $rest := regexReplaceAll "^[a-z][a-z0-9+.-]*://" . "" }}
{{- $authority := regexReplaceAll "[/?#].*$" $rest "" }}
{{- $hostport := regexReplaceAll "^.*@" $authority "" }}
{{- if regexMatch ":[0-9]+$" $hostport }}
{{- regexFind "[0-9]+$" $hostport }}
{{- end }}
{{- end }}

{{/*
TCP ports of Redis, as a JSON list: the distinct ports of redis.address (KEDA
reads the same; with redis.cluster, one host:port per seed node), else 6379.
A cluster's clients reach every node on its client port (MOVED redirects), so
the list must hold each client port in use; the cluster bus is node to node.
*/}}
{{- define "rowpipe.redisPorts" -}}
{{- $ports := list }}
{{- range (splitList "," .Values.redis.address) }}
{{- $p := include "rowpipe.portOf" (trim .) }}
{{- if $p }}
{{- $ports = append $ports (int $p) }}
{{- end }}
{{- end }}
{{- $ports | default (list 6379) | uniq | toJson }}
{{- end }}

{{/* TCP port of the OTLP collector: the port of otel.endpoint, else the protocol's default. */}}
{{- define "rowpipe.otlpPort" -}}
{{- include "rowpipe.portOf" .Values.otel.endpoint | default (ternary "4317" "4318" (eq .Values.otel.protocol "grpc")) }}
{{- end }}

{{/*
NetworkPolicy egress rules: DNS, then one rule per dependency, each with its own
peers (redisTo / databaseTo / otlpTo, falling back to egressTo), so a collector in
another namespace is not held to the database's peers. OTLP only when tracing is on.
Usage: include "rowpipe.egressRules" .
*/}}
{{- define "rowpipe.egressRules" -}}
{{- $np := .Values.networkPolicy -}}
# DNS
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# Redis{{ if .Values.redis.cluster }} (every cluster node's client port){{ end }}
- ports:
    {{- range (include "rowpipe.redisPorts" . | fromJsonArray) }}
    - port: {{ int . }}
      protocol: TCP
    {{- end }}
  {{- with ($np.redisTo | default $np.egressTo) }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# the database
- ports:
    - port: {{ $np.databasePort }}
      protocol: TCP
  {{- with ($np.databaseTo | default $np.egressTo) }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .Values.otel.endpoint }}
# the OTLP collector
- ports:
    - port: {{ include "rowpipe.otlpPort" . }}
      protocol: TCP
  {{- with ($np.otlpTo | default $np.egressTo) }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
Checksum of the Secrets a component reads, so its pods restart when (and only
when) one of them changes: the consumer does not read the API tokens.
Usage: include "rowpipe.secretChecksum" (dict "root" $ "tokens" true)
*/}}
{{- define "rowpipe.secretChecksum" -}}
{{- $root := .root }}
{{- $parts := list $root.Values.database.existingSecret $root.Values.database.url $root.Values.redis.existingSecret $root.Values.redis.url $root.Values.redis.password $root.Values.redis.username }}
{{- if .tokens }}
{{- $parts = append $parts (include "rowpipe.auth.tokensData" $root) }}
{{- end }}
{{- join "\n" $parts | sha256sum }}
{{- end }}

{{/*
The tokens file of the chart-managed auth Secret (base64), or "" when the chart
manages none. Never random at render time: `helm template` (Argo CD, Tilt) would
draw a new token on every render and rotate it on every sync. A generated token
(auth.generateToken) is drawn once by a real install and read back with lookup.
*/}}
{{- define "rowpipe.auth.tokensData" -}}
{{- if and (not .Values.auth.disabled) (not .Values.auth.existingSecret) }}
{{- if .Values.auth.tokens }}
{{- printf "%s\n" (join "\n" .Values.auth.tokens) | b64enc }}
{{- else if .Values.auth.generateToken }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "rowpipe.auth.secretName" .) }}
{{- if and $existing $existing.data (hasKey $existing.data .Values.auth.tokensKey) }}
{{- index $existing.data .Values.auth.tokensKey }}
{{- else }}
{{- /* lookup finds nothing on a first install and always under helm template: the checksum then changes; see values.yaml auth.generateToken */}}
{{- printf "%s\n" (randAlphaNum 40) | b64enc }}
{{- end }}
{{- else }}
{{- fail "auth: set auth.tokens, auth.existingSecret, or auth.disabled=true (development only); auth.generateToken=true draws one at the first `helm install` (not for Argo CD/Tilt/helm template, which would draw a new one on every render)" }}
{{- end }}
{{- end }}
{{- end }}
