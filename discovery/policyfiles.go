package discovery

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/ambitmesh/ambit/internal/yamldoc"
	"github.com/ambitmesh/ambit/policy"
)

// policyFile is one file of policy manifests.
type policyFile struct {
	name string
	data []byte
}

// readPolicyFiles reads path: one file, or every *.yaml, *.yml and *.json
// file of a directory (not below it), by name.
func readPolicyFiles(path string) ([]policyFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	names := []string{path}
	if fi.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		names = names[:0]
		for _, e := range entries {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
					names = append(names, filepath.Join(path, e.Name()))
				}
			}
		}
		slices.Sort(names)
	}
	files := make([]policyFile, 0, len(names))
	for _, n := range names {
		data, err := os.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		files = append(files, policyFile{name: n, data: data})
	}
	return files, nil
}

// fingerprint is the files' names and contents, to tell a change: the model itself
// when there are no policy files.
func fingerprint(model []byte, files []policyFile) []byte {
	if len(files) == 0 {
		return model
	}
	var b bytes.Buffer
	b.Write(model)
	for _, f := range files {
		b.WriteString("\x00" + f.name + "\x00")
		b.Write(f.data)
	}
	return b.Bytes()
}

// manifests is what the manifest files declare besides the model.
type manifests struct {
	policies         *policy.Set
	policyProblems   []string
	waypoints        []*Waypoint
	waypointProblems []string
	routes           Routes
	destinationRules []*networkingv1.DestinationRule
	trafficProblems  []string
}

// parseManifests decodes the files (none: nothing): Istio security objects,
// waypoint-class Gateways (class; other Gateway API objects are the waypoint's) and
// Istio's DestinationRules. A file that is not YAML fails the whole load (the caller
// keeps what it had); objects that cannot be used are reported, policies failing
// closed, the others left out.
func parseManifests(files []policyFile, root, class string) (manifests, error) {
	var m manifests
	if len(files) == 0 {
		return m, nil
	}
	var authz []*policy.Authorization
	var peer []*policy.PeerAuthentication
	seq := 0
	drFirst := make(map[string]string)
	for _, f := range files {
		objs, err := yamldoc.Objects(f.name, f.data)
		if err != nil {
			return manifests{}, err
		}
		pm, probs := policy.ParseObjects(objs, &seq, GatewayGroup, NetworkingGroup)
		for _, p := range probs {
			m.policyProblems = append(m.policyProblems, p.Error())
		}
		authz = append(authz, pm.Authorizations...)
		peer = append(peer, pm.PeerAuthentications...)
		wps, wprobs := parseGateways(objs, class)
		m.waypoints = append(m.waypoints, wps...)
		m.waypointProblems = append(m.waypointProblems, wprobs...)
		rs, rprobs := parseRoutes(objs)
		m.routes.HTTPRoutes = append(m.routes.HTTPRoutes, rs.HTTPRoutes...)
		m.routes.GRPCRoutes = append(m.routes.GRPCRoutes, rs.GRPCRoutes...)
		m.routes.ReferenceGrants = append(m.routes.ReferenceGrants, rs.ReferenceGrants...)
		m.waypointProblems = append(m.waypointProblems, rprobs...)
		drs, dprobs := parseDestinationRules(objs, drFirst)
		m.destinationRules = append(m.destinationRules, drs...)
		m.trafficProblems = append(m.trafficProblems, dprobs...)
	}
	m.policies = policy.NewSet(root, authz, peer)
	return m, nil
}
