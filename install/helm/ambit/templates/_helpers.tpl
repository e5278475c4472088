{{/* Labels every object carries. */}}
{{- define "ambit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: ambit
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of pod templates: no chart or app version, so upgrading the chart alone does
not roll every ztunnel (which ends the node's captured connections). */}}
{{- define "ambit.podLabels" -}}
app.kubernetes.io/part-of: ambit
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of a component; call with (dict "root" $ "component" "ztunnel"). */}}
{{- define "ambit.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "ambit-%s" .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Image reference of a component; call with (dict "root" $ "image" .Values.ztunnel.image). */}}
{{- define "ambit.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end }}

{{/* Address ztunnel dials for the CA: its Service in the release namespace. */}}
{{- define "ambit.caAddr" -}}
{{- printf "ambit-ca.%s.svc:15012" .Release.Namespace -}}
{{- end }}

{{/* Checks of values that a JSON schema cannot express; fail with a message naming them. */}}
{{- define "ambit.validate" -}}
{{- $z := .Values.ztunnel -}}
{{- if ge (int $z.drainTimeoutSeconds) (int $z.terminationGracePeriodSeconds) -}}
{{- fail (printf "ztunnel.drainTimeoutSeconds (%d) must be less than ztunnel.terminationGracePeriodSeconds (%d), or the kubelet kills ztunnel while it drains" (int $z.drainTimeoutSeconds) (int $z.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- if and (ge (int64 $z.routeTable) 253) (le (int64 $z.routeTable) 255) -}}
{{- fail (printf "ztunnel.routeTable %d is one of the kernel's own tables (253 default, 254 main, 255 local); pick another, e.g. 133" (int64 $z.routeTable)) -}}
{{- end -}}
{{- end }}
