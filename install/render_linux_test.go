package install

import (
	"maps"
	"path"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Paths and names both the chart and the binaries' kube mode rely on.
const (
	caTokenFile = "/var/run/secrets/ambit/token"
	caRootFile  = "/var/run/ambit/ca/root.pem"
	caRootCM    = "ambit-ca-root"
	caAudience  = "ambit-ca"
)

// ztunnelWant is what a rendering must produce for the ztunnel DaemonSet.
type ztunnelWant struct {
	image       string
	args        map[string]string
	caps        []string
	privileged  bool
	propagation corev1.MountPropagationMode
	cgroup      bool
	tolerations []corev1.Toleration
	priority    string
}

// caWant is what a rendering must produce for the CA.
type caWant struct {
	image       string
	args        map[string]string
	persistence bool
}

func TestRender(t *testing.T) {
	tests := []struct {
		name    string
		ns      string
		extra   []string
		ztunnel ztunnelWant
		ca      caWant
	}{{
		name: "defaults",
		ns:   "ambit-system",
		ztunnel: ztunnelWant{
			image: "ghcr.io/ambitmesh/ztunnel:0.1.0",
			args: map[string]string{
				"kube":                    "true",
				"trust-domain":            "cluster.local",
				"enroll-namespace-label":  "istio.io/dataplane-mode=ambient",
				"opt-out-pod-label":       "istio.io/dataplane-mode=none",
				"ca-addr":                 "ambit-ca.ambit-system.svc:15012",
				"ca-token-file":           caTokenFile,
				"ca-root-file":            caRootFile,
				"uplinks":                 "eth0",
				"bpf-pin-path":            "/sys/fs/bpf/ambit",
				"mark":                    "0x400",
				"mark-mask":               "0xf00",
				"route-table":             "133",
				"root-namespace":          "istio-system",
				"waypoint-class":          "istio-waypoint",
				"metrics-addr":            ":15020",
				"readiness-addr":          ":15021",
				"drain-timeout":           "20s",
				"hbone-conns-per-peer":    "4",
				"hbone-pool-idle-timeout": "60s",
				"gomaxprocs":              "auto",
				"datapath":                "fast",
				"max-streams-per-peer":    "32768",
				"max-upstreams-per-peer":  "32768",
				"log-level":               "info",
				"log-json":                "true",
			},
			caps:        []string{"BPF", "NET_ADMIN", "NET_RAW", "PERFMON"},
			propagation: corev1.MountPropagationHostToContainer,
			tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			priority:    "system-node-critical",
		},
		ca: caWant{
			image: "ghcr.io/ambitmesh/ambit-ca:0.1.0",
			args: map[string]string{
				"kube":                    "true",
				"listen":                  ":15012",
				"state-dir":               "/var/lib/ambit-ca",
				"trust-domain":            "cluster.local",
				"leaf-ttl":                "24h",
				"token-audience":          caAudience,
				"ztunnel-service-account": "ambit-system/ambit-ztunnel",
				"root-configmap":          "ambit-system/" + caRootCM,
				"log-level":               "info",
				"log-json":                "true",
			},
		},
	}, {
		name: "overrides",
		ns:   "mesh-system",
		extra: []string{
			"--set", "trustDomain=example.org",
			"--set", "image.tag=v9.9.9,image.pullPolicy=Always",
			"--set", "ztunnel.image.repository=registry.example/zt,ca.image.tag=v1.2.3",
			"--set", "ztunnel.uplinks={eth1,bond0}",
			"--set", "ztunnel.mark=65536,ztunnel.markMask=983040,ztunnel.routeTable=200",
			"--set", "ztunnel.bpf.pinDir=mesh",
			"--set", "ztunnel.cgroup.mount=true",
			"--set", "ztunnel.priorityClassName=mesh-critical",
			"--set", "ztunnel.tolerations[0].key=dedicated,ztunnel.tolerations[0].operator=Equal,ztunnel.tolerations[0].value=mesh,ztunnel.tolerations[0].effect=NoSchedule",
			"--set", "ztunnel.terminationGracePeriodSeconds=60,ztunnel.drainTimeoutSeconds=45",
			"--set", "ztunnel.hboneConnsPerPeer=2,ztunnel.hbonePoolIdleTimeoutSeconds=300",
			"--set", "ztunnel.goMaxProcs=2",
			"--set", "ztunnel.dataPath=std",
			"--set", "ztunnel.maxStreamsPerPeer=100,ztunnel.maxUpstreamsPerPeer=200",
			"--set", "logging.level=debug,logging.json=false",
			"--set", "enrollment.namespaceLabel.key=mesh.example/enabled,enrollment.namespaceLabel.value=yes",
			// --set would make "true" a boolean, which the schema refuses.
			"--set-string", "enrollment.podOptOutLabel.key=mesh.example/skip,enrollment.podOptOutLabel.value=true",
			"--set", "ca.persistence.enabled=true,ca.persistence.storageClassName=fast,ca.leafTTL=12h",
			"--set", "policy.rootNamespace=mesh-root",
			"--set", "waypoint.gatewayClass=mesh-waypoint",
		},
		ztunnel: ztunnelWant{
			image: "registry.example/zt:v9.9.9",
			args: map[string]string{
				"kube":                    "true",
				"trust-domain":            "example.org",
				"enroll-namespace-label":  "mesh.example/enabled=yes",
				"opt-out-pod-label":       "mesh.example/skip=true",
				"ca-addr":                 "ambit-ca.mesh-system.svc:15012",
				"ca-token-file":           caTokenFile,
				"ca-root-file":            caRootFile,
				"uplinks":                 "eth1,bond0",
				"bpf-pin-path":            "/sys/fs/bpf/mesh",
				"mark":                    "0x10000",
				"mark-mask":               "0xf0000",
				"route-table":             "200",
				"root-namespace":          "mesh-root",
				"waypoint-class":          "mesh-waypoint",
				"metrics-addr":            ":15020",
				"readiness-addr":          ":15021",
				"drain-timeout":           "45s",
				"hbone-conns-per-peer":    "2",
				"hbone-pool-idle-timeout": "300s",
				"gomaxprocs":              "2",
				"datapath":                "std",
				"max-streams-per-peer":    "100",
				"max-upstreams-per-peer":  "200",
				"log-level":               "debug",
				"log-json":                "false",
			},
			caps:        []string{"BPF", "NET_ADMIN", "NET_RAW", "PERFMON"},
			propagation: corev1.MountPropagationHostToContainer,
			cgroup:      true,
			tolerations: []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "mesh", Effect: corev1.TaintEffectNoSchedule}},
			priority:    "mesh-critical",
		},
		ca: caWant{
			image: "ghcr.io/ambitmesh/ambit-ca:v1.2.3",
			args: map[string]string{
				"kube":                    "true",
				"listen":                  ":15012",
				"state-dir":               "/var/lib/ambit-ca",
				"trust-domain":            "example.org",
				"leaf-ttl":                "12h",
				"token-audience":          caAudience,
				"ztunnel-service-account": "mesh-system/ambit-ztunnel",
				"root-configmap":          "mesh-system/" + caRootCM,
				"log-level":               "debug",
				"log-json":                "false",
			},
			persistence: true,
		},
	}, {
		// The documented trade-off: ztunnel mounts bpffs itself, which needs a privileged
		// container (Bidirectional propagation) and SYS_ADMIN.
		name:  "mount bpffs",
		ns:    "ambit-system",
		extra: []string{"--set", "ztunnel.bpf.mountFS=true"},
		ztunnel: ztunnelWant{
			image:       "ghcr.io/ambitmesh/ztunnel:0.1.0",
			caps:        []string{"BPF", "NET_ADMIN", "NET_RAW", "PERFMON", "SYS_ADMIN"},
			privileged:  true,
			propagation: corev1.MountPropagationBidirectional,
			tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			priority:    "system-node-critical",
		},
		ca: caWant{image: "ghcr.io/ambitmesh/ambit-ca:0.1.0"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := mustRender(t, tc.ns, tc.extra...)
			checkObjectSet(t, m, tc.ns, tc.ca.persistence)
			checkLabels(t, m)
			checkZtunnel(t, m, tc.ns, tc.ztunnel)
			checkZtunnelRBAC(t, m, tc.ns)
			checkCA(t, m, tc.ns, tc.ca)
			checkCARBAC(t, m, tc.ns)
			checkWaypointRBAC(t, m)
			checkControllerRBAC(t, m, tc.ns)
			// The controller's tag is the shared one (image.tag), as ztunnel's.
			checkController(t, m, tc.ns, "ghcr.io/ambitmesh/ambit-controller:"+tc.ztunnel.image[strings.LastIndex(tc.ztunnel.image, ":")+1:], nil)
		})
	}
}

