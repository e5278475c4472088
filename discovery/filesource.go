package discovery

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Defaults for FileSourceConfig.
const (
	DefaultPollInterval = 2 * time.Second
	DefaultDebounce     = 100 * time.Millisecond
)

// FileSourceConfig configures a FileSource.
type FileSourceConfig struct {
	Path    string
	Options EnrollmentOptions
	// PolicyPath, when set, is a file or a directory of manifests, reloaded with the
	// model: PeerAuthentications and AuthorizationPolicies, waypoint Gateways and their
	// routes, DestinationRules.
	PolicyPath string
	// RootNamespace is the policies' root namespace (policy.DefaultRootNamespace
	// when empty).
	RootNamespace string
	// WaypointClass is the GatewayClass whose Gateways in the manifests are waypoints
	// (DefaultWaypointClass when empty).
	WaypointClass string
	Logger        *slog.Logger // default: discard
	// PollInterval is how often the file is re-read even without a change
	// event: the safety net for missed events (and the only mechanism when
	// inotify is unavailable). Default DefaultPollInterval.
	PollInterval time.Duration
	// Debounce is how long a burst of change events must go quiet before the
	// file is read, so that a half-written file is not loaded. Default
	// DefaultDebounce.
	Debounce time.Duration
}

// FileSource keeps a Store in sync with a mesh model file.
type FileSource struct {
	cfg   FileSourceConfig
	log   *slog.Logger
	store *Store

	// Owned by Run's goroutine.
	applied []byte // content of the snapshot in the store
	seen    []byte // last content read, good or bad
	seenErr string // last read error, to log each failure once
}

// ErrNoPath is returned by NewFileSource when the config has no path.
var ErrNoPath = errors.New("mesh model file path is empty")

// NewFileSource checks cfg and returns a source that publishes into store.
func NewFileSource(cfg FileSourceConfig, store *Store) (*FileSource, error) {
	if cfg.Path == "" {
		return nil, ErrNoPath
	}
	if store == nil {
		return nil, errors.New("mesh model file source: store is nil")
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	cfg.Options = cfg.Options.WithDefaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &FileSource{cfg: cfg, log: log.With("path", cfg.Path), store: store}, nil
}

// Run loads the file into the store (returning the error if that first
// load fails), then reloads it whenever it changes until ctx is done, and
// returns nil. A bad edit is logged and the previous snapshot kept. An
// empty (zero-byte) file is ignored after the first load, since it is most
// likely being rewritten in place; write "{}" for an empty model.
//
// It watches the file's directory rather than the file, so editors that
// write a new file and rename it over the old one, and Kubernetes ConfigMap
// volumes that swap a "..data" symlink, are both seen. Content is compared,
// so spurious events cost one read.
func (f *FileSource) Run(ctx context.Context) error {
	// Watch before the first read so that no change slips in between.
	w := f.watch()
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if w != nil {
		defer w.Close()
		events, watchErrs = w.Events, w.Errors
	}

	model, policies, err := f.read()
	if err != nil {
		return err
	}
	snap, err := f.parse(model, policies)
	if err != nil {
		return err
	}
	f.publish(fingerprint(model, policies), snap)

	poll := time.NewTicker(f.cfg.PollInterval)
	defer poll.Stop()
	debounce := time.NewTimer(f.cfg.Debounce)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			debounce.Reset(f.cfg.Debounce)
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			f.log.Warn("mesh model file watch error", "error", err)
		case <-debounce.C:
			f.reload()
		case <-poll.C:
			f.reload()
		}
	}
}

// watch starts watching the file's directory, or returns nil (after
// logging) so that Run falls back to polling.
func (f *FileSource) watch() *fsnotify.Watcher {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		f.log.Warn("mesh model file watch unavailable, polling only", "error", err)
		return nil
	}
	dirs := []string{filepath.Dir(f.cfg.Path)}
	if p := f.cfg.PolicyPath; p != "" {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			dirs = append(dirs, p)
		} else {
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			f.log.Warn("mesh model file watch unavailable, polling only", "error", err)
			w.Close()
			return nil
		}
	}
	return w
}

// read reads the model file and the policy files.
func (f *FileSource) read() ([]byte, []policyFile, error) {
	model, err := os.ReadFile(f.cfg.Path)
	if err != nil {
		return nil, nil, fmt.Errorf("read mesh model: %w", err)
	}
	if f.cfg.PolicyPath == "" {
		return model, nil, nil
	}
	policies, err := readPolicyFiles(f.cfg.PolicyPath)
	return model, policies, err
}

// parse builds the snapshot of the model and the policies.
func (f *FileSource) parse(model []byte, policies []policyFile) (*Snapshot, error) {
	m, err := parseManifests(policies, f.cfg.RootNamespace, cmp.Or(f.cfg.WaypointClass, DefaultWaypointClass))
	if err != nil {
		return nil, err
	}
	for _, p := range m.policyProblems {
		f.log.Error("policy refused, failing closed", "error", p)
	}
	snap, err := parse(f.cfg.Path, model, f.cfg.Options, m)
	if err != nil {
		return nil, err
	}
	for _, p := range snap.WaypointProblems {
		f.log.Error("waypoint problem", "error", p)
	}
	for _, p := range snap.TrafficProblems {
		f.log.Error("Istio traffic object left out", "error", p)
	}
	return snap, nil
}

// reload reads the files and publishes them if their content changed and is valid.
func (f *FileSource) reload() {
	model, policies, err := f.read()
	if err != nil {
		if msg := err.Error(); msg != f.seenErr {
			f.seenErr = msg
			f.seen = nil
			f.log.Error("mesh model reload failed, keeping previous model", "error", err)
		}
		return
	}
	f.seenErr = ""
	if len(model) == 0 {
		// Most likely an in-place write between truncate and write; the
		// next event or poll sees the content. An empty model is "{}".
		return
	}
	content := fingerprint(model, policies)
	if f.seen != nil && bytes.Equal(content, f.seen) {
		return
	}
	f.seen = content
	if bytes.Equal(content, f.applied) {
		f.log.Info("mesh model file back to the loaded content", "version", f.store.Load().Version)
		return
	}
	snap, err := f.parse(model, policies)
	if err != nil {
		f.log.Error("mesh model reload failed, keeping previous model", "error", err)
		return
	}
	f.publish(content, snap)
}

func (f *FileSource) publish(data []byte, snap *Snapshot) {
	f.applied, f.seen = data, data
	f.store.Set(snap)
	f.log.Info("mesh model loaded", "version", snap.Version,
		"workloads", len(snap.Workloads), "services", len(snap.Services),
		"namespaces", len(snap.Namespaces), "nodes", len(snap.Nodes),
		"authorizationPolicies", len(snap.Policies.AuthorizationPolicies()),
		"peerAuthentications", len(snap.Policies.PeerAuthentications()),
		"destinationRules", len(snap.DestinationRules))
}
