{{/* Names and labels shared by every template. */}}

{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shoal.fullname" -}}
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

{{- define "shoal.controllerName" -}}
{{- printf "%s-controller" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shoal.agentName" -}}
{{- printf "%s-agent" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shoal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shoal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Where agents reach the controller: the value, or this release's Service. */}}
{{- define "shoal.controllerAddress" -}}
{{- if .Values.agent.controllerAddress -}}
{{- .Values.agent.controllerAddress -}}
{{- else -}}
{{- printf "%s.%s.svc:%v" (include "shoal.controllerName" .) .Release.Namespace .Values.controller.service.grpcPort -}}
{{- end -}}
{{- end -}}

{{- define "shoal.enrollSecretName" -}}
{{- if .Values.agent.enrollment.existingSecret -}}
{{- .Values.agent.enrollment.existingSecret -}}
{{- else -}}
{{- printf "%s-enroll" (include "shoal.agentName" .) -}}
{{- end -}}
{{- end -}}

{{/* controller.yaml: the values' config with what the pod fixes. */}}
{{- define "shoal.controllerConfig" -}}
{{- $c := deepCopy .Values.controller.config -}}
{{- $_ := set $c "listen" "0.0.0.0:7800" -}}
{{- $_ := set $c "metrics_listen" "0.0.0.0:7801" -}}
{{- $_ := set $c "data_dir" "/var/lib/shoal-controller" -}}
{{- if .Values.controller.ca.existingSecret -}}
{{- $_ := set $c "ca" (dict "cert" (printf "/etc/shoal/ca-import/%s" .Values.controller.ca.certKey) "key" (printf "/etc/shoal/ca-import/%s" .Values.controller.ca.keyKey)) -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* agent.yaml: the values' config with the node's paths and the controller. */}}
{{- define "shoal.agentConfig" -}}
{{- $c := deepCopy .Values.agent.config -}}
{{- $_ := set $c "data_dir" "/var/lib/shoal" -}}
{{- $tls := dict "ca" "/var/lib/shoal/identity/ca.pem" "cert" "/var/lib/shoal/identity/agent.pem" "key" "/var/lib/shoal/identity/agent.key" -}}
{{- with .Values.agent.config.tls -}}
{{- with .deny -}}
{{- $_ := set $tls "deny" . -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c "tls" $tls -}}
{{- $_ := set $c "local_api" (dict "socket" "/var/lib/shoal/agent.sock") -}}
{{- $_ := set $c "controller" (dict "url" (include "shoal.controllerAddress" .) "status_interval" .Values.agent.session.status_interval "reconnect_max" .Values.agent.session.reconnect_max) -}}
{{- toYaml $c -}}
{{- end -}}