// checkObjectSet: exactly the chart's objects, namespaced ones in the release namespace.
func checkObjectSet(t *testing.T, m manifest, ns string, pvc bool) {
	t.Helper()
	want := []string{
		"ClusterRole ambit-ca",
		"ClusterRole ambit-controller",
		"ClusterRole ambit-waypoint",
		"ClusterRole ambit-ztunnel",
		"ClusterRoleBinding ambit-ca",
		"ClusterRoleBinding ambit-controller",
		"ClusterRoleBinding ambit-ztunnel",
		"DaemonSet " + ns + "/ambit-ztunnel",
		"Deployment " + ns + "/ambit-ca",
		"Deployment " + ns + "/ambit-controller",
		"Role " + ns + "/ambit-ca",
		"RoleBinding " + ns + "/ambit-ca",
		"Service " + ns + "/ambit-ca",
		"ServiceAccount " + ns + "/ambit-ca",
		"ServiceAccount " + ns + "/ambit-controller",
		"ServiceAccount " + ns + "/ambit-ztunnel",
	}
	if pvc {
		want = append(want, "PersistentVolumeClaim "+ns+"/ambit-ca")
	}
	sort.Strings(want)
	got := m.titles()
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Errorf("rendered objects:\n got %v\nwant %v", got, want)
	}
}

