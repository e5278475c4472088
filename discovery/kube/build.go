package kube

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ambitmesh/ambit/discovery"
)

// maxBuildRounds bounds how many times a build is retried after leaving out
// the objects Build rejected. Each round leaves out at least one more object;
// leaving one out does not make others invalid, so two rounds are the norm.
const maxBuildRounds = 8

// Problem is an event-style status of an object the source could not map as
// is, for the admin view.
type Problem struct {
	Kind      string    `json:"kind"` // Pod, Service, Namespace, EndpointSlice, Node, DestinationRule...
	Namespace string    `json:"namespace,omitempty"`
	Name      string    `json:"name"`
	Reason    string    `json:"reason"`
	Since     time.Time `json:"since"` // first seen by this source
}

func (p Problem) key() Problem { p.Since = time.Time{}; return p }

func compareProblems(a, b Problem) int {
	return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.Namespace, b.Namespace),
		strings.Compare(a.Name, b.Name), strings.Compare(a.Reason, b.Reason))
}

// buildResult is a built model and what was wrong on the way.
type buildResult struct {
	snap     *discovery.Snapshot
	in       discovery.Input
	problems []Problem // sorted, Since zero
}

// build maps objs and builds the snapshot, leaving out every object Build
// rejects (with a Problem) so that one bad object never blocks the model.
func build(objs objects, opts discovery.EnrollmentOptions, domain string) (buildResult, error) {
	excluded := make(map[objKey]string)
	var trafficProblems []string
	for _, p := range objs.trafficProblems {
		trafficProblems = append(trafficProblems, fmt.Sprintf("%s %s/%s: %s", p.Kind, p.Namespace, p.Name, p.Reason))
	}
	for round := 1; ; round++ {
		m := mapObjects(objs, domain, excluded)
		m.in.Policies = objs.policies
		m.in.Waypoints = objs.gateways.Waypoints
		m.in.WaypointProblems = objs.gateways.Problems
		m.in.Routes = objs.gateways.Routes
		m.in.DestinationRules = objs.destinationRules
		m.in.TrafficProblems = trafficProblems
		snap, err := discovery.Build(m.in, opts)
		if err == nil {
			for k, reason := range excluded {
				m.problem(k, reason)
			}
			probs := append(m.problems, objs.policyProblems...)
			probs = append(probs, objs.trafficProblems...)
			slices.SortFunc(probs, compareProblems)
			probs = slices.Compact(probs)
			return buildResult{snap: snap, in: m.in, problems: probs}, nil
		}
		if round == maxBuildRounds {
			return buildResult{}, fmt.Errorf("build mesh model after leaving out %d objects: %w", len(excluded), err)
		}
		progress := false
		for _, fe := range discovery.FieldErrors(err) {
			k, field, ok := m.locate(fe.Path)
			if !ok {
				continue
			}
			msg := fe.Msg
			if field != "" {
				msg = field + ": " + msg
			}
			if prev, done := excluded[k]; done {
				// Several errors on one object of this round: keep them all.
				excluded[k] = prev + "; " + msg
				continue
			}
			excluded[k] = reasonLeftOut + msg
			progress = true
		}
		if !progress {
			return buildResult{}, fmt.Errorf("build mesh model: %w", err)
		}
	}
}

const reasonLeftOut = "left out of the mesh model: "
