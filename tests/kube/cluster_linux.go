package kubetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/tests/tooling"
)

// ServiceCIDR is the cluster's service IP range (--service-cluster-ip-range), outside the
// netns harness's 198.18.0.0/16 but inside the 198.18.0.0/15 the tests may use.
const ServiceCIDR = "198.19.0.0/16"

// ServiceAccountIssuer is the iss claim of service-account tokens.
const ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// DefaultPort is the apiserver's port when BindAddress is not loopback.
const DefaultPort = 6443

// Options configure Start. Zero values take the defaults.
type Options struct {
	// Dir holds certificates, etcd data and the servers' logs; default a temporary directory
	// that Close removes.
	Dir string
	// BindAddress is the apiserver's address (it must exist where the apiserver runs);
	// default 127.0.0.1. etcd always listens on the loopback of the apiserver's namespace.
	BindAddress netip.Addr
	// Port defaults to DefaultPort, or to a free port when BindAddress is loopback.
	Port uint16
	// Command creates the server processes, e.g. a netns's Command; default
	// exec.CommandContext. The process must get the exec'd program's PID (nsenter does).
	Command func(ctx context.Context, name string, args ...string) *exec.Cmd
	// Dial is how this process reaches the servers (e.g. a netns's DialContext); default a
	// net.Dialer in the current namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// ExtraAPIServerArgs are appended to kube-apiserver's flags.
	ExtraAPIServerArgs []string
	// Binaries default to the cached ones (EnsureBinaries must have built them).
	Binaries Binaries
}

// Cluster is a running etcd + kube-apiserver.
type Cluster struct {
	URL         string // https://addr:port
	CACert      []byte // PEM of the CA that signed the serving cert (and the client certs)
	AdminConfig *rest.Config
	Dir         string

	opts     Options
	pki      *pki
	client   kubernetes.Interface
	ws       *tooling.Workspace // its context lives until Close; the servers' commands use it
	etcdPort int
	apiLog   io.Writer
	etcdLog  io.Writer
	apiTail  *netns.TailBuffer
	etcdTail *netns.TailBuffer

	mu        sync.Mutex
	apiserver *tooling.Proc
}

// Start runs etcd and kube-apiserver and waits until the apiserver is ready and the
// "default" namespace exists (~5-10 s). Close it when done.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	ctx, cancel := tooling.WithDefaultTimeout(ctx, startTimeout)
	defer cancel()
	if !opts.BindAddress.IsValid() {
		opts.BindAddress = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	if opts.Command == nil {
		opts.Command = exec.CommandContext
	}
	if opts.Dial == nil {
		opts.Dial = (&net.Dialer{}).DialContext
	}
	if opts.Binaries == (Binaries{}) {
		opts.Binaries = cachedBinaries()
	}
	for _, p := range []string{opts.Binaries.APIServer, opts.Binaries.Etcd} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("find kube test binary (run kubetest.EnsureBinaries or tests/tools/build.sh kube): %w", err)
		}
	}
	if opts.Port == 0 {
		opts.Port = DefaultPort
		if opts.BindAddress.IsLoopback() {
			ports, err := tooling.FreeLoopbackPorts(1)
			if err != nil {
				return nil, err
			}
			opts.Port = uint16(ports[0])
		}
	}

	ws, err := tooling.NewWorkspace(opts.Dir, "kubetest-", stopGrace)
	if err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	c := &Cluster{
		URL:      "https://" + netip.AddrPortFrom(opts.BindAddress, opts.Port).String(),
		Dir:      ws.Dir,
		opts:     opts,
		ws:       ws,
		apiTail:  &netns.TailBuffer{Max: 64 << 10},
		etcdTail: &netns.TailBuffer{Max: 64 << 10},
	}
	defer tooling.CloseOnError(&err, c)
	if err := c.prepare(); err != nil {
		return nil, err
	}
	if err := c.startEtcd(ctx); err != nil {
		return nil, err
	}
	if err := c.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// StartForTest is Start for a test: a cluster that does not start fails tb, and the
// cluster is closed at tb's cleanup, after logging the servers' output if the test failed.
func StartForTest(tb testing.TB, ctx context.Context, opts Options) *Cluster {
	tb.Helper()
	return tooling.StartForTest(tb, "cluster", func() (*Cluster, error) { return Start(ctx, opts) })
}