func checkLabels(t *testing.T, m manifest) {
	t.Helper()
	for _, d := range m.docs {
		l := d.u.GetLabels()
		for _, k := range []string{"app.kubernetes.io/part-of", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart"} {
			if l[k] == "" {
				t.Errorf("%s: no label %s (labels %v)", d.title, k, l)
			}
		}
	}
}

// flagArgs turns ["-a=b", "-c"] into {"a": "b", "c": "true"}; a non-flag or repeated
// argument fails t.
func flagArgs(t *testing.T, who string, args []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, a := range args {
		name, ok := strings.CutPrefix(a, "-")
		if !ok || strings.HasPrefix(name, "-") {
			t.Errorf("%s: argument %q is not of the form -flag or -flag=value", who, a)
			continue
		}
		k, v, hasValue := strings.Cut(name, "=")
		if !hasValue {
			v = "true"
		}
		if _, dup := out[k]; dup {
			t.Errorf("%s: flag -%s given twice", who, k)
		}
		out[k] = v
	}
	return out
}

// checkContainer checks that the pod has exactly one container with image, the flags
// wantArgs (nil: any) and a securityContext with a read-only root filesystem; it returns
// the container, its flags and its securityContext.
func checkContainer(t *testing.T, who string, spec corev1.PodSpec, image string, wantArgs map[string]string) (corev1.Container, map[string]string, *corev1.SecurityContext) {
	t.Helper()
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
		t.Fatalf("%s: want exactly one container, got %d (+%d init)", who, len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	if c.Image != image {
		t.Errorf("%s: image %q, want %q", who, c.Image, image)
	}
	args := flagArgs(t, who, c.Args)
	if wantArgs != nil && !maps.Equal(args, wantArgs) {
		t.Errorf("%s: args\n got %v\nwant %v", who, args, wantArgs)
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("%s: no container securityContext", who)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem is not true", who)
	}
	return c, args, sc
}

func checkZtunnel(t *testing.T, m manifest, ns string, want ztunnelWant) {
	t.Helper()
	ds := find[*appsv1.DaemonSet](t, m, ns, "ambit-ztunnel")
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("ztunnel: hostNetwork is not true")
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("ztunnel: dnsPolicy %q, want %q", spec.DNSPolicy, corev1.DNSClusterFirstWithHostNet)
	}
	if spec.PriorityClassName != want.priority {
		t.Errorf("ztunnel: priorityClassName %q, want %q", spec.PriorityClassName, want.priority)
	}
	if spec.ServiceAccountName != "ambit-ztunnel" {
		t.Errorf("ztunnel: serviceAccountName %q, want ambit-ztunnel", spec.ServiceAccountName)
	}
	if spec.HostPID || spec.HostIPC {
		t.Error("ztunnel: hostPID or hostIPC set; ztunnel needs neither")
	}
	if !slices.Equal(spec.Tolerations, want.tolerations) {
		t.Errorf("ztunnel: tolerations %+v, want %+v", spec.Tolerations, want.tolerations)
	}
	if u := ds.Spec.UpdateStrategy; u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
		u.RollingUpdate.MaxUnavailable == nil || *u.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) {
		t.Errorf("ztunnel: updateStrategy %+v, want RollingUpdate with maxUnavailable 1", u)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g <= 0 {
		t.Error("ztunnel: no terminationGracePeriodSeconds")
	}
	if sel, lbl := ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels; !isSubset(sel, lbl) || len(sel) == 0 {
		t.Errorf("ztunnel: selector %v does not select the pod template's labels %v", sel, lbl)
	}
	for _, k := range []string{"helm.sh/chart", "app.kubernetes.io/version"} {
		if _, ok := ds.Spec.Template.Labels[k]; ok {
			t.Errorf("ztunnel: pod template label %s would roll every node on a chart-only upgrade", k)
		}
	}
	// Security context: root (capabilities of a non-root process are lost at exec) but
	// with exactly the needed capabilities and an immutable root filesystem.
	c, args, sc := checkContainer(t, "ztunnel", spec, want.image, want.args)
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("ztunnel: runAsUser %v, want 0", sc.RunAsUser)
	}
	if sc.Privileged == nil || *sc.Privileged != want.privileged {
		t.Errorf("ztunnel: privileged %v, want %v", sc.Privileged, want.privileged)
	}
	if !want.privileged && (sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation) {
		t.Error("ztunnel: allowPrivilegeEscalation is not false")
	}
	if sc.Capabilities == nil {
		t.Fatal("ztunnel: no capabilities")
	}
	if drop := sc.Capabilities.Drop; !slices.Equal(drop, []corev1.Capability{"ALL"}) {
		t.Errorf("ztunnel: capabilities.drop %v, want [ALL]", drop)
	}
	if add := capNames(sc.Capabilities.Add); !slices.Equal(add, want.caps) {
		t.Errorf("ztunnel: capabilities.add %v, want exactly %v", add, want.caps)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("ztunnel: seccompProfile %+v, want RuntimeDefault", sc.SeccompProfile)
	}

	// NODE_NAME from the downward API.
	var nodeEnv bool
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeEnv = true
		}
	}
	if !nodeEnv {
		t.Errorf("ztunnel: no env NODE_NAME from spec.nodeName (env %+v)", c.Env)
	}

	// Ports and probes.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if !maps.Equal(ports, map[string]int32{"metrics": 15020, "readiness": 15021}) {
		t.Errorf("ztunnel: ports %v, want metrics 15020 and readiness 15021", ports)
	}
	for _, p := range []struct {
		name   string
		probe  *corev1.Probe
		minWin int32 // minimum seconds of failures before the kubelet acts
	}{{"readiness", c.ReadinessProbe, 1}, {"liveness", c.LivenessProbe, 300}} {
		pr := p.probe
		if pr == nil || pr.HTTPGet == nil {
			t.Errorf("ztunnel: %s probe %+v, want httpGet", p.name, pr)
			continue
		}
		if pr.HTTPGet.Path != "/healthz/ready" || pr.HTTPGet.Port != intstr.FromInt32(15021) {
			t.Errorf("ztunnel: %s probe GET %s on %s, want /healthz/ready on 15021", p.name, pr.HTTPGet.Path, pr.HTTPGet.Port.String())
		}
		if win := pr.PeriodSeconds * pr.FailureThreshold; win < p.minWin {
			t.Errorf("ztunnel: %s probe acts after %ds of failures, want at least %ds", p.name, win, p.minWin)
		}
	}

	// Volumes: every mount has its volume, hostPaths are only the bpffs (and cgroup),
	// and the flags point into the mounts.
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, vm := range c.VolumeMounts {
		if _, ok := vols[vm.Name]; !ok {
			t.Errorf("ztunnel: mount %s has no volume", vm.Name)
		}
		mounts[vm.Name] = vm
	}
	wantVols := []string{"bpffs", "ca-root", "ca-token", "tmp"}
	if want.cgroup {
		wantVols = append(wantVols, "cgroup")
		sort.Strings(wantVols)
	}
	if got := slices.Sorted(maps.Keys(vols)); !slices.Equal(got, wantVols) {
		t.Errorf("ztunnel: volumes %v, want %v", got, wantVols)
	}
	if got := slices.Sorted(maps.Keys(mounts)); !slices.Equal(got, wantVols) {
		t.Errorf("ztunnel: mounts %v, want %v", got, wantVols)
	}
	for name, v := range vols {
		if v.HostPath == nil {
			continue
		}
		switch name {
		case "bpffs":
			if v.HostPath.Path != "/sys/fs/bpf" || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
				t.Errorf("ztunnel: bpffs hostPath %+v, want /sys/fs/bpf DirectoryOrCreate", v.HostPath)
			}
			vm := mounts[name]
			if vm.MountPath != "/sys/fs/bpf" || vm.ReadOnly || vm.MountPropagation == nil || *vm.MountPropagation != want.propagation {
				t.Errorf("ztunnel: bpffs mount %+v, want read-write at /sys/fs/bpf with %s propagation", vm, want.propagation)
			}
			if pin := args["bpf-pin-path"]; want.args != nil && !strings.HasPrefix(pin, vm.MountPath+"/") {
				t.Errorf("ztunnel: -bpf-pin-path %q is not inside the bpffs mount %s", pin, vm.MountPath)
			}
		case "cgroup":
			if vm := mounts[name]; !vm.ReadOnly || vm.MountPath != "/sys/fs/cgroup" {
				t.Errorf("ztunnel: cgroup mount %+v, want read-only at /sys/fs/cgroup", vm)
			}
		default:
			t.Errorf("ztunnel: unexpected hostPath volume %s (%s)", name, v.HostPath.Path)
		}
	}
	if v := vols["ca-token"]; v.Projected == nil || len(v.Projected.Sources) != 1 || v.Projected.Sources[0].ServiceAccountToken == nil {
		t.Errorf("ztunnel: ca-token volume %+v, want one projected serviceAccountToken", v)
	} else {
		tok := v.Projected.Sources[0].ServiceAccountToken
		if tok.Audience != caAudience || tok.ExpirationSeconds == nil || *tok.ExpirationSeconds != 3600 {
			t.Errorf("ztunnel: CA token audience %q expiration %v, want %q and 3600", tok.Audience, tok.ExpirationSeconds, caAudience)
		}
		if got := path.Join(mounts["ca-token"].MountPath, tok.Path); got != caTokenFile {
			t.Errorf("ztunnel: the CA token is mounted at %s, want %s", got, caTokenFile)
		}
		if want.args != nil && args["ca-token-file"] != caTokenFile {
			t.Errorf("ztunnel: -ca-token-file %q, the token is at %s", args["ca-token-file"], caTokenFile)
		}
	}
	if v := vols["ca-root"]; v.ConfigMap == nil || v.ConfigMap.Name != caRootCM || len(v.ConfigMap.Items) != 1 {
		t.Errorf("ztunnel: ca-root volume %+v, want ConfigMap %s with one item", v, caRootCM)
	} else {
		it := v.ConfigMap.Items[0]
		if it.Key != "root.pem" || path.Join(mounts["ca-root"].MountPath, it.Path) != caRootFile {
			t.Errorf("ztunnel: ConfigMap key %s mounted at %s, want root.pem at %s", it.Key, path.Join(mounts["ca-root"].MountPath, it.Path), caRootFile)
		}
		if mounts["ca-root"].SubPath != "" {
			t.Error("ztunnel: ca-root mounted with subPath, which never sees a new root")
		}
	}
	for _, name := range []string{"ca-root", "ca-token"} {
		if !mounts[name].ReadOnly {
			t.Errorf("ztunnel: mount %s is not read-only", name)
		}
	}
	if v := vols["tmp"]; v.EmptyDir == nil {
		t.Errorf("ztunnel: tmp volume %+v, want emptyDir", v)
	}
}

