{{- /* As `helm create` makes them: nameOverride replaces the chart's name (in the full name and
the app.kubernetes.io/name label), fullnameOverride the whole full name; both cut to 63
characters, a DNS label. */ -}}
{{- define "omero-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "omero-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* "<full name>-<suffix>" (dict "context" . "suffix" "metrics"), the full name cut so that the
whole is still 63 characters at most: a Service's name must be a DNS label, and every object
of the release is named alike. */ -}}
{{- define "omero-operator.suffixedName" -}}
{{- $fullname := include "omero-operator.fullname" .context -}}
{{- printf "%s-%s" ($fullname | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix -}}
{{- end -}}

{{- define "omero-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "omero-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "omero-operator.labels" -}}
{{ include "omero-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "omero-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "omero-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name the existing ServiceAccount to run as (serviceAccount.create is false)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "omero-operator.leaseName" -}}
{{- default (include "omero-operator.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- /* A digest, when set, pins the image: the tag is left out. */ -}}
{{- define "omero-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}
