{{/* Names and labels. */}}

{{- define "savepointd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "savepointd.fullname" -}}
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

{{- define "savepointd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "savepointd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "savepointd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "savepointd.labels" -}}
helm.sh/chart: {{ include "savepointd.chart" . }}
{{ include "savepointd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "savepointd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "savepointd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "savepointd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The port of server.listen ("0.0.0.0:9090", "[::]:9090"). */}}
{{- define "savepointd.port" -}}
{{- .Values.server.listen | splitList ":" | last | int }}
{{- end }}

{{/* "true" when several replicas run and elect one that acts (mode daemon, replicas > 1). */}}
{{- define "savepointd.ha" -}}
{{- and (eq .Values.mode "daemon") (gt (int .Values.replicas) 1) | ternary "true" "" }}
{{- end }}

{{- define "savepointd.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (include "savepointd.fullname" .) }}
{{- end }}

{{- define "savepointd.configPath" -}}/etc/savepointd/config.yaml{{- end }}

{{/* Where a platform's token and CA files are mounted. */}}
{{- define "savepointd.platformDir" -}}
{{- printf "%s/%s" (trimSuffix "/" .root.Values.secretsMountPath) .platform.name }}
{{- end }}

{{/*
The namespaces whose pods savepointd watches, as a JSON list: every resolve.kubernetesNamespace of a
platform that resolves names through pods (with the daemon's defaults: via pods for kind vvp, api
otherwise; namespace "default").
*/}}
{{- define "savepointd.podNamespaces" -}}
{{- $namespaces := list }}
{{- range .Values.platforms }}
{{- $resolve := .resolve | default dict }}
{{- if eq ($resolve.via | default (ternary "pods" "api" (eq .kind "vvp"))) "pods" }}
{{- $namespaces = append $namespaces ($resolve.kubernetesNamespace | default "default") }}
{{- end }}
{{- end }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/* Where a flinkOperator platform's FlinkDeployments, FlinkSessionJobs and FlinkStateSnapshots live. */}}
{{- define "savepointd.operatorNamespaces" -}}
{{- $namespaces := list }}
{{- range .Values.platforms }}
{{- if eq .kind "flinkOperator" }}
{{- $namespaces = concat $namespaces (kindIs "string" .kubernetesNamespace | ternary (list .kubernetesNamespace) .kubernetesNamespace) }}
{{- end }}
{{- end }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/* Where the Roles go: rbac.namespaces when set (checked to contain the watched ones), else those. */}}
{{- define "savepointd.rbacNamespaces" -}}
{{- if .Values.rbac.namespaces }}
{{- .Values.rbac.namespaces | toJson }}
{{- else }}
{{- concat (include "savepointd.podNamespaces" . | fromJsonArray) (include "savepointd.operatorNamespaces" . | fromJsonArray) | uniq | toJson }}
{{- end }}
{{- end }}

{{/*
Checks across values that values.schema.json cannot express; a failure stops the install with the
offending key named.
*/}}
{{/*
A cron schedule's field count, said in words (a schema pattern can only say that it does not match).
Takes (dict "path" "defaults.schedule" "value" "0 1 * *" "seconds" true): `seconds` allows the daemon's
6-field form; a Kubernetes CronJob takes 5 fields only. Aliases (@daily, @every 6h) are the daemon's to
judge.
*/}}
{{- define "savepointd.checkSchedule" -}}
{{- $s := trim .value }}
{{- if not (hasPrefix "@" $s) }}
{{- $n := len (splitList " " (regexReplaceAll "\\s+" $s " ")) }}
{{- if and .seconds (not (or (eq $n 5) (eq $n 6))) }}
{{- fail (printf "%s: %q: expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found %d" .path $s $n) }}
{{- else if and (not .seconds) (ne $n 5) }}
{{- fail (printf "%s: %q: a Kubernetes CronJob schedule has 5 fields (minute hour day-of-month month day-of-week) or is an alias like @daily, found %d fields" .path $s $n) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "savepointd.validate" -}}
{{- with .Values.defaults.schedule }}
{{- include "savepointd.checkSchedule" (dict "path" "defaults.schedule" "value" . "seconds" true) }}
{{- end }}
{{- range $j, $w := .Values.defaults.blackoutWindows }}
{{- include "savepointd.checkSchedule" (dict "path" (printf "defaults.blackoutWindows[%d].schedule" $j) "value" $w.schedule "seconds" true) }}
{{- end }}
{{- include "savepointd.checkSchedule" (dict "path" "cronjob.schedule" "value" .Values.cronjob.schedule "seconds" false) }}
{{- $platformNames := list }}
{{- range $i, $p := .Values.platforms }}
{{- if has $p.name $platformNames }}
{{- fail (printf "platforms[%d].name: duplicate platform name %q" $i $p.name) }}
{{- end }}
{{- $platformNames = append $platformNames $p.name }}
{{- end }}
{{- $appNames := list }}
{{- range $i, $a := .Values.applications }}
{{- $app := kindIs "string" $a | ternary (dict "name" $a) $a }}
{{- if has $app.name $appNames }}
{{- fail (printf "applications[%d]: duplicate application name %q" $i $app.name) }}
{{- end }}
{{- $appNames = append $appNames $app.name }}
{{- with $app.schedule }}
{{- include "savepointd.checkSchedule" (dict "path" (printf "applications[%d].schedule" $i) "value" . "seconds" true) }}
{{- end }}
{{- range $j, $w := $app.blackoutWindows }}
{{- include "savepointd.checkSchedule" (dict "path" (printf "applications[%d].blackoutWindows[%d].schedule" $i $j) "value" $w.schedule "seconds" true) }}
{{- end }}
{{- if $app.platform }}
{{- if not (has $app.platform $platformNames) }}
{{- fail (printf "applications[%d].platform: %q is not one of the configured platforms (%s)" $i $app.platform (join ", " $platformNames)) }}
{{- end }}
{{- else if gt (len $platformNames) 1 }}
{{- fail (printf "applications[%d].platform: required for %q when more than one platform is configured" $i $app.name) }}
{{- end }}
{{- end }}
{{- if .Values.rbac.namespaces }}
{{- range (include "savepointd.podNamespaces" . | fromJsonArray) }}
{{- if not (has . $.Values.rbac.namespaces) }}
{{- fail (printf "rbac.namespaces: lacks %q, where a platform resolves names through pods" .) }}
{{- end }}
{{- end }}
{{- range (include "savepointd.operatorNamespaces" . | fromJsonArray) }}
{{- if not (has . $.Values.rbac.namespaces) }}
{{- fail (printf "rbac.namespaces: lacks %q, where a flinkOperator platform's resources live" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The daemon's config file. Plain application names become {name: ...}; Secret and ConfigMap
references become the paths where the pod mounts them, so no token ever reaches the ConfigMap.
*/}}
{{- define "savepointd.config" -}}
{{- $server := dict "listen" .Values.server.listen }}
{{- with .Values.server.shutdownGrace }}
{{- $_ := set $server "shutdownGrace" . }}
{{- end }}
{{- $platforms := list }}
{{- range .Values.platforms }}
{{- $p := deepCopy . }}
{{- $dir := include "savepointd.platformDir" (dict "root" $ "platform" .) }}
{{- if and $p.auth $p.auth.existingSecret }}
{{- $_ := set $p "auth" (dict "tokenFile" (printf "%s/token" $dir)) }}
{{- end }}
{{- if $p.tls }}
{{- if or $p.tls.existingSecret $p.tls.existingConfigMap }}
{{- $_ := set $p.tls "caFile" (printf "%s/ca.crt" $dir) }}
{{- $_ := unset $p.tls "existingSecret" }}
{{- $_ := unset $p.tls "existingConfigMap" }}
{{- end }}
{{- if $p.tls.clientCertificateSecret }}
{{- $_ := set $p.tls "certFile" (printf "%s/client.crt" $dir) }}
{{- $_ := set $p.tls "keyFile" (printf "%s/client.key" $dir) }}
{{- $_ := unset $p.tls "clientCertificateSecret" }}
{{- end }}
{{- end }}
{{- $platforms = append $platforms $p }}
{{- end }}
{{- $applications := list }}
{{- range .Values.applications }}
{{- $a := kindIs "string" . | ternary (dict "name" .) (deepCopy .) }}
{{- if eq $.Values.mode "cronjob" }}
{{- /* `savepointd once` runs each application's latest slot of its schedule, so that a retried or
duplicated Job meets the slot's savepoint instead of making another: here every application's schedule
is the CronJob's. The controller's timezone is UTC unless cronjob.timeZone says otherwise, and a Job whose
pod starts late (an image pull) still finds its slot. */}}
{{- $_ := set $a "schedule" $.Values.cronjob.schedule }}
{{- $_ := set $a "timezone" ($.Values.cronjob.timeZone | default "UTC") }}
{{- $_ := set $a "startingDeadline" "24h" }}
{{- end }}
{{- $applications = append $applications $a }}
{{- end }}
{{- /* One toYaml per section keeps them in the order of the documentation. */}}
{{- toYaml (dict "server" $server) }}
{{- with .Values.defaults }}
{{ toYaml (dict "defaults" .) }}
{{- end }}
{{ toYaml (dict "platforms" $platforms) }}
{{ toYaml (dict "applications" $applications) }}
{{- if include "savepointd.ha" . }}
{{- /* The namespace is left to the daemon: the pod's own (POD_NAMESPACE), where the Role allows it. */}}
{{- $election := dict "enabled" true "leaseName" (include "savepointd.leaseName" .) }}
{{- range $field := list "leaseDuration" "renewDeadline" "retryPeriod" }}
{{- with get $.Values.leaderElection $field }}
{{- $_ := set $election $field . }}
{{- end }}
{{- end }}
{{ toYaml (dict "leaderElection" $election) }}
{{- end }}
{{- end }}

{{/* One projected volume per platform that mounts a token, CA or client certificate from a Secret or
ConfigMap. */}}
{{- define "savepointd.platformVolumes" -}}
{{- range $i, $p := .Values.platforms }}
{{- $sources := list }}
{{- with ($p.auth | default dict).existingSecret }}
{{- $sources = append $sources (dict "secret" (dict "name" .name "items" (list (dict "key" .key "path" "token")))) }}
{{- end }}
{{- $tls := $p.tls | default dict }}
{{- with $tls.existingSecret }}
{{- $sources = append $sources (dict "secret" (dict "name" .name "items" (list (dict "key" .key "path" "ca.crt")))) }}
{{- end }}
{{- with $tls.existingConfigMap }}
{{- $sources = append $sources (dict "configMap" (dict "name" .name "items" (list (dict "key" .key "path" "ca.crt")))) }}
{{- end }}
{{- with $tls.clientCertificateSecret }}
{{- $sources = append $sources (dict "secret" (dict "name" .name "items" (list (dict "key" "tls.crt" "path" "client.crt") (dict "key" "tls.key" "path" "client.key")))) }}
{{- end }}
{{- if $sources }}
- name: platform-{{ $i }}
  projected:
    defaultMode: 0440
    sources:
      {{- toYaml $sources | nindent 6 }}
{{- end }}
{{- end }}
{{- end }}

{{- define "savepointd.platformVolumeMounts" -}}
{{- range $i, $p := .Values.platforms }}
{{- $tls := $p.tls | default dict }}
{{- if or ($p.auth | default dict).existingSecret $tls.existingSecret $tls.existingConfigMap $tls.clientCertificateSecret }}
- name: platform-{{ $i }}
  mountPath: {{ include "savepointd.platformDir" (dict "root" $ "platform" $p) }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/*
The pod spec shared by the Deployment (mode daemon: `savepointd run`, probes) and the CronJob
(mode cronjob: `savepointd once`, restartPolicy Never).
*/}}
{{- define "savepointd.podSpec" -}}
{{- $daemon := eq .Values.mode "daemon" -}}
serviceAccountName: {{ include "savepointd.serviceAccountName" . }}
automountServiceAccountToken: true
{{- if not $daemon }}
restartPolicy: Never
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
containers:
  - name: savepointd
    image: {{ include "savepointd.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    {{- $args := list ($daemon | ternary "run" "once") "--config" (include "savepointd.configPath" .) }}
    args:
      {{- toYaml (concat $args ($daemon | ternary .Values.extraArgs .Values.cronjob.extraArgs)) | nindent 6 }}
    env:
      - name: RUST_LOG
        value: {{ .Values.logLevel | quote }}
      {{- if include "savepointd.ha" . }}
      # The replica's name in the Lease, and the namespace the Lease lives in.
      - name: POD_NAME
        valueFrom:
          fieldRef:
            fieldPath: metadata.name
      - name: POD_NAMESPACE
        valueFrom:
          fieldRef:
            fieldPath: metadata.namespace
      {{- end }}
      {{- with .Values.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- if $daemon }}
    ports:
      - name: metrics
        containerPort: {{ include "savepointd.port" . }}
        protocol: TCP
    livenessProbe:
      httpGet:
        path: /healthz
        port: metrics
      periodSeconds: 10
      timeoutSeconds: 2
      failureThreshold: 3
    readinessProbe:
      httpGet:
        path: /readyz
        port: metrics
      periodSeconds: 5
      timeoutSeconds: 2
      failureThreshold: 2
    {{- end }}
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: {{ include "savepointd.configPath" . | dir }}
        readOnly: true
      - name: tmp
        mountPath: /tmp
      {{- with include "savepointd.platformVolumeMounts" . | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- with .Values.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "savepointd.fullname" . }}
  - name: tmp
    emptyDir:
      sizeLimit: 16Mi
  {{- with include "savepointd.platformVolumes" . | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .Values.affinity }}
affinity:
  {{- toYaml .Values.affinity | nindent 2 }}
{{- else if and (include "savepointd.ha" .) (ne .Values.podAntiAffinity "none") }}
# Replicas on different nodes, so that one node's loss leaves a follower to take over.
affinity:
  podAntiAffinity:
    {{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "savepointd.selectorLabels" . | fromYaml)) }}
    {{- if eq .Values.podAntiAffinity "required" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      {{- toYaml (list $term) | nindent 6 }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      {{- toYaml (list (dict "weight" 100 "podAffinityTerm" $term)) | nindent 6 }}
    {{- end }}
{{- end }}
{{- end }}