// prepare writes the credentials and builds the admin client and the apiserver's flags.
func (c *Cluster) prepare() error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return fmt.Errorf("create cluster dir: %w", err)
	}
	p, err := newPKI(c.opts.BindAddress)
	if err != nil {
		return err
	}
	c.pki = p
	c.CACert = p.caPEM
	files := map[string][]byte{
		"ca.crt": p.caPEM, "apiserver.crt": p.servePEM, "apiserver.key": p.serveKey,
		"sa.key": p.saKey, "sa.pub": p.saPub, "admin.crt": p.adminPEM, "admin.key": p.adminKey,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(c.Dir, name), data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	if c.apiLog, err = c.ws.Log(filepath.Join(c.Dir, "kube-apiserver.log"), c.apiTail); err != nil {
		return err
	}
	if c.etcdLog, err = c.ws.Log(filepath.Join(c.Dir, "etcd.log"), c.etcdTail); err != nil {
		return err
	}

	c.AdminConfig = &rest.Config{
		Host: c.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   p.caPEM,
			CertData: p.adminPEM,
			KeyData:  p.adminKey,
		},
		Dial: c.opts.Dial,
		QPS:  -1, // no client-side throttling: tests and the scale benchmark create many objects
	}
	if c.client, err = kubernetes.NewForConfig(c.AdminConfig); err != nil {
		return fmt.Errorf("create admin client: %w", err)
	}
	return nil
}

func (c *Cluster) startEtcd(ctx context.Context) error {
	var lastErr error
	// The ports are probed in this process's namespace; when etcd runs elsewhere a clash is
	// unlikely but possible, so a start that fails is retried on other ports.
	for range 3 {
		ports, err := tooling.FreeLoopbackPorts(2)
		if err != nil {
			return err
		}
		data := filepath.Join(c.Dir, "etcd")
		if err := os.RemoveAll(data); err != nil { // a failed attempt may have left a member
			return fmt.Errorf("clear etcd data: %w", err)
		}
		client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		args := []string{
			"--name=kubetest",
			"--data-dir=" + data,
			"--listen-client-urls=" + client,
			"--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer,
			"--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=kubetest=" + peer,
			"--unsafe-no-fsync", // test data; fsync would dominate start-up and writes
			"--log-level=warn",
		}
		p, err := c.ws.Start("etcd", c.opts.Command(c.ws.Ctx, c.opts.Binaries.Etcd, args...), c.etcdLog)
		if err != nil {
			return err
		}
		// etcd's loopback may be in another namespace than Dial reaches; /proc/<pid>/net
		// shows the sockets of the process's own namespace.
		lastErr = p.WaitFor(ctx, pollInterval, checkTimeout, func(context.Context) error {
			return listening(p.Cmd.Process.Pid, ports[0])
		})
		if lastErr == nil {
			c.etcdPort = ports[0]
			return nil
		}
		_ = p.Stop(syscall.SIGTERM, stopGrace)
		if ctx.Err() != nil || !strings.Contains(c.etcdTail.String(), "address already in use") {
			break
		}
	}
	return fmt.Errorf("start etcd: %w", lastErr)
}

func (c *Cluster) apiServerArgs() []string {
	d := func(name string) string { return filepath.Join(c.Dir, name) }
	bind := c.opts.BindAddress.String()
	args := []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(c.etcdPort),
		"--bind-address=" + bind,
		"--secure-port=" + strconv.Itoa(int(c.opts.Port)),
		"--advertise-address=" + bind,
		// No controller manages the kubernetes Service's endpoints, and 1.37 refuses a
		// loopback advertise address without this.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + d("apiserver.crt"),
		"--tls-private-key-file=" + d("apiserver.key"),
		"--client-ca-file=" + d("ca.crt"),
		"--cert-dir=" + d("apiserver-certs"),
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-account-key-file=" + d("sa.pub"),
		"--service-account-signing-key-file=" + d("sa.key"),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--authorization-mode=RBAC",
		// No controller-manager creates the "default" ServiceAccount the plugin requires.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--profiling=false",
	}
	return append(args, c.opts.ExtraAPIServerArgs...)
}

// StartAPIServer starts the apiserver (after StopAPIServer) and waits until it is ready.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	ctx, cancel := tooling.WithDefaultTimeout(ctx, startTimeout)
	defer cancel()
	c.mu.Lock()
	if c.apiserver != nil && !c.apiserver.Exited() {
		c.mu.Unlock()
		return errors.New("start kube-apiserver: already running")
	}
	p, err := c.ws.Start("kube-apiserver", c.opts.Command(c.ws.Ctx, c.opts.Binaries.APIServer, c.apiServerArgs()...), c.apiLog)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	c.apiserver = p
	c.mu.Unlock()
	if err := p.WaitFor(ctx, pollInterval, checkTimeout, c.ready); err != nil {
		return fmt.Errorf("wait for kube-apiserver at %s: %w", c.URL, err)
	}
	return nil
}

// ready reports nil once /readyz is ok and the "default" namespace exists.
func (c *Cluster) ready(ctx context.Context) error {
	body, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("readyz: %w: %s", err, body)
	}
	if _, err := c.client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{}); err != nil {
		return fmt.Errorf("get namespace default: %w", err)
	}
	return nil
}

// StopAPIServer stops the apiserver with TERM (KILL after a grace period); etcd keeps running.
func (c *Cluster) StopAPIServer() error {
	c.mu.Lock()
	p := c.apiserver
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Stop(syscall.SIGTERM, stopGrace)
}

