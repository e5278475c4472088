package ztunnel

// Log messages are constant; details go in keyed attributes.
const (
	msgStarted        = "ztunnel started"
	msgDraining       = "draining connections"
	msgAcceptError    = "accept error"
	msgConnection     = "connection closed"
	msgRefused        = "connection refused"
	msgEnrolled       = "pod enrolled"
	msgUnenrolled     = "pod unenrolled"
	msgEnrollError    = "enrollment error"
	msgPlainPodsError = "capture of local pods outside the mesh incomplete"
	msgHTTPError      = "http server error"
	msgUntrustedFwd   = "untrusted forwarded address ignored"
	msgModelUpdated   = "mesh model applied"
	msgCertificateErr = "certificate error"
	msgPolicyShadow   = "policy audit or dry run"
	msgPolicyClosed   = "connection closed by policy"
	msgPolicyWarning  = "policy enforced differently at L4"
)

// Log keys; the access log's are Istio ztunnel's.
const (
	keyNode         = "node"
	keyError        = "error"
	keyOutbound     = "outbound"
	keyInbound      = "inbound"
	keyHBONE        = "hbone"
	keyDirection    = "direction"
	keySrc          = "src.addr"
	keyDst          = "dst.addr"
	keySrcIdentity  = "src.identity"
	keyDstIdentity  = "dst.identity"
	keySrcWorkload  = "src.workload" // the name; the namespace is src.namespace
	keySrcNamespace = "src.namespace"
	keyDstWorkload  = "dst.workload"
	keyDstNamespace = "dst.namespace"
	keyDstService   = "dst.service"
	keyDstHBONE     = "dst.hbone_addr"
	keyDstWaypoint  = "dst.waypoint" // outbound: the waypoint gone through
	keySrcWaypoint  = "src.waypoint" // inbound: the waypoint come from
	keyBytesSent    = "bytes_sent"
	keyBytesRecv    = "bytes_recv"
	keyDuration     = "duration"
	keyReason       = "reason"
	keyPod          = "pod"
	keyIP           = "ip"
	keyIfindex      = "ifindex"
	keyWorkloads    = "workloads"
	keyVersion      = "version"
	keyIdentity     = "identity"
	keyAddr         = "addr"
	keyPolicy       = "policy"   // the deciding policy of a connection to a local pod
	keyDecision     = "decision" // a policy decision
	keyAudit        = "audit"    // AUDIT policies that matched
	keyDryRun       = "dry_run"  // the decision with dry-run policies enforced
	// A connection to a service whose first endpoint did not connect: the endpoints
	// tried (the last one dst.addr, unless all failed), and "ip:port reason" of each
	// that failed.
	keyConnectAttempts = "connect_attempts"
	keyConnectFailures = "connect_failures"
)
