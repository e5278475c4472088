// Package install holds how Ambit is installed: the Helm chart in helm/ambit (ztunnel
// DaemonSet, the ambit-ca Deployment and Service, the ambit-controller Deployment, their
// service accounts and RBAC) and, in install/controller, the waypoint controller.
//
// The package has no Go API; its tests render the chart with the helm binary built by
// tests/tools/build.sh, check the rendered objects' security properties, and apply every
// object to a real kube-apiserver (tests/kube) to prove the server accepts them and that the
// RBAC grants exactly what ztunnel, the CA and the waypoint controller need.
package install
