package main

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/discovery/kube"
	"github.com/ambitmesh/ambit/ztunnel"
)

// kubeModel feeds ztunnel's model from the Kubernetes API.
func kubeModel(deps *ztunnel.Deps, kubeconfig string, opts discovery.EnrollmentOptions, log *slog.Logger) error {
	rc, err := kube.RestConfig(kubeconfig)
	if err != nil {
		return err
	}
	rc.UserAgent = "ambit-ztunnel"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	store := discovery.NewStore()
	src, err := kube.New(kube.Config{Client: client, Options: opts, Logger: log}, store)
	if err != nil {
		return err
	}
	deps.Store = store
	deps.ModelSource = src
	deps.ModelProblems = func() any { return src.Problems() }
	return nil
}
