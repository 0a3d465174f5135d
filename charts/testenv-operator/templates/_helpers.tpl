{{/*
Names and labels. Kubernetes caps names and label values at 63 characters; every name here is
cut to fit. A name that had to be cut ends in six characters of a hash of the uncut name, so two
long release names that share a prefix still get different cluster-scoped objects.
*/}}

{{/* "testenv-operator.fit" (list STRING MAX): STRING if it fits in MAX characters, else a cut
prefix, "-" and 6 hex digits of sha256(STRING). */}}
{{- define "testenv-operator.fit" -}}
{{- $s := index . 0 -}}
{{- $max := int (index . 1) -}}
{{- if le (len $s) $max -}}
{{- $s -}}
{{- else -}}
{{- printf "%s-%s" ($s | trunc (int (sub $max 7)) | trimSuffix "-") (sha256sum $s | trunc 6) -}}
{{- end -}}
{{- end -}}

{{- define "testenv-operator.name" -}}
{{- include "testenv-operator.fit" (list (default .Chart.Name .Values.nameOverride) 63) -}}
{{- end -}}

{{/* The prefix of every object name: the release name, plus the chart name unless the release
name already contains it. */}}
{{- define "testenv-operator.fullname" -}}
{{- $full := "" -}}
{{- if .Values.fullnameOverride -}}
{{- $full = .Values.fullnameOverride -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- $full = .Release.Name -}}
{{- else -}}
{{- $full = printf "%s-%s" .Release.Name $name -}}
{{- end -}}
{{- end -}}
{{- include "testenv-operator.fit" (list $full 63) -}}
{{- end -}}

{{/* "testenv-operator.suffixed" (list . SUFFIX): "<fullname>-SUFFIX" in at most 63 characters. */}}
{{- define "testenv-operator.suffixed" -}}
{{- $ctx := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $prefix := include "testenv-operator.fullname" $ctx -}}
{{- printf "%s-%s" (include "testenv-operator.fit" (list $prefix (sub 62 (len $suffix)))) $suffix -}}
{{- end -}}

{{- define "testenv-operator.chart" -}}
{{- include "testenv-operator.fit" (list (printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_") 63) -}}
{{- end -}}

{{- define "testenv-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "testenv-operator.name" . }}
app.kubernetes.io/instance: {{ include "testenv-operator.fit" (list .Release.Name 63) }}
{{- end -}}

{{- define "testenv-operator.labels" -}}
helm.sh/chart: {{ include "testenv-operator.chart" . }}
{{ include "testenv-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ include "testenv-operator.fit" (list .Chart.AppVersion 63) | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kube-testenv
{{- end -}}

{{/* Object names. */}}
{{- define "testenv-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "testenv-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "testenv-operator.workerAccessRole" -}}
{{- default (include "testenv-operator.suffixed" (list . "worker-access")) .Values.workerAccess.name -}}
{{- end -}}

{{- define "testenv-operator.pipelineRole" -}}
{{- default (include "testenv-operator.suffixed" (list . "pipeline")) .Values.pipelineRole.name -}}
{{- end -}}

{{- define "testenv-operator.image" -}}
{{- $image := .Values.image -}}
{{- $tag := default .Chart.AppVersion $image.tag -}}
{{- if and $image.digest (not $image.tag) -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else if $image.digest -}}
{{- printf "%s:%s@%s" $image.repository $tag $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
Rules the operator needs on the TestEnvironments it serves (and around them), granted either
cluster-wide or, with watchNamespaces, by a Role in each watched namespace.
*/}}
{{- define "testenv-operator.tenantRules" -}}
# kopf lists and watches TestEnvironments, adds and removes its finalizer and bookkeeping
# annotations (patch); the orphan sweep lists owners to match their UIDs (list); an expired
# environment deletes itself (delete).
- apiGroups: ["testenv.dev"]
  resources: ["testenvironments"]
  verbs: ["list", "watch", "patch", "delete"]
- apiGroups: ["testenv.dev"]
  resources: ["testenvironments/status"]
  verbs: ["patch"]
# TestEnvironmentPools likewise (kopf: list, watch, finalizer and annotations); the orphan sweep
# lists them too, as a pool owns its free workers. The pools' status is the operator's.
- apiGroups: ["testenv.dev"]
  resources: ["testenvironmentpools"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["testenv.dev"]
  resources: ["testenvironmentpools/status"]
  verbs: ["patch"]
# Events on TestEnvironments (Provisioning, Ready, Expired, ...), posted by kopf.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Secrets a TestEnvironment references (env valueFrom, LocalStack auth token), read in the
# environment's own namespace and copied into its worker namespaces.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end -}}

{{/* Impossible value combinations stop the install with a message that says what to change. */}}
{{- define "testenv-operator.validate" -}}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "serviceAccount.create=false needs serviceAccount.name: the name of an existing ServiceAccount for the operator" -}}
{{- end -}}
{{- if and (not .Values.workerAccess.create) (not .Values.workerAccess.name) -}}
{{- fail "workerAccess.create=false needs workerAccess.name: the existing ClusterRole the operator binds to spec.access.subjects" -}}
{{- end -}}
{{- range .Values.pools -}}
{{- if and $.Values.watchNamespaces (not (has .namespace $.Values.watchNamespaces)) -}}
{{- fail (printf "pools: pool %s is in namespace %s, which watchNamespaces leaves out: add it there, or move the pool" .name .namespace) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: without the endpoint there is nothing to scrape" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.livenessPort)) -}}
{{- fail "metrics.port and livenessPort must differ: the operator serves them on two listeners" -}}
{{- end -}}
{{- if and .Values.workerAccess.create .Values.pipelineRole.create (eq (include "testenv-operator.workerAccessRole" .) (include "testenv-operator.pipelineRole" .)) -}}
{{- fail "workerAccess.name and pipelineRole.name must differ: they are two ClusterRoles with different rules" -}}
{{- end -}}
{{- end -}}
