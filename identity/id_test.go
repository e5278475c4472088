package identity_test

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
)

func TestWorkloadID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	tests := []struct {
		name    string
		td      spiffeid.TrustDomain
		ns, sa  string
		want    string
		wantErr bool
	}{
		{name: "ok", td: td, ns: "default", sa: "bookinfo-productpage", want: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"},
		{name: "dots and underscores", td: td, ns: "a.b", sa: "c_d", want: "spiffe://cluster.local/ns/a.b/sa/c_d"},
		{name: "empty trust domain", ns: "default", sa: "x", wantErr: true},
		{name: "empty namespace", td: td, ns: "", sa: "x", wantErr: true},
		{name: "empty service account", td: td, ns: "default", sa: "", wantErr: true},
		{name: "slash in namespace", td: td, ns: "a/b", sa: "x", wantErr: true},
		{name: "dot segment", td: td, ns: "..", sa: "x", wantErr: true},
		{name: "bad char", td: td, ns: "default", sa: "a b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := identity.WorkloadID(tt.td, tt.ns, tt.sa)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("WorkloadID = %s, want error", id)
				}
				return
			}
			if err != nil {
				t.Fatalf("WorkloadID: %v", err)
			}
			if id.String() != tt.want {
				t.Fatalf("WorkloadID = %s, want %s", id, tt.want)
			}
			ns, sa, err := identity.ParseWorkloadID(id)
			if err != nil || ns != tt.ns || sa != tt.sa {
				t.Fatalf("ParseWorkloadID = %q, %q, %v; want %q, %q", ns, sa, err, tt.ns, tt.sa)
			}
		})
	}
}

func TestParseWorkloadID(t *testing.T) {
	tests := []struct {
		id      string
		ns, sa  string
		wantErr bool
	}{
		{id: "spiffe://cluster.local/ns/foo/sa/bar", ns: "foo", sa: "bar"},
		{id: "spiffe://example.org/ns/x/sa/y", ns: "x", sa: "y"},
		{id: "spiffe://cluster.local", wantErr: true},
		{id: "spiffe://cluster.local/ns/foo", wantErr: true},
		{id: "spiffe://cluster.local/ns/foo/sa", wantErr: true},
		{id: "spiffe://cluster.local/ns/foo/sa/bar/extra", wantErr: true},
		{id: "spiffe://cluster.local/namespace/foo/sa/bar", wantErr: true},
		{id: "spiffe://cluster.local/ns/foo/serviceaccount/bar", wantErr: true},
		{id: "spiffe://cluster.local/sa/bar/ns/foo", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			ns, sa, err := identity.ParseWorkloadID(spiffeid.RequireFromString(tt.id))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseWorkloadID = %q, %q, want error", ns, sa)
				}
				return
			}
			if err != nil || ns != tt.ns || sa != tt.sa {
				t.Fatalf("ParseWorkloadID = %q, %q, %v; want %q, %q", ns, sa, err, tt.ns, tt.sa)
			}
		})
	}
	if _, _, err := identity.ParseWorkloadID(spiffeid.ID{}); err == nil {
		t.Fatal("ParseWorkloadID(zero) succeeded, want error")
	}
}
