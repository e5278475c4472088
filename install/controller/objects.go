package controller

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/internal/serve"
)

// Names, labels and paths of the objects the controller writes.
const (
	// FieldManager is the controller's field manager on every write.
	FieldManager = "ambit-controller"
	// LabelManagedBy = ManagedBy marks every object the controller writes.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "ambit-controller"
	// LabelGatewayClass names the pods' GatewayClass, as Istio labels them.
	LabelGatewayClass = "gateway.networking.k8s.io/gateway-class-name"
	// LabelGatewayNamespace names the Gateway of a ClusterRoleBinding (with
	// discovery.LabelGatewayName): it cannot be owned by the namespaced Gateway.
	LabelGatewayNamespace = "ambitmesh.io/gateway-namespace"
	// AnnotationSpecHash holds the hash of what the controller wrote: an object is
	// updated only when the hash differs (the server defaults fields, so comparing
	// specs would never be equal).
	AnnotationSpecHash = "ambitmesh.io/spec-hash"

	// WaypointClusterRole is the chart's ClusterRole bound to each waypoint's account.
	WaypointClusterRole = "ambit-waypoint"
	// RootConfigMapSuffix names the copy of the CA root in the Gateway's namespace.
	RootConfigMapSuffix = "-ambit-ca-root"
	RootKey             = "root.pem"

	// The CA credential: a projected token of the waypoint's own account for the
	// CA's audience, and the root the CA publishes.
	TokenAudience    = "ambit-ca"
	TokenExpiration  = 3600
	TokenDir         = "/var/run/secrets/ambit"
	TokenFile        = TokenDir + "/token"
	RootDir          = "/var/run/ambit/ca"
	RootFile         = RootDir + "/" + RootKey
	containerName    = "waypoint"
	portNameMesh     = "mesh"
	portNameStatus   = "status-port"
	waypointUID      = 65532
	waypointPortMesh = discovery.WaypointPort
)

// ClusterRoleBindingName is the binding of the waypoint role to Gateway ns/name's
// service account.
func ClusterRoleBindingName(ns, name string) string {
	return WaypointClusterRole + ":" + ns + ":" + name
}

// RootConfigMapName is the root copy of Gateway name.
func RootConfigMapName(name string) string { return name + RootConfigMapSuffix }

// owner is the ownerReference every namespaced object of gw carries.
func owner(gw *gatewayv1.Gateway) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{
		APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway",
		Name: gw.Name, UID: gw.UID, Controller: &yes,
	}
}

// podLabels select the waypoint's pods; ztunnels know the pods by the gateway-name
// label, as in Istio.
func podLabels(gw *gatewayv1.Gateway) map[string]string {
	return map[string]string{
		discovery.LabelGatewayName: gw.Name,
		LabelGatewayClass:          string(gw.Spec.GatewayClassName),
	}
}

func objectLabels(gw *gatewayv1.Gateway) map[string]string {
	l := podLabels(gw)
	l[LabelManagedBy] = ManagedBy
	return l
}

func meta(gw *gatewayv1.Gateway, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: name, Namespace: gw.Namespace, Labels: objectLabels(gw),
		OwnerReferences: []metav1.OwnerReference{owner(gw)},
	}
}

// desired are the objects one Gateway needs.
type desired struct {
	sa      *corev1.ServiceAccount
	root    *corev1.ConfigMap // nil while the CA has not published its root
	deploy  *appsv1.Deployment
	svc     *corev1.Service
	binding *rbacv1.ClusterRoleBinding
}

