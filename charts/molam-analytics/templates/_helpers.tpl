{{/*
Names, labels and small lookups shared by every template.
*/}}

{{/* The chart name, overridable with nameOverride. */}}
{{- define "molam-analytics.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The fully qualified app name: fullnameOverride, else "<release>-<chart>" (just "<release>" when
the release name already contains the chart name). Truncated to 63 characters (DNS label).
*/}}
{{- define "molam-analytics.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "molam-analytics.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object the chart renders. */}}
{{- define "molam-analytics.labels" -}}
helm.sh/chart: {{ include "molam-analytics.chart" . }}
{{ include "molam-analytics.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: molam-analytics
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select the operator's pods (immutable once installed: keep them few). */}}
{{- define "molam-analytics.selectorLabels" -}}
app.kubernetes.io/name: {{ include "molam-analytics.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's ServiceAccount name. */}}
{{- define "molam-analytics.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "molam-analytics.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image reference: repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "molam-analytics.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The namespaces the operator watches, as a JSON list: empty means every namespace (cluster-wide
RBAC); otherwise operator.watchNamespaces, where "" stands for the release namespace.
*/}}
{{- define "molam-analytics.watchNamespaces" -}}
{{- $out := list -}}
{{- range .Values.operator.watchNamespaces -}}
{{- $out = append $out (default $.Release.Namespace .) -}}
{{- end -}}
{{- $out | uniq | toJson -}}
{{- end -}}

{{/* The namespace of the optional AnalyticsPipeline and its Secrets. */}}
{{- define "molam-analytics.pipelineNamespace" -}}
{{- default .Release.Namespace .Values.pipeline.namespace -}}
{{- end -}}

{{/*
The labels that select one workload's pods, as the operator sets them
(molam_operator.manifests.selector_labels). Call with (list <pipeline> <component>).
*/}}
{{- define "molam-analytics.workloadSelector" -}}
app.kubernetes.io/name: molam-analytics
app.kubernetes.io/instance: {{ index . 0 }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* An egress rule allowing DNS (UDP and TCP 53) to any address. */}}
{{- define "molam-analytics.dnsEgress" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}

{{/*
An egress rule to one of the backing services (networkPolicy.database, .redis, .kafka): its
ports, to its `to` peers (empty: any address on those ports).
*/}}
{{- define "molam-analytics.serviceEgress" -}}
- ports:
    {{- toYaml .ports | nindent 4 }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
