package spire

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambitmesh/ambit/tests/background"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func wid(ns, sa string) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+sa)
}

// testCA issues SVIDs like a SPIRE server would.
type testCA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	serial atomic.Int64
}

func newCA(tb testing.TB) *testCA {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key}
	ca.serial.Store(100)
	return ca
}

// issued is one SVID as the agent sends it: DER chain (leaf first) + PKCS#8 key.
type issued struct {
	id    spiffeid.ID
	chain [][]byte
	key   []byte
	leaf  *x509.Certificate
}

func (ca *testCA) issue(tb testing.TB, id spiffeid.ID, ttl time.Duration) *issued {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return ca.issueWith(tb, id, ttl, key, nil)
}

// issueWith is issue with the given key; mod may change the template.
func (ca *testCA) issueWith(tb testing.TB, id spiffeid.ID, ttl time.Duration, key crypto.Signer, mod func(*x509.Certificate)) *issued {
	tb.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial.Add(1)),
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
	}
	if mod != nil {
		mod(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return &issued{id: id, chain: [][]byte{der}, key: pk, leaf: leaf}
}

func (i *issued) proto() *delegatedv1.X509SVIDWithKey {
	return &delegatedv1.X509SVIDWithKey{
		X509Svid: &types.X509SVID{
			CertChain: i.chain,
			Id:        &types.SPIFFEID{TrustDomain: i.id.TrustDomain().Name(), Path: i.id.Path()},
			ExpiresAt: i.leaf.NotAfter.Unix(),
		},
		X509SvidKey: i.key,
	}
}

func sels(ss ...string) []*types.Selector {
	out := make([]*types.Selector, len(ss))
	for i, s := range ss {
		typ, v, _ := bytes.Cut([]byte(s), []byte(":"))
		out[i] = &types.Selector{Type: string(typ), Value: string(v)}
	}
	return out
}

// fakeAgent serves the Delegated Identity API and the Workload API like a
// SPIRE agent: entries match a subscription when their selectors are a
// subset of the requested ones.
type fakeAgent struct {
	delegatedv1.UnimplementedDelegatedIdentityServer
	workload.UnimplementedSpiffeWorkloadAPIServer

	adminPath, wlPath string

	mu         sync.Mutex
	entries    map[spiffeid.ID]fakeEntry
	roots      [][]byte
	own        *issued
	firstEmpty bool // send an empty update before the first real one, like SPIRE often does
	deny       int  // refuse that many SVID subscriptions with "no identity issued"
	svidSubs   map[*fakeStream[delegatedv1.SubscribeToX509SVIDsResponse]]bool
	bundleSubs map[*fakeStream[delegatedv1.SubscribeToX509BundlesResponse]]bool
	wlSubs     map[*fakeStream[workload.X509SVIDResponse]]bool
	servers    []*grpc.Server
}

type fakeEntry struct {
	sels []string
	svid *issued
}

// fakeStream is one open subscription.
type fakeStream[R any] struct {
	sels []string // SVID subscriptions: the requested selectors
	q    chan *R  // updates to send, in order
}

func newStream[R any](sels []string) *fakeStream[R] {
	return &fakeStream[R]{sels: sels, q: make(chan *R, 128)}
}

func newFakeAgent(tb testing.TB, ca *testCA, own spiffeid.ID) *fakeAgent {
	tb.Helper()
	dir, err := os.MkdirTemp("", "spirefake") // t.TempDir paths can exceed the unix socket limit
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeAgent{
		adminPath:  filepath.Join(dir, "admin.sock"),
		wlPath:     filepath.Join(dir, "workload.sock"),
		entries:    make(map[spiffeid.ID]fakeEntry),
		roots:      [][]byte{ca.cert.Raw},
		own:        ca.issue(tb, own, time.Hour),
		svidSubs:   make(map[*fakeStream[delegatedv1.SubscribeToX509SVIDsResponse]]bool),
		bundleSubs: make(map[*fakeStream[delegatedv1.SubscribeToX509BundlesResponse]]bool),
		wlSubs:     make(map[*fakeStream[workload.X509SVIDResponse]]bool),
	}
	f.start(tb)
	tb.Cleanup(f.stop)
	return f
}

func (f *fakeAgent) start(tb testing.TB) {
	tb.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range []string{f.adminPath, f.wlPath} {
		os.Remove(p)
		l, err := net.Listen("unix", p)
		if err != nil {
			tb.Fatal(err)
		}
		srv := grpc.NewServer()
		if p == f.adminPath {
			delegatedv1.RegisterDelegatedIdentityServer(srv, f)
		} else {
			workload.RegisterSpiffeWorkloadAPIServer(srv, f)
		}
		f.servers = append(f.servers, srv)
		go srv.Serve(l)
	}
}

// stop is the agent dying: every stream breaks and the sockets go away.
func (f *fakeAgent) stop() {
	f.mu.Lock()
	srvs := f.servers
	f.servers = nil
	f.mu.Unlock()
	for _, s := range srvs {
		s.Stop()
	}
}

func (f *fakeAgent) setEntry(id spiffeid.ID, svid *issued, selectors ...string) {
	f.mu.Lock()
	f.entries[id] = fakeEntry{sels: selectors, svid: svid}
	f.mu.Unlock()
	f.resend()
}

func (f *fakeAgent) deleteEntry(id spiffeid.ID) {
	f.mu.Lock()
	delete(f.entries, id)
	f.mu.Unlock()
	f.resend()
}

// resend pushes the current state to every SVID subscription (a duplicate if unchanged).
func (f *fakeAgent) resend() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for st := range f.svidSubs {
		st.q <- f.stateFor(st.sels)
	}
}

