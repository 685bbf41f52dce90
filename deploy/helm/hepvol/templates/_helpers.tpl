{{/* Names, labels and shared fragments of the hepvol chart. */}}

{{- define "hepvol.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hepvol.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "hepvol.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The enabled drivers, as a list: cvmfs and/or eos. */}}
{{- define "hepvol.drivers" -}}
{{- $found := list -}}
{{- range $driver := list "cvmfs" "eos" -}}
{{- if (index $.Values.drivers $driver).enabled -}}
{{- $found = append $found $driver -}}
{{- end -}}
{{- end -}}
{{- toJson $found -}}
{{- end -}}

{{- define "hepvol.csiName" -}}
{{- printf "%s.csi.cern.ch" . -}}
{{- end -}}

{{- define "hepvol.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{- define "hepvol.targetRoot" -}}
{{- printf "%s/pods" (trimSuffix "/" .Values.kubeletDir) -}}
{{- end -}}

{{/*
/etc/hepvol/config.toml: the keys of mount_core/config.py. Strings go through
toJson, which yields valid TOML basic strings.
*/}}
{{- define "hepvol.configToml" -}}
{{- $state := printf "%s/" (trimSuffix "/" .Values.hepvol.stateDir) -}}
{{- $mounts := printf "%s/" (trimSuffix "/" .Values.hepvol.mountRoot) -}}
{{- if or (hasPrefix $state $mounts) (hasPrefix $mounts $state) -}}
{{- fail (printf "hepvol.mountRoot (%s) must lie outside hepvol.stateDir (%s) and not contain it: the node pod would keep hidden copies of the host's mounts; e.g. mountRoot: /var/lib/hepvol-mounts" .Values.hepvol.mountRoot .Values.hepvol.stateDir) -}}
{{- end -}}
state_dir = {{ .Values.hepvol.stateDir | toJson }}
mount_root = {{ .Values.hepvol.mountRoot | toJson }}
server_cgroups = [{{ with .Values.hepvol.serverCgroup }}{{ . | toJson }}{{ end }}]
target_roots = [{{ include "hepvol.targetRoot" . | toJson }}]
idle_unmount_seconds = {{ .Values.hepvol.idleUnmountSeconds }}
health_interval_seconds = {{ .Values.hepvol.healthIntervalSeconds }}
mount_timeout_seconds = {{ .Values.hepvol.mountTimeoutSeconds }}
lock_timeout_seconds = {{ .Values.hepvol.lockTimeoutSeconds }}
probe_timeout_seconds = {{ .Values.hepvol.probeTimeoutSeconds }}
log_level = {{ .Values.hepvol.logLevel | toJson }}

[local]
root = {{ .Values.local.root | toJson }}

# A disabled driver keeps the embedded client, so its real one need not be installed.
[cvmfs]
client = {{ ternary .Values.cvmfs.client "local" .Values.drivers.cvmfs.enabled | toJson }}
automount = {{ and .Values.drivers.cvmfs.enabled .Values.cvmfs.automount }}
automount_timeout_seconds = {{ .Values.cvmfs.automountTimeoutSeconds }}
root = {{ .Values.cvmfs.root | toJson }}

[eos]
client = {{ ternary .Values.eos.client "local" .Values.drivers.eos.enabled | toJson }}
{{- range .Values.eos.instances }}

[[eos.instances]]
{{- range $key, $value := . }}
{{- if kindIs "map" $value }}
{{ $key }} = { {{- range $i, $k := keys $value | sortAlpha }}{{ if $i }},{{ end }} {{ $k }} = {{ index $value $k | toJson }}{{- end }} }
{{- else }}
{{ $key }} = {{ $value | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Update strategy of the node DaemonSets.

RollingUpdate, one node at a time, is safe because nothing a consumer holds is
owned by the pod being replaced: the ledger lives on a hostPath, every backing
mount and bind target lives in the host's mount table (Bidirectional
propagation, mount root outside the state dir so the pod holds no hidden copies
of them), and the FUSE servers run in the host's PID namespace and in the
host cgroup hepvol.serverCgroup, so neither the pod's cgroup nor its PID
namespace takes them along. The new pod's start-up reconcile() adopts them.
Running pods keep reading through a restart, upgrade, SIGKILL or kubelet
restart (tests/k8s/test_restarts.py counts the reads); OnDelete buys nothing.
*/}}
{{- define "hepvol.updateStrategy" -}}
{{- toYaml .Values.node.updateStrategy -}}
{{- end -}}
