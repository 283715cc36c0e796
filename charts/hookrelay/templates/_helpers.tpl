{{/* Names and labels shared by every template. */}}

{{- define "hookrelay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hookrelay.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "hookrelay.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "hookrelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookrelay.name" . }}
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

{{/* repository@digest when a digest pins the image, else repository:tag. */}}
{{- define "hookrelay.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
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
  resources: ["hubs/status", "webhooks/status"]
  verbs: ["patch"]
# A delivery's record is a PUT of its status (cheaper for the API server
# than a patch); "waitingFor" is noted with a patch.
- apiGroups: ["hookrelay.dev"]
  resources: ["deliveries/status"]
  verbs: ["update", "patch"]
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
{{ include "hookrelay.storeEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Where deliveries are stored: every process that reads or writes them. */}}
{{- define "hookrelay.storeEnv" -}}
- name: HOOKRELAY_STORE
  value: {{ .Values.store.type | quote }}
{{- if eq .Values.store.type "postgres" }}
- name: HOOKRELAY_POSTGRES_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.postgres.urlSecretRef.name | quote }}
      key: {{ .Values.store.postgres.urlSecretRef.key | quote }}
- name: HOOKRELAY_CLAIM_LEASE
  value: {{ .Values.store.postgres.claimLease | default "45s" | quote }}
{{- if include "hookrelay.postgresCA" . }}
- name: HOOKRELAY_POSTGRES_CA_FILE
  value: /etc/hookrelay/postgres-ca/ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/* Extra arguments of a container (the list given: extraArgs and its own). */}}
{{- define "hookrelay.args" -}}
{{- range . }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "hookrelay.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Non-empty when the Postgres store's CA bundle is mounted from a Secret. */}}
{{- define "hookrelay.postgresCA" -}}
{{- if and (eq .Values.store.type "postgres") .Values.store.postgres.caSecretRef }}{{ .Values.store.postgres.caSecretRef.name }}{{- end }}
{{- end -}}

{{/* The CA bundle's mount, in each container that reads the store. */}}
{{- define "hookrelay.postgresCAMount" -}}
{{- if include "hookrelay.postgresCA" . }}
volumeMounts:
  - name: postgres-ca
    mountPath: /etc/hookrelay/postgres-ca
    readOnly: true
{{- end }}
{{- end -}}

{{/* The CA bundle's volume, in each pod that reads the store. */}}
{{- define "hookrelay.postgresCAVolume" -}}
{{- with include "hookrelay.postgresCA" . }}
volumes:
  - name: postgres-ca
    secret:
      secretName: {{ . | quote }}
      items:
        - key: {{ $.Values.store.postgres.caSecretRef.key | quote }}
          path: ca.crt
{{- end }}
{{- end -}}

{{/* Whether hookrelay api runs: historyApi.enabled, else with the Postgres store. */}}
{{- define "hookrelay.historyApi" -}}
{{- if kindIs "bool" .Values.historyApi.enabled -}}
{{- if .Values.historyApi.enabled }}true{{ end -}}
{{- else if eq .Values.store.type "postgres" -}}
true
{{- end -}}
{{- end -}}
