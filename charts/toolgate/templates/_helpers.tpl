{{/*
Names, labels and the toolgate configuration. The pod-spec pieces others can include in
their own workloads are in _sidecar.tpl.
*/}}

{{- define "toolgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "toolgate.fullname" -}}
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

{{- define "toolgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "toolgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "toolgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "toolgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "toolgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "toolgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "toolgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "toolgate.configMapName" -}}
{{- default (printf "%s-config" (include "toolgate.fullname" .)) .Values.config.existingConfigMap }}
{{- end }}

{{- define "toolgate.caSecretName" -}}
{{- default (printf "%s-ca" (include "toolgate.fullname" .)) .Values.ca.existingSecret }}
{{- end }}

{{- define "toolgate.operatorTokenSecretName" -}}
{{- default (printf "%s-operator-token" (include "toolgate.fullname" .)) .Values.operator.token.existingSecret }}
{{- end }}

{{/* Where the operator token is mounted in toolgate's container. */}}
{{- define "toolgate.operatorTokenDir" -}}
/var/run/secrets/toolgate/operator
{{- end }}

{{- define "toolgate.signingKeySecretName" -}}
{{- default (printf "%s-signing-key" (include "toolgate.fullname" .)) .Values.signingKey.existingSecret }}
{{- end }}

{{/* The agent's identity: config.agentId, or a SPIFFE id from the pod's service account. */}}
{{- define "toolgate.agentId" -}}
{{- if .Values.config.agentId }}
{{- .Values.config.agentId }}
{{- else }}
{{- printf "spiffe://%s/ns/%s/sa/%s" .Values.config.trustDomain .Release.Namespace (include "toolgate.serviceAccountName" .) }}
{{- end }}
{{- end }}

{{/* Rego module file names, in a stable order. */}}
{{- define "toolgate.regoFiles" -}}
{{- keys .Values.config.policy.rego | sortAlpha | toJson }}
{{- end }}

{{/*
toolgate.yaml, built as a dictionary and printed with toYaml so that values cannot break
the YAML. Only keys toolgate accepts are rendered; keys of features that are off stay out.
*/}}
{{- define "toolgate.config" -}}
{{- $v := .Values -}}
{{- $c := $v.config -}}
{{- $listen := dict
  "proxy" (printf "127.0.0.1:%d" (int $v.sidecar.ports.proxy))
  "admin" (printf "%s:%d" $v.sidecar.adminAddress (int $v.sidecar.ports.admin)) -}}
{{- /* A configuration for injected pods (agent.enabled=false) listens for both capture
       modes: each pod chooses its own (toolgate.io/capture). */}}
{{- if or (eq $v.capture.mode "transparent") (not $v.agent.enabled) }}
{{- $_ := set $listen "transparent" (printf "127.0.0.1:%d" (int $v.sidecar.ports.transparent)) }}
{{- end }}
{{- if $v.operator.socket.enabled }}
{{- $_ := set $listen "operator" (printf "unix:%s" $v.operator.socket.path) }}
{{- end }}
{{- $admin := dict "revocation_ttl" $v.operator.revocationTTL "max_revocation_ttl" $v.operator.maxRevocationTTL -}}
{{- if $v.operator.token.enabled }}
{{- $_ := set $admin "token_file" (printf "%s/%s" (include "toolgate.operatorTokenDir" .) $v.operator.token.key) }}
{{- end }}
{{- $policy := dict "files" (include "toolgate.regoFiles" . | fromJsonArray) "query" $c.policy.query -}}
{{- if $c.policy.data }}
{{- $_ := set $policy "data" (list "data.yaml") }}
{{- end }}
{{- $limits := merge (dict "shutdown_timeout" (printf "%ds" (int $v.sidecar.shutdownTimeoutSeconds))) (deepCopy $c.limits) -}}
{{- $cfg := dict
  "listen" $listen
  "workers" (int $v.sidecar.workers)
  "agent" (dict "id" (include "toolgate.agentId" .))
  "policy" $policy
  "admin" $admin
  "limits" $limits -}}
{{- if $v.state.enabled }}
{{- $_ := set $cfg "state" (dict "backend" "memory" "dir" $v.state.dir) }}
{{- end }}
{{- with $c.tools }}{{ $_ := set $cfg "tools" (deepCopy .) }}{{ end }}
{{- with $c.routes }}{{ $_ := set $cfg "routes" (deepCopy .) }}{{ end }}
{{- with $c.credentials }}{{ $_ := set $cfg "credentials" (deepCopy .) }}{{ end }}
{{- with $c.chain }}{{ $_ := set $cfg "chain" (deepCopy .) }}{{ end }}
{{- $tls := dict -}}
{{- with $c.upstreamCA }}{{ $_ := set $tls "upstream_ca" . }}{{ end }}
{{- if $v.ca.enabled }}
{{- $_ := set $tls "ca" (dict "cert" (printf "/etc/toolgate/ca/%s" $v.ca.certKey) "key" (printf "/etc/toolgate/ca/%s" $v.ca.keyKey)) }}
{{- end }}
{{- if $tls }}{{ $_ := set $cfg "tls" $tls }}{{ end }}
{{- with $v.telemetry.otlp.endpoint }}
{{- $_ := set $cfg "telemetry" (dict "otlp" (dict "endpoint" . "protocol" $v.telemetry.otlp.protocol)) }}
{{- end }}
{{- $cfg = mustMergeOverwrite $cfg (deepCopy $c.extra) -}}
{{ toYaml $cfg }}
{{- end }}

{{/* Seconds the pod gets to stop: the agent's own time, toolgate's drain, and a margin. */}}
{{- define "toolgate.terminationGracePeriodSeconds" -}}
{{- add (int .Values.agent.terminationGracePeriodSeconds) (int .Values.sidecar.shutdownTimeoutSeconds) 2 }}
{{- end }}

{{/* Checks the schema cannot express (relations between values). */}}
{{- define "toolgate.validate" -}}
{{- if eq .Values.capture.mode "transparent" }}
{{- $uid := .Values.agent.securityContext.runAsUser }}
{{- if and (not (kindIs "invalid" $uid)) (eq (int $uid) 1337) }}
{{- fail "agent.securityContext.runAsUser must not be 1337: transparent capture exempts toolgate's uid, so the agent would bypass it" }}
{{- end }}
{{- end }}
{{- if and .Values.ca.enabled (not .Values.ca.existingSecret) (or (ne .Values.ca.certKey "tls.crt") (ne .Values.ca.keyKey "tls.key")) }}
{{- fail "ca.certKey and ca.keyKey name the keys of ca.existingSecret; a generated CA uses tls.crt and tls.key" }}
{{- end }}
{{- $taken := list "/tmp" "/etc/toolgate/config" "/etc/toolgate/ca" "/etc/toolgate/signing" (include "toolgate.operatorTokenDir" .) }}
{{- if and .Values.operator.socket.enabled (has (dir .Values.operator.socket.path) $taken) }}
{{- fail (printf "operator.socket.path: %s is a directory the chart mounts for something else; use a directory of its own, e.g. /var/run/toolgate" (dir .Values.operator.socket.path)) }}
{{- end }}
{{- if and .Values.state.enabled (or (has .Values.state.dir $taken) (and .Values.operator.socket.enabled (eq .Values.state.dir (dir .Values.operator.socket.path)))) }}
{{- fail (printf "state.dir: %s is a directory the chart mounts for something else; use a directory of its own, e.g. /var/lib/toolgate" .Values.state.dir) }}
{{- end }}
{{- if and .Values.injector.enabled .Values.agent.enabled }}
{{- fail "injector.enabled installs the admission webhook only: set agent.enabled=false (the agents are your own Deployments)" }}
{{- end }}
{{- if and .Values.config.existingConfigMap .Values.config.rolloutOnChange }}
{{- fail "config.rolloutOnChange needs the chart to render the ConfigMap: unset config.existingConfigMap" }}
{{- end }}
{{- end }}
