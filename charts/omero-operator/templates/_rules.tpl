{{- /*
The operator's permissions: exactly the list in src/rbac.rs (a test renders this chart and
compares). Adding a permission is one rule there and one here, each with its reason.
*/ -}}

{{- /* In every watched namespace: a Role there, or a ClusterRole when watching all. */ -}}
{{- define "omero-operator.watchedRules" -}}
# The controller's watch of OmeroClusters (a reconcile reads the watch's copy, never a GET).
- apiGroups: [omero.openmicroscopy.org]
  resources: [omeroclusters]
  verbs: [list, watch]
# Status is replaced with a resourceVersion precondition (a stale reconcile writes nothing).
- apiGroups: [omero.openmicroscopy.org]
  resources: [omeroclusters/status]
  verbs: [update]
# One per node: watched into a cache (the operator's whole, every one's metadata, where a
# name is looked up before creating), server-side apply (patch; an apply that creates is
# authorized as create too), deleted once its node left the spec and is drained.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
# One per node and the entry Service: as for deployments.
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch, delete]
# The session counter's script, one per cluster that has sessionCounter: as for services.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch, create, patch, delete]
# The nodes' pods, watched into a cache; the routable label is patched on the pod (drains);
# a drained node's pod is deleted to move it off a cordoned Kubernetes node.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch, delete]
# One PodDisruptionBudget per node: as for services.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
# The database password named by spec.database, read by GET for the session probe and the
# grid redirect. Never list or watch: the operator does not cache Secrets.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on OmeroClusters: kube's Recorder creates one and patches it when it repeats.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{- /* In the release's own namespace only, whatever is watched. */ -}}
{{- define "omero-operator.ownRules" -}}
# Leader election (kube-lease-manager): reads the Lease, creates it once, takes and renews it.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, patch]
{{- end -}}

{{- /* Cluster-scoped resources, in both modes; each switched by its value. */ -}}
{{- define "omero-operator.clusterRules" -}}
{{- if .Values.crd.apply }}
# The operator applies its own CRD at start (Helm never upgrades crds/): reads its version,
# applies it when older or absent (an apply that creates is authorized as create too). This
# CRD only.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  resourceNames: [omeroclusters.omero.openmicroscopy.org]
  verbs: [get, create, patch]
{{- end }}
{{- if eq (include "omero-operator.watchNodes" .) "true" }}
# Kubernetes Nodes, watched into a cache (maintenance.watchNodes): a cordon moves the OMERO
# nodes on it. Read only.
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
{{- end }}
{{- end -}}


{{- /* maintenance.watchNodes, its default resolved: on when watching every namespace. */ -}}
{{- define "omero-operator.watchNodes" -}}
{{- $watch := .Values.maintenance.watchNodes -}}
{{- if kindIs "invalid" $watch -}}
{{- not .Values.watchNamespace -}}
{{- else -}}
{{- $watch -}}
{{- end -}}
{{- end -}}

{{- /*
The people who use OmeroClusters: the rules of the two ClusterRoles aggregated into the
built-in view, edit and admin roles (user-roles.yaml). Exactly USER_RULES in src/rbac.rs
(the same test compares them); what each `kubectl omero` command needs is PLUGIN_COMMANDS
there. No status writes: the status is the operator's record.
*/ -}}

{{- define "omero-operator.viewRules" -}}
# `kubectl get omc` (and -w); `kubectl omero status` and `wait` read the cluster, name the
# ones there are when the name is wrong, and `wait` follows it by a watch.
- apiGroups: [omero.openmicroscopy.org]
  resources: [omeroclusters]
  verbs: [get, list, watch]
# The status subresource alone (`kubectl get omc NAME --subresource=status`); read only.
- apiGroups: [omero.openmicroscopy.org]
  resources: [omeroclusters/status]
  verbs: [get]
{{- end -}}

{{- define "omero-operator.editRules" -}}
# Applying, editing and deleting clusters, and every `kubectl omero` command (each patches
# its request annotations after reading the cluster, then follows it by a watch). The read
# verbs too, so the role also works bound on its own.
- apiGroups: [omero.openmicroscopy.org]
  resources: [omeroclusters]
  verbs: [get, list, watch, create, update, patch, delete, deletecollection]
{{- end -}}
