{{/* The release's object names: the release name, or release-wharf. */}}
{{- define "wharf.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wharf.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wharf.labels" -}}
{{ include "wharf.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* "true" when replicas share a bucket and so need the cluster block. */}}
{{- define "wharf.clustered" -}}
{{- if and (eq .Values.storage.driver "s3") (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* wharf.yml, built from the values. */}}
{{- define "wharf.config" -}}
{{- $v := .Values -}}
{{- if not (has $v.storage.driver (list "filesystem" "s3")) -}}
{{- fail (printf "storage.driver must be filesystem or s3, not %q" $v.storage.driver) -}}
{{- end -}}
{{- $storage := dict "root" "/var/lib/wharf" "driver" $v.storage.driver -}}
{{- with $v.storage.maxSize }}{{ $_ := set $storage "max_size" . }}{{ end -}}
{{- if eq $v.storage.driver "s3" -}}
{{- $s3 := deepCopy $v.storage.s3 -}}
{{- if not $s3.bucket }}{{ fail "storage.s3.bucket is required with storage.driver s3" }}{{ end -}}
{{- if or (hasKey $s3 "accesskey") (hasKey $s3 "secretkey") -}}
{{- fail "storage.s3 must not hold the bucket's keys: name a Secret in storage.s3Secret" -}}
{{- end -}}
{{- if $v.storage.s3Secret -}}
{{- $_ := set $s3 "accesskey" "${S3_ACCESS_KEY}" -}}
{{- $_ := set $s3 "secretkey" "${S3_SECRET_KEY}" -}}
{{- end -}}
{{- $_ := set $storage "s3" $s3 -}}
{{- $_ := set $storage "redirect" $v.storage.redirect -}}
{{- end -}}
{{- $cfg := dict "listen" ":5000" "storage" $storage "upstreams" $v.upstreams "targets" $v.targets -}}
{{- if include "wharf.clustered" . -}}
{{- if not $v.cluster.existingSecret -}}
{{- fail "cluster.existingSecret is required with storage.driver s3 and more than one replica" -}}
{{- end -}}
{{- $cluster := dict "dns" (printf "%s-headless:5001" (include "wharf.fullname" .)) "advertise" "http://${POD_IP}:5001" "listen" ":5001" "secret_file" "/run/secrets/wharf-peer/secret" -}}
{{- if $v.cluster.peerTLSSecret -}}
{{- $_ := set $cluster "advertise" "https://${POD_IP}:5001" -}}
{{- $_ := set $cluster "tls" (dict "cert_file" "/run/secrets/wharf-peer-tls/tls.crt" "key_file" "/run/secrets/wharf-peer-tls/tls.key" "client_ca_file" "/run/secrets/wharf-peer-tls/ca.crt") -}}
{{- end -}}
{{- $_ := set $cfg "cluster" $cluster -}}
{{- end -}}
{{- if or $v.auth.htpasswdSecret $v.auth.anonymous $v.auth.rules -}}
{{- $auth := dict -}}
{{- with $v.auth.htpasswdSecret }}{{ $_ := set $auth "htpasswd" (printf "/run/secrets/wharf-htpasswd/%s" $v.auth.htpasswdKey) }}{{ end -}}
{{- with $v.auth.anonymous }}{{ $_ := set $auth "anonymous" . }}{{ end -}}
{{- with $v.auth.rules }}{{ $_ := set $auth "rules" . }}{{ end -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- end -}}
{{- with $v.api.tokenSecret -}}
{{- $_ := set $cfg "api" (dict "token_file" (printf "/run/secrets/wharf-api/%s" $v.api.tokenKey)) -}}
{{- end -}}
{{- with $v.tls.secretName -}}
{{- $_ := set $cfg "tls" (dict "cert_file" "/run/secrets/wharf-tls/tls.crt" "key_file" "/run/secrets/wharf-tls/tls.key") -}}
{{- end -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy $v.config)) -}}
{{- end -}}

{{/* The environment wharf.yml's ${VAR} references read. */}}
{{- define "wharf.env" -}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
{{- if .Values.storage.s3Secret }}
- name: S3_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ .Values.storage.s3Secret }}, key: accesskey}}
- name: S3_SECRET_KEY
  valueFrom: {secretKeyRef: {name: {{ .Values.storage.s3Secret }}, key: secretkey}}
{{- end }}
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The volumes every Wharf container mounts: configuration and secrets. */}}
{{- define "wharf.volumes" -}}
- name: config
  configMap: {name: {{ include "wharf.fullname" . }}}
{{- if include "wharf.clustered" . }}
- name: peer
  secret: {secretName: {{ .Values.cluster.existingSecret }}, defaultMode: 0400}
{{- with .Values.cluster.peerTLSSecret }}
- name: peer-tls
  secret: {secretName: {{ . }}, defaultMode: 0400}
{{- end }}
{{- end }}
{{- with .Values.auth.htpasswdSecret }}
- name: htpasswd
  secret: {secretName: {{ . }}, defaultMode: 0400}
{{- end }}
{{- with .Values.api.tokenSecret }}
- name: api-token
  secret: {secretName: {{ . }}, defaultMode: 0400}
{{- end }}
{{- with .Values.tls.secretName }}
- name: tls
  secret: {secretName: {{ . }}, defaultMode: 0400}
{{- end }}
{{- range .Values.secretMounts }}
- name: secret-{{ .name }}
  secret: {secretName: {{ .secretName }}, defaultMode: 0400}
{{- end }}
{{- end -}}

{{- define "wharf.volumeMounts" -}}
- {name: config, mountPath: /etc/wharf, readOnly: true}
{{- if include "wharf.clustered" . }}
- {name: peer, mountPath: /run/secrets/wharf-peer, readOnly: true}
{{- if .Values.cluster.peerTLSSecret }}
- {name: peer-tls, mountPath: /run/secrets/wharf-peer-tls, readOnly: true}
{{- end }}
{{- end }}
{{- if .Values.auth.htpasswdSecret }}
- {name: htpasswd, mountPath: /run/secrets/wharf-htpasswd, readOnly: true}
{{- end }}
{{- if .Values.api.tokenSecret }}
- {name: api-token, mountPath: /run/secrets/wharf-api, readOnly: true}
{{- end }}
{{- if .Values.tls.secretName }}
- {name: tls, mountPath: /run/secrets/wharf-tls, readOnly: true}
{{- end }}
{{- range .Values.secretMounts }}
- {name: secret-{{ .name }}, mountPath: /run/secrets/{{ .name }}, readOnly: true}
{{- end }}
{{- end -}}

{{- define "wharf.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "wharf.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}
