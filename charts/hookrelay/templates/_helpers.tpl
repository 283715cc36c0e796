{{/* Names and labels shared by every template. */}}

{{- define "hookrelay.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hookrelay.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hookrelay.labels" -}}
{{ include "hookrelay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "hookrelay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hookrelay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "hookrelay.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The permissions hookrelay uses, and no others: controller (reconcilers,
delivery engine, retention) and ingest share the Pod's ServiceAccount.
*/}}
{{- define "hookrelay.rules" -}}
- apiGroups: ["hookrelay.dev"]
  resources: ["hubs", "webhooks", "deliveries"]
  verbs: ["get", "list", "watch"]
# ingest stores Deliveries (and removes them if an event is not accepted);
# retention deletes finished ones.
- apiGroups: ["hookrelay.dev"]
  resources: ["deliveries"]
  verbs: ["create", "delete"]
# Deactivation: spec.active and the reason annotation.
- apiGroups: ["hookrelay.dev"]
  resources: ["webhooks"]
  verbs: ["patch"]
- apiGroups: ["hookrelay.dev"]
  resources: ["hubs/status", "webhooks/status", "deliveries/status"]
  verbs: ["patch"]
# Generated Secrets are owned with blockOwnerDeletion.
- apiGroups: ["hookrelay.dev"]
  resources: ["hubs/finalizers", "webhooks/finalizers"]
  verbs: ["update"]
# Signing secrets, ingest tokens and secret header values; watched by metadata.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{- define "hookrelay.env" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- end -}}

{{- define "hookrelay.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