// sendEmpty pushes an update with zero SVIDs to every SVID subscription.
func (f *fakeAgent) sendEmpty() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for st := range f.svidSubs {
		st.q <- &delegatedv1.SubscribeToX509SVIDsResponse{}
	}
}

func (f *fakeAgent) setRoots(roots ...[]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.roots = roots
	for st := range f.bundleSubs {
		st.q <- f.bundles()
	}
	for st := range f.wlSubs {
		st.q <- f.ownSVID()
	}
}

func (f *fakeAgent) setOwn(svid *issued) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.own = svid
	for st := range f.wlSubs {
		st.q <- f.ownSVID()
	}
}

// svidSubscriptions returns the selectors of the open SVID subscriptions.
func (f *fakeAgent) svidSubscriptions() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][]string
	for st := range f.svidSubs {
		out = append(out, st.sels)
	}
	return out
}

// stateFor returns the update for a subscription with selectors req.
func (f *fakeAgent) stateFor(req []string) *delegatedv1.SubscribeToX509SVIDsResponse {
	var svids []*delegatedv1.X509SVIDWithKey
	for _, e := range f.entries {
		if subset(e.sels, req) {
			svids = append(svids, e.svid.proto())
		}
	}
	return &delegatedv1.SubscribeToX509SVIDsResponse{X509Svids: svids}
}

func subset(have, req []string) bool {
	for _, h := range have {
		if !slices.Contains(req, h) {
			return false
		}
	}
	return true
}

func (f *fakeAgent) SubscribeToX509SVIDs(req *delegatedv1.SubscribeToX509SVIDsRequest, stream grpc.ServerStreamingServer[delegatedv1.SubscribeToX509SVIDsResponse]) error {
	var req2 []string
	for _, s := range req.GetSelectors() {
		req2 = append(req2, s.GetType()+":"+s.GetValue())
	}
	st := newStream[delegatedv1.SubscribeToX509SVIDsResponse](req2)
	f.mu.Lock()
	if f.deny > 0 {
		f.deny--
		f.mu.Unlock()
		return status.Error(codes.PermissionDenied, "no identity issued")
	}
	if f.firstEmpty {
		st.q <- &delegatedv1.SubscribeToX509SVIDsResponse{}
	}
	st.q <- f.stateFor(req2)
	return serve(f, f.svidSubs, st, stream)
}

func (f *fakeAgent) SubscribeToX509Bundles(_ *delegatedv1.SubscribeToX509BundlesRequest, stream grpc.ServerStreamingServer[delegatedv1.SubscribeToX509BundlesResponse]) error {
	st := newStream[delegatedv1.SubscribeToX509BundlesResponse](nil)
	f.mu.Lock()
	st.q <- f.bundles()
	return serve(f, f.bundleSubs, st, stream)
}

func (f *fakeAgent) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	st := newStream[workload.X509SVIDResponse](nil)
	f.mu.Lock()
	st.q <- f.ownSVID()
	return serve(f, f.wlSubs, st, stream)
}

// bundles is the bundle update; f.mu must be held.
func (f *fakeAgent) bundles() *delegatedv1.SubscribeToX509BundlesResponse {
	return &delegatedv1.SubscribeToX509BundlesResponse{CaCertificates: map[string][]byte{td.IDString(): bytes.Join(f.roots, nil)}}
}

// ownSVID is the Workload API update; f.mu must be held.
func (f *fakeAgent) ownSVID() *workload.X509SVIDResponse {
	return &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId:    f.own.id.String(),
		X509Svid:    bytes.Join(f.own.chain, nil),
		X509SvidKey: f.own.key,
		Bundle:      bytes.Join(f.roots, nil),
	}}}
}

// serve is called with f.mu held and st's first updates queued: it registers st in
// subs (so no later update is missed), unlocks f.mu and sends st's updates until the
// client goes away.
func serve[R any](f *fakeAgent, subs map[*fakeStream[R]]bool, st *fakeStream[R], stream grpc.ServerStreamingServer[R]) error {
	subs[st] = true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(subs, st)
		f.mu.Unlock()
	}()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case resp := <-st.q:
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
}

// agentWithPodA is a fake agent of a new CA with one entry: pod foo/a (selectors
// k8s:ns:foo and k8s:sa:a) and its SVID a1.
func agentWithPodA(tb testing.TB) (ca *testCA, f *fakeAgent, a spiffeid.ID, a1 *issued) {
	tb.Helper()
	ca = newCA(tb)
	f = newFakeAgent(tb, ca, tunnelID)
	a = wid("foo", "a")
	a1 = ca.issue(tb, a, time.Hour)
	f.setEntry(a, a1, "k8s:ns:foo", "k8s:sa:a")
	return ca, f, a, a1
}

// eventually polls cond until it holds; the bound only keeps a broken test
// from hanging.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	eventuallyWithin(tb, 15*time.Second, what, cond)
}

func eventuallyWithin(tb testing.TB, bound time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runSource starts s.Run and stops it at cleanup, checking it returned nil.
func runSource(tb testing.TB, s *Source) {
	tb.Helper()
	tb.Cleanup(func() { s.Close() }) // after Run has returned
	background.Run(tb, s.Run)
}
