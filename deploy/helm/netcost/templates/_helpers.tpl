{{/* The objects' name: netcost-agent, as in deploy/base. */}}
{{- define "netcost.fullname" -}}
{{- default "netcost-agent" .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "netcost.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "netcost.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the ServiceAccount to use when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The pods' selector labels: what the DaemonSet, the Service and the monitors select.
In the Kubecost mode, the labels OpenCost discovers network-costs pods by. */}}
{{- define "netcost.selectorLabels" -}}
{{- if .Values.kubecost.enabled -}}
{{- toYaml .Values.kubecost.discoveryLabels -}}
{{- else -}}
app.kubernetes.io/name: {{ include "netcost.fullname" . }}
{{- end -}}
{{- end -}}

{{/* Labels of every object: its name, and what Helm adds. */}}
{{- define "netcost.labels" -}}
app.kubernetes.io/name: {{ include "netcost.fullname" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "netcost.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The name of the metrics port: Kubecost's (http-server) in its mode. */}}
{{- define "netcost.portName" -}}
{{- if .Values.kubecost.enabled -}}http-server{{- else -}}metrics{{- end -}}
{{- end -}}

{{/* config.yaml: the configured values plus what the Kubecost mode and metricsAuth need. */}}
{{- define "netcost.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.kubecost.enabled -}}
{{- $kubecost := dict -}}
{{- if .Values.kubecost.networkCostsConfig -}}
{{- $_ := set $kubecost "config_file" "/etc/network-costs/config.yaml" -}}
{{- end -}}
{{- if not .Values.kubecost.priceGauges -}}
{{- $_ := set $kubecost "price_gauges" false -}}
{{- end -}}
{{- if $kubecost -}}
{{- $_ := set $config "kubecost" (merge $kubecost (default dict $config.kubecost)) -}}
{{- end -}}
{{- end -}}
{{- if .Values.metricsAuth.enabled -}}
{{- $server := dict "tls" (dict "cert_file" "/etc/netcost/tls/tls.crt" "key_file" "/etc/netcost/tls/tls.key") "auth" (dict "kubernetes" true "cache_seconds" .Values.metricsAuth.cacheSeconds) -}}
{{- $_ := set $config "server" (merge $server (default dict $config.server)) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
