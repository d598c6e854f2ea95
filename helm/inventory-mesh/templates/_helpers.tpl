{{/*
Names and labels shared by every manifest of the chart.
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "inventory-mesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"<release>-<chart>" (or fullnameOverride), cut to 63 characters, the DNS label limit. A release
named like the chart is not repeated.
*/}}
{{- define "inventory-mesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of one component's resources, "<fullname>-<component>", also a DNS label. Peer addresses
are rendered from it, so a Service and the addresses that point at it cannot disagree.
Context: dict "root" $ "component" "<svc>".
*/}}
{{- define "inventory-mesh.componentName" -}}
{{- printf "%s-%s" (include "inventory-mesh.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "inventory-mesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: name, instance and component only, because a Deployment's selector is immutable.
Context: dict "root" $ "component" "<svc>".
*/}}
{{- define "inventory-mesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inventory-mesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The standard app.kubernetes.io set plus component. Context: dict "root" $ "component" "<svc>".
*/}}
{{- define "inventory-mesh.labels" -}}
helm.sh/chart: {{ include "inventory-mesh.chart" .root }}
{{ include "inventory-mesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: {{ include "inventory-mesh.name" .root }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* image reference; the tag defaults to the chart's appVersion. */}}
{{- define "inventory-mesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Name of the Secret holding DATABASE_URL and REDIS_URL. */}}
{{- define "inventory-mesh.secretName" -}}
{{- default (printf "%s-connections" (include "inventory-mesh.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Container securityContext of every container: non-root, read-only root, no capabilities.
Not configurable on purpose.
*/}}
{{- define "inventory-mesh.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/*
Environment common to the services and the migrate job: connection URLs from the Secret,
shutdown timing, telemetry and the peers' addresses. Context: $.
*/}}
{{- define "inventory-mesh.commonEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "inventory-mesh.secretName" . }}
      key: {{ .Values.secrets.databaseUrlKey }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "inventory-mesh.secretName" . }}
      key: {{ .Values.secrets.redisUrlKey }}
{{- range $peer := list "availability" "reservation" "replenishment" }}
- name: MESH__PEERS__{{ upper $peer }}
  value: {{ printf "http://%s:%d" (include "inventory-mesh.componentName" (dict "root" $ "component" $peer)) (int (index $.Values $peer).port) | quote }}
{{- end }}
- name: MESH__SHUTDOWN__DRAIN_DELAY
  value: {{ printf "%ds" (int .Values.shutdown.drainDelaySeconds) | quote }}
- name: MESH__SHUTDOWN__GRACE
  value: {{ printf "%ds" (int .Values.shutdown.graceSeconds) | quote }}
- name: MESH__TELEMETRY__JSON_LOGS
  value: {{ .Values.telemetry.jsonLogs | quote }}
{{- with .Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Extra NAME: value pairs as env entries, sorted by name. The schema keeps them from repeating a
name the chart sets. Context: the map.
*/}}
{{- define "inventory-mesh.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
