{{- define "signals.fullname" -}}
{{- printf "%s-signals" .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- end -}}

{{- define "signals.labels" -}}
app.kubernetes.io/name: signals
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "signals.serviceAccountName" -}}
{{- default (include "signals.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "signals.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The --queue value the workers use. */}}
{{- define "signals.queueSpec" -}}
{{- $q := .Values.queue -}}
{{- if or (eq $q.kind "postgresql") (eq $q.kind "mssql") -}}table
{{- else if eq $q.kind "aws-sqs-queue" -}}sqs://{{ $q.sqs.prefix }}
{{- else if eq $q.kind "azure-queue" -}}azure://{{ $q.azure.accountName }}/{{ $q.azure.prefix }}
{{- else -}}{{ fail (printf "queue.kind must be postgresql, mssql, aws-sqs-queue or azure-queue, not %q" $q.kind) }}
{{- end -}}
{{- end -}}

{{/* Environment and mounts every Signals container shares. */}}
{{- define "signals.env" -}}
- name: SIGNALS_STORE
  value: file:/var/run/secrets/signals/store/{{ .Values.store.key }}
- name: SIGNALS_STORE_SCHEMA
  value: {{ .Values.store.schema | quote }}
- name: SIGNALS_QUEUE
  value: {{ include "signals.queueSpec" . | quote }}
{{- if eq .Values.queue.kind "aws-sqs-queue" }}
- name: AWS_REGION
  value: {{ .Values.queue.sqs.region | quote }}
{{- end }}
{{- if and (eq .Values.queue.kind "azure-queue") (not .Values.queue.azure.workloadIdentity) }}
- name: SIGNALS_AZURE_CONNECTION
  value: file:/var/run/secrets/signals/azure/connection
{{- end }}
{{- end -}}

{{/* Secrets as read-only files (a rotation needs no restart). */}}
{{- define "signals.secretMounts" -}}
- name: store
  mountPath: /var/run/secrets/signals/store
  readOnly: true
{{- if and (eq .Values.queue.kind "azure-queue") (not .Values.queue.azure.workloadIdentity) }}
- name: azure
  mountPath: /var/run/secrets/signals/azure
  readOnly: true
{{- end }}
{{- end -}}

{{- define "signals.secretVolumes" -}}
- name: store
  secret:
    secretName: {{ .Values.store.existingSecret }}
{{- if and (eq .Values.queue.kind "azure-queue") (not .Values.queue.azure.workloadIdentity) }}
- name: azure
  secret:
    secretName: {{ required "queue.azure.existingSecret is required without workload identity" .Values.queue.azure.existingSecret }}
{{- end }}
{{- end -}}

{{- define "signals.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