func capNames(cs []corev1.Capability) []string {
	var s []string
	for _, c := range cs {
		s = append(s, string(c))
	}
	sort.Strings(s)
	return s
}

func isSubset(sub, super map[string]string) bool {
	for k, v := range sub {
		if super[k] != v {
			return false
		}
	}
	return true
}

// ruleSet flattens RBAC rules to "group/resource[/name]:verb" entries.
func ruleSet(rules []rbacv1.PolicyRule) []string {
	var s []string
	for _, r := range rules {
		names := r.ResourceNames
		if len(names) == 0 {
			names = []string{""}
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, n := range names {
					for _, v := range r.Verbs {
						e := g + "/" + res
						if n != "" {
							e += "/" + n
						}
						s = append(s, e+":"+v)
					}
				}
			}
		}
		if len(r.NonResourceURLs) > 0 {
			s = append(s, "nonResourceURLs:"+strings.Join(r.NonResourceURLs, ","))
		}
	}
	sort.Strings(s)
	return s
}

func checkRules(t *testing.T, who string, rules []rbacv1.PolicyRule, want []string) {
	t.Helper()
	got := ruleSet(rules)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s rules:\n got %v\nwant %v", who, got, want)
	}
	for _, e := range got {
		if strings.Contains(e, "*") || strings.Contains(e, "secrets") {
			t.Errorf("%s grants %s (no wildcards, no secrets)", who, e)
		}
	}
}

