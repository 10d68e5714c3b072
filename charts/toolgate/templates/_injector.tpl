{{/*
Injector mode: `toolgate inject`, its configuration (what it adds to pods, from the same
values as the sidecar mode), its certificate and its MutatingWebhookConfiguration.
*/}}

{{- define "toolgate.injectorName" -}}
{{- printf "%s-injector" (include "toolgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "toolgate.injectorSelectorLabels" -}}
{{ include "toolgate.selectorLabels" . }}
app.kubernetes.io/component: injector
{{- end }}

{{/* "true" when the webhook's certificate comes from cert-manager. */}}
{{- define "toolgate.injectorCertManager" -}}
{{- $cm := toString .Values.injector.certManager.enabled -}}
{{- if or (eq $cm "true") (and (eq $cm "auto") (.Capabilities.APIVersions.Has "cert-manager.io/v1")) }}true{{ end }}
{{- end }}

{{/* The DNS names the webhook Service answers to. */}}
{{- define "toolgate.injectorDNSNames" -}}
{{- $svc := include "toolgate.injectorName" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/* injector.yaml: what `toolgate inject` adds to a pod (src/inject/template.rs). */}}
{{- define "toolgate.injectorConfig" -}}
{{- $v := .Values -}}
{{- $target := $v.injector.target -}}
{{- $t := $v.capture.transparent -}}
{{- $cfg := dict
  "image" (include "toolgate.image" .)
  "image_pull_policy" $v.image.pullPolicy
  "config_map" (printf "%s-config" $target)
  "capture" $v.capture.mode
  "ports" (dict "proxy" (int $v.sidecar.ports.proxy) "admin" (int $v.sidecar.ports.admin) "transparent" (int $v.sidecar.ports.transparent))
  "log_level" $v.sidecar.logLevel
  "no_proxy" $v.capture.explicit.noProxy
  "transparent" (dict "ports" $t.ports "include_cidrs" $t.includeCIDRs "exclude_cidrs" $t.excludeCIDRs "exclude_ports" $t.excludePorts "backend" $t.backend)
  "agent_uid" (int $v.injector.agentUID)
  "trust_domain" $v.config.trustDomain
  "resources" (dict
    "sidecar" $v.sidecar.resources
    "init" (dict "requests" (dict "cpu" "10m" "memory" "16Mi") "limits" (dict "memory" "64Mi"))
    "trust" (dict "requests" (dict "cpu" "10m" "memory" "16Mi") "limits" (dict "memory" "32Mi")))
  "probes" $v.sidecar.probes
  "extra_env" $v.sidecar.extraEnv -}}
{{- if $v.ca.enabled }}
{{- $_ := set $cfg "ca" (dict "secret" (default (printf "%s-ca" $target) $v.ca.existingSecret) "cert_key" $v.ca.certKey) }}
{{- end }}
{{- $operator := dict -}}
{{- if $v.operator.socket.enabled }}
{{- $_ := set $operator "socket_dir" (dir $v.operator.socket.path) }}
{{- end }}
{{- if $v.operator.token.enabled }}
{{- $_ := set $operator "token_secret" (default (printf "%s-operator-token" $target) $v.operator.token.existingSecret) }}
{{- $_ := set $operator "token_key" $v.operator.token.key }}
{{- end }}
{{- $_ := set $cfg "operator" $operator }}
{{- if $v.state.enabled }}
{{- $_ := set $cfg "state_dir" $v.state.dir }}
{{- end }}
{{- if $v.signingKey.enabled }}
{{- $_ := set $cfg "signing_key_secret" (default (printf "%s-signing-key" $target) $v.signingKey.existingSecret) }}
{{- end }}
{{- $creds := list -}}
{{- range $v.credentialSecrets }}
{{- $creds = append $creds (dict "secret" .secretName "mount_path" (default (printf "/var/run/secrets/toolgate/%s" .secretName) .mountPath)) }}
{{- end }}
{{- $_ := set $cfg "credential_secrets" $creds }}
{{ toYaml $cfg }}
{{- end }}
