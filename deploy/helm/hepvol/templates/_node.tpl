{{/*
What a hepvol node daemon (CSI node plugin or `hepvol watch`) sees of the host.
Called with (dict "root" $ "drivers" (list "cvmfs" "eos")): the drivers it serves.
*/}}

{{- define "hepvol.nodeMounts" -}}
{{- $v := .root.Values -}}
- name: config
  mountPath: /etc/hepvol
  readOnly: true
# The ledger: on the host, so it outlives the pod.
- name: state
  mountPath: {{ $v.hepvol.stateDir }}
# Backing mounts made here must land in the host's mount table (and outlive the pod).
- name: mount-root
  mountPath: {{ $v.hepvol.mountRoot }}
  mountPropagation: Bidirectional
# Targets under kubelet's pods dir: the binds must be visible to kubelet and the runtime.
- name: pods
  mountPath: {{ include "hepvol.targetRoot" .root }}
  mountPropagation: Bidirectional
- name: fuse
  mountPath: /dev/fuse
{{- if $v.hepvol.serverCgroup }}
# The host's cgroup hierarchies: FUSE servers move to hepvol.serverCgroup there.
- name: host-cgroup
  mountPath: /host/sys/fs/cgroup
{{- end }}
{{- if include "hepvol.localRootApart" .root }}
# The embedded backend's repositories, when they live outside the state dir.
- name: local-root
  mountPath: {{ $v.local.root }}
  readOnly: true
{{- end }}
{{- if has "cvmfs" .drivers }}
- name: cvmfs-cache
  mountPath: {{ $v.cvmfs.cacheDir }}
{{- if $v.cvmfs.automount }}
# autofs mode: automount's trigger mounts and the repositories under them.
- name: cvmfs-root
  mountPath: {{ $v.cvmfs.root }}
  mountPropagation: Bidirectional
{{- end }}
{{- if $v.cvmfs.defaultLocal }}
- name: cvmfs-default-local
  mountPath: /etc/cvmfs/default.local
  subPath: default.local
  readOnly: true
{{- end }}
{{- if $v.cvmfs.configD }}
- name: cvmfs-config-d
  mountPath: /etc/cvmfs/config.d
  readOnly: true
{{- end }}
{{- if $v.cvmfs.defaultD }}
- name: cvmfs-default-d
  mountPath: /etc/cvmfs/default.d
  readOnly: true
{{- end }}
{{- end }}
{{- if and (has "eos" .drivers) (or $v.eos.keytab.existingSecret $v.eos.keytab.data) }}
- name: eos-keytab
  mountPath: {{ $v.eos.keytab.path }}
  subPath: {{ $v.eos.keytab.key }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "hepvol.nodeVolumes" -}}
{{- $v := .root.Values -}}
{{- $name := include "hepvol.fullname" .root -}}
- name: config
  configMap:
    name: {{ $name }}-config
- name: state
  hostPath:
    path: {{ $v.hepvol.stateDir }}
    type: DirectoryOrCreate
- name: mount-root
  hostPath:
    path: {{ $v.hepvol.mountRoot }}
    type: DirectoryOrCreate
- name: pods
  hostPath:
    path: {{ include "hepvol.targetRoot" .root }}
    type: DirectoryOrCreate
- name: fuse
  hostPath:
    path: /dev/fuse
    type: CharDevice
{{- if $v.hepvol.serverCgroup }}
- name: host-cgroup
  hostPath:
    path: /sys/fs/cgroup
    type: Directory
{{- end }}
{{- if include "hepvol.localRootApart" .root }}
- name: local-root
  hostPath:
    path: {{ $v.local.root }}
    type: DirectoryOrCreate
{{- end }}
{{- if has "cvmfs" .drivers }}
- name: cvmfs-cache
  hostPath:
    path: {{ $v.cvmfs.cacheDir }}
    type: DirectoryOrCreate
{{- if $v.cvmfs.automount }}
- name: cvmfs-root
  hostPath:
    path: {{ $v.cvmfs.root }}
    type: DirectoryOrCreate
{{- end }}
{{- if $v.cvmfs.defaultLocal }}
- name: cvmfs-default-local
  configMap:
    name: {{ $name }}-cvmfs-default-local
{{- end }}
{{- if $v.cvmfs.configD }}
- name: cvmfs-config-d
  configMap:
    name: {{ $name }}-cvmfs-config-d
{{- end }}
{{- if $v.cvmfs.defaultD }}
- name: cvmfs-default-d
  configMap:
    name: {{ $name }}-cvmfs-default-d
{{- end }}
{{- end }}
{{- if and (has "eos" .drivers) (or $v.eos.keytab.existingSecret $v.eos.keytab.data) }}
- name: eos-keytab
  secret:
    secretName: {{ $v.eos.keytab.existingSecret | default (printf "%s-eos-keytab" $name) }}
    defaultMode: 0400
{{- end }}
{{- end -}}

{{/* "true" when an enabled driver uses the embedded client and its root is not under the state dir. */}}
{{- define "hepvol.localRootApart" -}}
{{- $v := .Values -}}
{{- $local := or (and $v.drivers.cvmfs.enabled (eq $v.cvmfs.client "local")) (and $v.drivers.eos.enabled (eq $v.eos.client "local")) -}}
{{- if and $local (not (hasPrefix (printf "%s/" (trimSuffix "/" $v.hepvol.stateDir)) $v.local.root)) -}}
true
{{- end -}}
{{- end -}}

{{- define "hepvol.podPlacement" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
