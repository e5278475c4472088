package discovery

import (
	"os"
	"testing"
)

// FuzzParse checks that Parse never panics and that whatever it accepts is
// a consistent snapshot.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("testdata/mesh.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	for _, tc := range parseErrorCases {
		f.Add([]byte(tc.yaml))
	}
	for _, s := range []string{
		"", "~", "{}", "[]", "---\n---\n", "a: &x [*x]", "workloads: [{name: a, namespace: b, ips: [\"::ffff:1.2.3.4\"]}]",
		"services: [{name: s, namespace: n, ports: [{port: 0x50, targetPort: 0o17}]}]",
		"workloads:\n- {name: a, namespace: n, ips: [198.18.1.1]}\nservices:\n- {name: s, namespace: n, selector: {x: y}, endpoints: [{workload: n/a}]}",
		"\t", "? [a]\n: b", "!!binary x: y", "workloads: [{labels: {? [a]: b}}]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.yaml", data, EnrollmentOptions{})
		if err != nil {
			if s != nil {
				t.Fatal("snapshot returned with an error")
			}
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		for _, w := range s.Workloads {
			if s.WorkloadByUID(w.UID) != w {
				t.Fatalf("workload %s not indexed by UID", w.UID)
			}
			for _, ip := range w.IPs {
				if s.WorkloadByIP(ip) != w {
					t.Fatalf("workload %s not indexed by IP %s", w.UID, ip)
				}
			}
			if w.Enrolled != (w.Protocol == ProtocolHBONE) {
				t.Fatalf("workload %s: Enrolled %v with protocol %s", w.UID, w.Enrolled, w.Protocol)
			}
		}
		for _, svc := range s.Services {
			for _, vip := range svc.VIPs {
				for _, p := range svc.Ports {
					if got, port := s.ServiceByVIP(vip, p.Port); got != svc || port == nil || port.Port != p.Port {
						t.Fatalf("service %s/%s not indexed by %s:%d", svc.Namespace, svc.Name, vip, p.Port)
					}
				}
			}
			for _, ep := range svc.Endpoints {
				if ep.WorkloadUID != "" && s.WorkloadByUID(ep.WorkloadUID) == nil {
					t.Fatalf("endpoint names unknown workload %q", ep.WorkloadUID)
				}
			}
		}
	})
}