func checkBinding(t *testing.T, who string, ref rbacv1.RoleRef, subjects []rbacv1.Subject, kind, name, ns string) {
	t.Helper()
	if ref != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: name}) {
		t.Errorf("%s: roleRef %+v, want %s %s", who, ref, kind, name)
	}
	want := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}}
	if !slices.Equal(subjects, want) {
		t.Errorf("%s: subjects %+v, want %+v", who, subjects, want)
	}
}

func checkZtunnelRBAC(t *testing.T, m manifest, ns string) {
	t.Helper()
	find[*corev1.ServiceAccount](t, m, ns, "ambit-ztunnel")
	cr := find[*rbacv1.ClusterRole](t, m, "", "ambit-ztunnel")
	checkRules(t, "ClusterRole ambit-ztunnel", cr.Rules, []string{
		"/namespaces:get", "/namespaces:list", "/namespaces:watch",
		"/pods:get", "/pods:list", "/pods:watch",
		"/services:get", "/services:list", "/services:watch",
		"/nodes:get", "/nodes:list", "/nodes:watch",
		"discovery.k8s.io/endpointslices:get", "discovery.k8s.io/endpointslices:list", "discovery.k8s.io/endpointslices:watch",
		"security.istio.io/authorizationpolicies:get", "security.istio.io/authorizationpolicies:list", "security.istio.io/authorizationpolicies:watch",
		"security.istio.io/peerauthentications:get", "security.istio.io/peerauthentications:list", "security.istio.io/peerauthentications:watch",
		"gateway.networking.k8s.io/gateways:get", "gateway.networking.k8s.io/gateways:list", "gateway.networking.k8s.io/gateways:watch",
	})
	crb := find[*rbacv1.ClusterRoleBinding](t, m, "", "ambit-ztunnel")
	checkBinding(t, "ClusterRoleBinding ambit-ztunnel", crb.RoleRef, crb.Subjects, "ClusterRole", "ambit-ztunnel", ns)
	if n := count[*rbacv1.Role](m); n != 1 {
		t.Errorf("want only the CA's Role, found %d Roles", n)
	}
}

