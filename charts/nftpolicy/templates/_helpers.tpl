{{/* Chart name, overridable with nameOverride. */}}
{{- define "nftpolicy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: the release name when it already contains the chart name, otherwise
"<release>-<chart>". Cluster-scoped objects (ClusterRoles, bindings) carry it, so two releases
do not collide.
*/}}
{{- define "nftpolicy.fullname" -}}
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

{{- define "nftpolicy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object. */}}
{{- define "nftpolicy.labels" -}}
helm.sh/chart: {{ include "nftpolicy.chart" . }}
{{ include "nftpolicy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nftpolicy
{{- end }}

{{/* Selects every pod of the release, operator and agents (the metrics Service uses it). */}}
{{- define "nftpolicy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nftpolicy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nftpolicy.operator.name" -}}
{{- printf "%s-operator" (include "nftpolicy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nftpolicy.agent.name" -}}
{{- printf "%s-agent" (include "nftpolicy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nftpolicy.operator.selectorLabels" -}}
{{ include "nftpolicy.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "nftpolicy.agent.selectorLabels" -}}
{{ include "nftpolicy.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "nftpolicy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* --default-deny value from the two booleans: none, ingress, egress or all. */}}
{{- define "nftpolicy.defaultDeny" -}}
{{- $d := .Values.defaultDeny -}}
{{- if and $d.ingress $d.egress -}}all
{{- else if $d.ingress -}}ingress
{{- else if $d.egress -}}egress
{{- else -}}none
{{- end -}}
{{- end }}

{{/*
The coordination.k8s.io Lease the operator replicas elect a leader with. The name is fixed in
the operator (controller/operator/engine.py OperatorConfig.lease_name); the Role below names it.
*/}}
{{- define "nftpolicy.leaseName" -}}nftpolicy-operator{{- end }}
