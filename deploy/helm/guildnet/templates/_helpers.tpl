{{/*
Names and labels. The release's objects are named <release>-guildnet-<part> unless the release
is already called guildnet (then guildnet-<part>).
*/}}
{{- define "guildnet.fullname" -}}
{{- if contains "guildnet" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-guildnet" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "guildnet.baseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: guildnet
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "guildnet.labels" -}}
{{ include "guildnet.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component's objects: (dict "root" $ "component" "orchestrator") */}}
{{- define "guildnet.componentLabels" -}}
{{ include "guildnet.baseLabels" .root }}
{{ include "guildnet.selector" . }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "orchestrator") */}}
{{- define "guildnet.selector" -}}
app.kubernetes.io/name: guildnet-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "guildnet.agentNamespace" -}}
{{- default .Release.Namespace .Values.agentNamespace -}}
{{- end -}}

{{/* An image reference: (dict "root" $ "image" .Values.operator.image) */}}
{{- define "guildnet.image" -}}
{{- $tag := default .root.Chart.AppVersion (default .root.Values.image.tag .image.tag) -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image.repository $tag -}}
{{- end -}}

{{- define "guildnet.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The Secret holding admin-token and dashboard-password. */}}
{{- define "guildnet.secretName" -}}
{{- default (include "guildnet.fullname" .) .Values.controlPlane.existingSecret -}}
{{- end -}}

{{- define "guildnet.postgres" -}}
{{- $pg := .Values.controlPlane.store.postgres -}}
{{- if or $pg.url $pg.existingSecret }}true{{ end -}}
{{- end -}}

{{/* The Secret and key holding the PostgreSQL URL. */}}
{{- define "guildnet.storeSecretName" -}}
{{- default (include "guildnet.fullname" .) .Values.controlPlane.store.postgres.existingSecret -}}
{{- end -}}
{{- define "guildnet.storeSecretKey" -}}
{{- if .Values.controlPlane.store.postgres.existingSecret -}}
{{- .Values.controlPlane.store.postgres.existingSecretKey -}}
{{- else -}}
store-url
{{- end -}}
{{- end -}}

{{- define "guildnet.orchestratorUrl" -}}
{{- printf "http://%s-orchestrator.%s.svc:%v" (include "guildnet.fullname" .) .Release.Namespace .Values.controlPlane.orchestrator.service.port -}}
{{- end -}}

{{/* The same pod and container hardening as deploy/operator.yaml and deploy/orchestrator/. */}}
{{- define "guildnet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "guildnet.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/*
Values that the schema cannot check (they span several fields). Rendered by every template, so
that `helm template` and `helm install` stop with a message before anything is applied.
*/}}
{{- define "guildnet.validate" -}}
{{- $v := .Values -}}
{{- if not (or $v.operator.enabled $v.controlPlane.enabled) -}}
{{- fail "nothing to install: operator.enabled and controlPlane.enabled are both false" -}}
{{- end -}}
{{- if $v.controlPlane.enabled -}}
{{- $pg := $v.controlPlane.store.postgres -}}
{{- $sqlite := $v.controlPlane.store.sqlite.persistence -}}
{{- if and $pg.url $pg.existingSecret -}}
{{- fail "controlPlane.store.postgres: set url or existingSecret, not both" -}}
{{- end -}}
{{- if and $pg.url (not (regexMatch "^postgres(ql)?://" $pg.url)) -}}
{{- fail "controlPlane.store.postgres.url must start with postgres:// or postgresql://" -}}
{{- end -}}
{{- if not (include "guildnet.postgres" .) -}}
{{- if not $sqlite.enabled -}}
{{- fail "controlPlane.store: no durable store. SQLite needs controlPlane.store.sqlite.persistence.enabled=true (a PersistentVolumeClaim), or set controlPlane.store.postgres.url or .existingSecret" -}}
{{- end -}}
{{- if gt (int $v.controlPlane.orchestrator.replicas) 1 -}}
{{- fail (printf "controlPlane.orchestrator.replicas=%v needs PostgreSQL: SQLite is one file on one ReadWriteOnce volume, for one replica. Set controlPlane.store.postgres.url (or .existingSecret), or replicas=1" $v.controlPlane.orchestrator.replicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