// checkWaypointRBAC: waypoints read what ztunnel reads, and their routes and
// DestinationRules.
func checkWaypointRBAC(t *testing.T, m manifest) {
	t.Helper()
	cr := find[*rbacv1.ClusterRole](t, m, "", "ambit-waypoint")
	checkRules(t, "ClusterRole ambit-waypoint", cr.Rules, []string{
		"/namespaces:get", "/namespaces:list", "/namespaces:watch",
		"/pods:get", "/pods:list", "/pods:watch",
		"/services:get", "/services:list", "/services:watch",
		"/nodes:get", "/nodes:list", "/nodes:watch",
		"discovery.k8s.io/endpointslices:get", "discovery.k8s.io/endpointslices:list", "discovery.k8s.io/endpointslices:watch",
		"security.istio.io/authorizationpolicies:get", "security.istio.io/authorizationpolicies:list", "security.istio.io/authorizationpolicies:watch",
		"security.istio.io/peerauthentications:get", "security.istio.io/peerauthentications:list", "security.istio.io/peerauthentications:watch",
		"gateway.networking.k8s.io/gateways:get", "gateway.networking.k8s.io/gateways:list", "gateway.networking.k8s.io/gateways:watch",
		"gateway.networking.k8s.io/httproutes:get", "gateway.networking.k8s.io/httproutes:list", "gateway.networking.k8s.io/httproutes:watch",
		"gateway.networking.k8s.io/grpcroutes:get", "gateway.networking.k8s.io/grpcroutes:list", "gateway.networking.k8s.io/grpcroutes:watch",
		"gateway.networking.k8s.io/referencegrants:get", "gateway.networking.k8s.io/referencegrants:list", "gateway.networking.k8s.io/referencegrants:watch",
		"networking.istio.io/destinationrules:get", "networking.istio.io/destinationrules:list", "networking.istio.io/destinationrules:watch",
	})
}