// RestartAPIServer stops the apiserver and starts it again on the same address and etcd.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	if err := c.StopAPIServer(); err != nil {
		return err
	}
	return c.StartAPIServer(ctx)
}

// Close stops the apiserver, then etcd, and removes Dir if Start created it. Idempotent.
func (c *Cluster) Close() error { return c.ws.Close() }

// Client returns a client with the admin (system:masters) credentials.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// TokenConfig returns a client config authenticating with a bearer token (e.g. from
// ServiceAccountToken), dialing like AdminConfig.
func (c *Cluster) TokenConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            c.URL,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CACert},
		BearerToken:     token,
		Dial:            c.opts.Dial,
		QPS:             -1,
	}
}

// WriteKubeconfig writes a kubeconfig for the cluster that authenticates with token, or with
// the admin client certificate when token is "". The file names the server by URL; the dial
// function of Options does not carry over, so its user must reach URL directly.
func (c *Cluster) WriteKubeconfig(path, token string) error {
	user := &clientcmdapi.AuthInfo{Token: token}
	if token == "" {
		user = &clientcmdapi.AuthInfo{ClientCertificateData: c.pki.adminPEM, ClientKeyData: c.pki.adminKey}
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthorityData: c.CACert}
	cfg.AuthInfos["kubetest"] = user
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "kubetest"}
	cfg.CurrentContext = "kubetest"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// ServiceAccountToken creates the namespace and service account when missing and returns a
// token for it from the TokenRequest API. boundPod, when not "", names a pod ("name" or
// "namespace/name", in namespace) running as that service account; the token is then bound
// to the pod. ttl 0 takes the server's default (1h); the server refuses less than 10 minutes.
//
// Verified on 1.37.2 (TestCluster): a TokenReview of a token bound to a pod with
// spec.nodeName reports user.extra "authentication.kubernetes.io/node-name" (plus pod-name
// and pod-uid), even when no Node object exists; "authentication.kubernetes.io/node-uid" is
// only set when the Node object exists.
func (c *Cluster) ServiceAccountToken(ctx context.Context, namespace, name, boundPod string, ttl time.Duration) (string, error) {
	if namespace == "" || name == "" {
		return "", fmt.Errorf("service account token: namespace %q and name %q must not be empty", namespace, name)
	}
	if ttl < 0 {
		return "", fmt.Errorf("service account token %s/%s: negative ttl %v", namespace, name, ttl)
	}
	_, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	_, err = c.client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create service account %s/%s: %w", namespace, name, err)
	}
	req := &authenticationv1.TokenRequest{}
	if ttl > 0 {
		s := int64(ttl / time.Second)
		req.Spec.ExpirationSeconds = &s
	}
	if boundPod != "" {
		podNS, podName, ok := strings.Cut(boundPod, "/")
		if !ok {
			podNS, podName = namespace, boundPod
		}
		if podNS != namespace || podName == "" {
			return "", fmt.Errorf("service account token %s/%s: bound pod %q must be a pod of namespace %s", namespace, name, boundPod, namespace)
		}
		pod, err := c.client.CoreV1().Pods(namespace).Get(ctx, podName, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("get bound pod %s/%s: %w", namespace, podName, err)
		}
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := c.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request token for service account %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// Logs returns the tail of the apiserver's and etcd's output, for failure messages. The full
// logs are in Dir while the cluster runs.
func (c *Cluster) Logs() string {
	const n = 8 << 10
	var b strings.Builder
	for _, l := range []struct {
		name string
		tail *netns.TailBuffer
	}{{"kube-apiserver", c.apiTail}, {"etcd", c.etcdTail}} {
		s := l.tail.String()
		if s == "" {
			continue
		}
		if len(s) > n {
			s = "..." + s[len(s)-n:]
		}
		fmt.Fprintf(&b, "--- %s output (tail) ---\n%s\n", l.name, s)
	}
	return b.String()
}

// Bounds of the waits for the servers.
const (
	startTimeout = 3 * time.Minute // for servers that neither start nor exit, when the caller gave no deadline
	pollInterval = 100 * time.Millisecond
	checkTimeout = 5 * time.Second
)

// listening reports nil when a TCP socket listens on port in pid's network namespace.
func listening(pid, port int) error {
	want := fmt.Sprintf(":%04X ", port)
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if errors.Is(err, os.ErrNotExist) && f == "tcp6" {
			continue // kernel without IPv6
		}
		if err != nil {
			return fmt.Errorf("read sockets of pid %d: %w", pid, err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st ...; st 0A is LISTEN.
			fields := strings.Fields(line)
			if len(fields) > 3 && strings.HasSuffix(fields[1]+" ", want) && fields[3] == "0A" {
				return nil
			}
		}
	}
	return fmt.Errorf("nothing listens on port %d yet", port)
}

// stopGrace is how long a TERMed server gets before SIGKILL.
const stopGrace = 20 * time.Second
