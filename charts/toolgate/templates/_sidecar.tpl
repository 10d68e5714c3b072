{{/*
Pod-spec pieces for running toolgate beside an agent. The chart's own Deployment is built
from them, and any workload can include them (README, "Kubernetes"):

  initContainers:        {{ include "toolgate.initContainers" . }}   # capture step, trust
                                                                      # bundle, native sidecar
  containers:            your agent, with
    env:                 {{ include "toolgate.agentEnv" . }}
    volumeMounts:        {{ include "toolgate.agentVolumeMounts" . }}
                         and {{ include "toolgate.containers" . }}   # classic sidecar only
  volumes:               {{ include "toolgate.volumes" . }}

Each renders a YAML list (possibly empty) to be placed with nindent. They read only this
chart's .Values, .Release and .Chart, so a parent chart passes the toolgate subchart's
context (see README).
*/}}

{{- define "toolgate.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1337
runAsGroup: 1337
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The toolgate container (a list item), native or classic. */}}
{{- define "toolgate.sidecarContainer" -}}
- name: toolgate
  image: {{ include "toolgate.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "-c", "/etc/toolgate/config/toolgate.yaml"]
  env:
    - name: TOOLGATE_LOG
      value: {{ .Values.sidecar.logLevel | quote }}
    # The pod's identity for the resource of toolgate's spans (k8s.pod.name, …).
    - name: K8S_POD_NAME
      valueFrom: { fieldRef: { fieldPath: metadata.name } }
    - name: K8S_NAMESPACE_NAME
      valueFrom: { fieldRef: { fieldPath: metadata.namespace } }
    - name: K8S_NODE_NAME
      valueFrom: { fieldRef: { fieldPath: spec.nodeName } }
    {{- with .Values.sidecar.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: tg-proxy
      containerPort: {{ .Values.sidecar.ports.proxy }}
      protocol: TCP
    - name: tg-admin
      containerPort: {{ .Values.sidecar.ports.admin }}
      protocol: TCP
    {{- if eq .Values.capture.mode "transparent" }}
    - name: tg-transparent
      containerPort: {{ .Values.sidecar.ports.transparent }}
      protocol: TCP
    {{- end }}
  startupProbe:
    httpGet: { path: /readyz, port: tg-admin }
    {{- toYaml .Values.sidecar.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet: { path: /healthz, port: tg-admin }
    {{- toYaml .Values.sidecar.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet: { path: /readyz, port: tg-admin }
    {{- toYaml .Values.sidecar.probes.readiness | nindent 4 }}
  resources:
    {{- toYaml .Values.sidecar.resources | nindent 4 }}
  securityContext:
    {{- include "toolgate.restrictedSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: toolgate-config
      mountPath: /etc/toolgate/config
      readOnly: true
    - name: toolgate-tmp
      mountPath: /tmp
    # The operator socket, token and state: mounted here and nowhere else in the pod.
    {{- if .Values.operator.socket.enabled }}
    - name: toolgate-operator
      mountPath: {{ dir .Values.operator.socket.path }}
    {{- end }}
    {{- if .Values.operator.token.enabled }}
    - name: toolgate-operator-token
      mountPath: {{ include "toolgate.operatorTokenDir" . }}
      readOnly: true
    {{- end }}
    {{- if .Values.state.enabled }}
    - name: toolgate-state
      mountPath: {{ .Values.state.dir }}
    {{- end }}
    {{- if .Values.state.redis.enabled }}
    - name: toolgate-redis
      mountPath: /var/run/secrets/toolgate/redis
      readOnly: true
    {{- end }}
    {{- if .Values.ca.enabled }}
    - name: toolgate-ca
      mountPath: /etc/toolgate/ca
      readOnly: true
    {{- end }}
    {{- if .Values.signingKey.enabled }}
    - name: toolgate-signing-key
      mountPath: /etc/toolgate/signing
      readOnly: true
    {{- end }}
    {{- range .Values.credentialSecrets }}
    - name: {{ printf "cred-%s" .secretName | trunc 63 | trimSuffix "-" }}
      mountPath: {{ default (printf "/var/run/secrets/toolgate/%s" .secretName) .mountPath }}
      readOnly: true
    {{- end }}
{{- end }}

{{/* Init containers: the iptables step (transparent), the agent's trust bundle (ca.enabled),
     then toolgate itself when it is a native sidecar. */}}
{{- define "toolgate.initContainers" -}}
{{- include "toolgate.validate" . }}
{{- if eq .Values.capture.mode "transparent" }}
{{- $t := .Values.capture.transparent }}
- name: toolgate-init
  image: {{ include "toolgate.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - init-iptables
    - --transparent-port={{ .Values.sidecar.ports.transparent }}
    - --admin-port={{ .Values.sidecar.ports.admin }}
    - --proxy-uid=1337
    - --ports={{ join "," $t.ports }}
    - --include-cidrs={{ join "," $t.includeCIDRs }}
    {{- with $t.excludeCIDRs }}
    - --exclude-cidrs={{ join "," . }}
    {{- end }}
    {{- with $t.excludePorts }}
    - --exclude-ports={{ join "," . }}
    {{- end }}
    {{- if eq $t.backend "legacy" }}
    - --iptables=iptables-legacy
    - --iptables-restore=iptables-legacy-restore
    {{- end }}
  resources:
    requests: { cpu: 10m, memory: 16Mi }
    limits: { memory: 64Mi }
  # Root with NET_ADMIN and NET_RAW only, and only in this short-lived step.
  securityContext:
    runAsNonRoot: false
    runAsUser: 0
    runAsGroup: 0
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      add: [NET_ADMIN, NET_RAW]
      drop: [ALL]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    # iptables takes its lock under /run.
    - name: toolgate-init-run
      mountPath: /run
{{- end }}
{{- if .Values.ca.enabled }}
- name: toolgate-trust
  image: {{ include "toolgate.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  # The agent's trust bundle: the system roots plus toolgate's CA certificate (never its key).
  command:
    - /bin/sh
    - -c
    - cat /etc/ssl/certs/ca-certificates.crt /etc/toolgate/ca-cert/ca.crt > /etc/toolgate/trust/ca-bundle.crt
  resources:
    requests: { cpu: 10m, memory: 16Mi }
    limits: { memory: 32Mi }
  securityContext:
    {{- include "toolgate.restrictedSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: toolgate-ca-cert
      mountPath: /etc/toolgate/ca-cert
      readOnly: true
    - name: toolgate-trust
      mountPath: /etc/toolgate/trust
{{- end }}
{{- if .Values.sidecar.native }}
{{ include "toolgate.sidecarContainer" . }}
{{- end }}
{{- end }}

{{/* Regular containers to add beside the agent: toolgate when it is a classic sidecar. */}}
{{- define "toolgate.containers" -}}
{{- if not .Values.sidecar.native }}
{{ include "toolgate.sidecarContainer" . }}
{{- end }}
{{- end }}

{{/* Environment for the agent's container: proxy settings (explicit) and CA trust. */}}
{{- define "toolgate.agentEnv" -}}
{{- if eq .Values.capture.mode "explicit" }}
{{- $proxy := printf "http://127.0.0.1:%d" (int .Values.sidecar.ports.proxy) }}
{{- $noProxy := join "," .Values.capture.explicit.noProxy }}
{{- range $name := list "HTTP_PROXY" "HTTPS_PROXY" "http_proxy" "https_proxy" }}
- name: {{ $name }}
  value: {{ $proxy | quote }}
{{- end }}
{{- range $name := list "NO_PROXY" "no_proxy" }}
- name: {{ $name }}
  value: {{ $noProxy | quote }}
{{- end }}
{{- end }}
{{- if .Values.ca.enabled }}
{{- range $name := list "SSL_CERT_FILE" "REQUESTS_CA_BUNDLE" "CURL_CA_BUNDLE" }}
- name: {{ $name }}
  value: /etc/toolgate/trust/ca-bundle.crt
{{- end }}
- name: NODE_EXTRA_CA_CERTS
  value: /etc/toolgate/ca-cert/ca.crt
{{- end }}
{{- end }}

{{/* Volume mounts for the agent's container: the CA certificate and the trust bundle —
     never the operator socket, the operator token or the state. */}}
{{- define "toolgate.agentVolumeMounts" -}}
{{- if .Values.ca.enabled }}
- name: toolgate-ca-cert
  mountPath: /etc/toolgate/ca-cert
  readOnly: true
- name: toolgate-trust
  mountPath: /etc/toolgate/trust
  readOnly: true
{{- end }}
{{- end }}

{{/* Pod volumes for all of the above. */}}
{{- define "toolgate.volumes" -}}
# A directory mount (not subPath): ConfigMap updates reach the running toolgate.
- name: toolgate-config
  configMap:
    name: {{ include "toolgate.configMapName" . }}
- name: toolgate-tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- if eq .Values.capture.mode "transparent" }}
- name: toolgate-init-run
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- if .Values.operator.socket.enabled }}
- name: toolgate-operator
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- if .Values.operator.token.enabled }}
- name: toolgate-operator-token
  secret:
    secretName: {{ include "toolgate.operatorTokenSecretName" . }}
    items:
      - key: {{ .Values.operator.token.key }}
        path: {{ .Values.operator.token.key }}
    defaultMode: 0440
{{- end }}
{{- if .Values.state.enabled }}
- name: toolgate-state
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- if .Values.state.redis.enabled }}
- name: toolgate-redis
  secret:
    secretName: {{ .Values.state.redis.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if .Values.ca.enabled }}
- name: toolgate-ca
  secret:
    secretName: {{ include "toolgate.caSecretName" . }}
    defaultMode: 0440
- name: toolgate-ca-cert
  secret:
    secretName: {{ include "toolgate.caSecretName" . }}
    items:
      - key: {{ .Values.ca.certKey }}
        path: ca.crt
    defaultMode: 0444
- name: toolgate-trust
  emptyDir:
    sizeLimit: 4Mi
{{- end }}
{{- if .Values.signingKey.enabled }}
- name: toolgate-signing-key
  secret:
    secretName: {{ include "toolgate.signingKeySecretName" . }}
    defaultMode: 0440
{{- end }}
{{- range .Values.credentialSecrets }}
- name: {{ printf "cred-%s" .secretName | trunc 63 | trimSuffix "-" }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* Pod security context: secret files are group-readable by toolgate's gid (1337). */}}
{{- define "toolgate.podSecurityContext" -}}
fsGroup: 1337
seccompProfile:
  type: RuntimeDefault
{{- end }}
