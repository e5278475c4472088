//go:build nomesh

package main

import (
	"context"
	"errors"
)

// startFabric without the mesh package (build tag nomesh): the baselines only, for when
// the product does not build.
func startFabric(ctx context.Context, cfg config) (*fabric, error) {
	f, err := bareFabric()
	if err != nil {
		return nil, err
	}
	f.ambitErr = errors.New("built with -tags nomesh")
	return f, nil
}