func checkCARBAC(t *testing.T, m manifest, ns string) {
	t.Helper()
	find[*corev1.ServiceAccount](t, m, ns, "ambit-ca")
	cr := find[*rbacv1.ClusterRole](t, m, "", "ambit-ca")
	checkRules(t, "ClusterRole ambit-ca", cr.Rules, []string{
		"authentication.k8s.io/tokenreviews:create",
		"/namespaces:get", "/namespaces:list", "/namespaces:watch",
		"/pods:get", "/pods:list", "/pods:watch",
	})
	crb := find[*rbacv1.ClusterRoleBinding](t, m, "", "ambit-ca")
	checkBinding(t, "ClusterRoleBinding ambit-ca", crb.RoleRef, crb.Subjects, "ClusterRole", "ambit-ca", ns)
	role := find[*rbacv1.Role](t, m, ns, "ambit-ca")
	checkRules(t, "Role ambit-ca", role.Rules, []string{
		"/configmaps:create",
		"/configmaps/" + caRootCM + ":get", "/configmaps/" + caRootCM + ":patch", "/configmaps/" + caRootCM + ":update",
	})
	rb := find[*rbacv1.RoleBinding](t, m, ns, "ambit-ca")
	checkBinding(t, "RoleBinding ambit-ca", rb.RoleRef, rb.Subjects, "Role", "ambit-ca", ns)
}