// build returns gw's objects; rootPEM is the CA's root ("" when not published yet).
func (c Config) build(gw *gatewayv1.Gateway, rootPEM string) desired {
	d := desired{
		sa:  &corev1.ServiceAccount{ObjectMeta: meta(gw, gw.Name)},
		svc: service(gw),
		binding: &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: ClusterRoleBindingName(gw.Namespace, gw.Name), Labels: map[string]string{
				LabelManagedBy: ManagedBy, discovery.LabelGatewayName: gw.Name, LabelGatewayNamespace: gw.Namespace,
			}},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: WaypointClusterRole},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: gw.Namespace, Name: gw.Name}},
		},
		deploy: c.deployment(gw),
	}
	if rootPEM != "" {
		d.root = &corev1.ConfigMap{ObjectMeta: meta(gw, RootConfigMapName(gw.Name)), Data: map[string]string{RootKey: rootPEM}}
	}
	return d
}

func service(gw *gatewayv1.Gateway) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: meta(gw, gw.Name),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: podLabels(gw),
			Ports: []corev1.ServicePort{
				{Name: portNameStatus, Port: serve.PortReadiness, TargetPort: intstr.FromInt32(serve.PortReadiness), Protocol: corev1.ProtocolTCP},
				{Name: portNameMesh, Port: waypointPortMesh, TargetPort: intstr.FromInt32(waypointPortMesh), Protocol: corev1.ProtocolTCP},
			},
		},
	}
}

// waypointArgs is the waypoint process's command line.
func (c Config) waypointArgs(gw *gatewayv1.Gateway) []string {
	args := []string{
		"-kube",
		"-name=" + gw.Name,
		"-namespace=" + gw.Namespace,
		"-service-account=" + gw.Name,
		"-trust-domain=" + c.TrustDomain,
		"-waypoint-class=" + c.WaypointClass,
		"-ca-addr=" + c.CAAddr,
		"-ca-token-file=" + TokenFile,
		"-ca-root-file=" + RootFile,
	}
	return append(args, c.Args...)
}

func (c Config) deployment(gw *gatewayv1.Gateway) *appsv1.Deployment {
	one := int32(1)
	yes, no := true, false
	uid := int64(waypointUID)
	exp := int64(TokenExpiration)
	labels := podLabels(gw)
	return &appsv1.Deployment{
		ObjectMeta: meta(gw, gw.Name),
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: gw.Name,
					// The waypoint reads the model from the API server as its account.
					AutomountServiceAccountToken: &yes,
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot: &yes, RunAsUser: &uid, RunAsGroup: &uid,
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{{
						Name:            containerName,
						Image:           c.Image,
						ImagePullPolicy: c.PullPolicy,
						Args:            c.waypointArgs(gw),
						// The node's locality is the waypoint's, for locality load balancing.
						Env: []corev1.EnvVar{{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"},
						}}},
						Ports: []corev1.ContainerPort{
							{Name: portNameMesh, ContainerPort: waypointPortMesh, Protocol: corev1.ProtocolTCP},
							{Name: portNameStatus, ContainerPort: serve.PortReadiness, Protocol: corev1.ProtocolTCP},
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
								Path: serve.ReadyPath, Port: intstr.FromInt32(serve.PortReadiness),
							}},
							PeriodSeconds: 5,
						},
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot: &yes, ReadOnlyRootFilesystem: &yes,
							AllowPrivilegeEscalation: &no, Privileged: &no,
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "ca-token", MountPath: TokenDir, ReadOnly: true},
							{Name: "ca-root", MountPath: RootDir, ReadOnly: true},
						},
					}},
					Volumes: []corev1.Volume{
						{Name: "ca-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
							Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
								Audience: TokenAudience, ExpirationSeconds: &exp, Path: "token",
							}}},
						}}},
						{Name: "ca-root", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: RootConfigMapName(gw.Name)},
						}}},
					},
				},
			},
		},
	}
}

// specHash is the hash of what the controller writes of an object (labels, owners and
// content), stored in AnnotationSpecHash.
func specHash(parts ...any) string {
	h := sha256.New()
	for _, p := range parts {
		b, err := json.Marshal(p)
		if err != nil {
			// Only the controller's own types are hashed and they marshal; were one not
			// to, hashing the error makes the object look changed, never unchanged.
			b = []byte(err.Error())
		}
		h.Write(b)
		h.Write([]byte(strconv.Itoa(len(b))))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}