func checkCA(t *testing.T, m manifest, ns string, want caWant) {
	t.Helper()
	d := find[*appsv1.Deployment](t, m, ns, "ambit-ca")
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
		t.Errorf("ca: replicas %v, want 1", d.Spec.Replicas)
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("ca: strategy %q, want Recreate (one root, never two CA pods)", d.Spec.Strategy.Type)
	}
	spec := d.Spec.Template.Spec
	if spec.ServiceAccountName != "ambit-ca" {
		t.Errorf("ca: serviceAccountName %q", spec.ServiceAccountName)
	}
	if spec.HostNetwork {
		t.Error("ca: hostNetwork set")
	}
	if psc := spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("ca: pod securityContext %+v, want non-root", psc)
	}
	c, args, sc := checkContainer(t, "ca", spec, want.image, want.args)
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("ca: allowPrivilegeEscalation is not false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("ca: privileged")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("ca: capabilities %+v, want drop [ALL] and nothing added", sc.Capabilities)
	}
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 15012 {
		t.Errorf("ca: ports %+v, want 15012", c.Ports)
	}
	if c.ReadinessProbe == nil || c.LivenessProbe == nil {
		t.Error("ca: readiness or liveness probe missing")
	}

	var state *corev1.Volume
	for i, v := range spec.Volumes {
		if v.Name == "state" {
			state = &spec.Volumes[i]
		}
		if v.HostPath != nil {
			t.Errorf("ca: hostPath volume %s", v.Name)
		}
	}
	var stateMount string
	for _, vm := range c.VolumeMounts {
		if vm.Name == "state" {
			stateMount = vm.MountPath
		}
	}
	if want.args != nil && stateMount != args["state-dir"] {
		t.Errorf("ca: state volume mounted at %q, -state-dir is %q", stateMount, args["state-dir"])
	}
	switch {
	case state == nil:
		t.Error("ca: no state volume")
	case want.persistence:
		if state.PersistentVolumeClaim == nil || state.PersistentVolumeClaim.ClaimName != "ambit-ca" {
			t.Errorf("ca: state volume %+v, want PVC ambit-ca", state)
		}
		pvc := find[*corev1.PersistentVolumeClaim](t, m, ns, "ambit-ca")
		if q := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; q.Cmp(resource.MustParse("64Mi")) != 0 {
			t.Errorf("ca: PVC size %s, want 64Mi", q.String())
		}
	default:
		if state.EmptyDir == nil {
			t.Errorf("ca: state volume %+v, want emptyDir", state)
		}
	}

	svc := find[*corev1.Service](t, m, ns, "ambit-ca")
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 15012 || svc.Spec.Ports[0].TargetPort != intstr.FromString(c.Ports[0].Name) {
		t.Errorf("ca: service ports %+v, want 15012 to the container's port %q", svc.Spec.Ports, c.Ports[0].Name)
	}
	if !isSubset(svc.Spec.Selector, d.Spec.Template.Labels) || len(svc.Spec.Selector) == 0 {
		t.Errorf("ca: service selector %v does not select the CA pods %v", svc.Spec.Selector, d.Spec.Template.Labels)
	}
	if !isSubset(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("ca: deployment selector %v does not select its pods %v", d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
	}
}
