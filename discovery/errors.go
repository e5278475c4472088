package discovery

import "github.com/ambitmesh/ambit/internal/fielderr"

// FieldError is one validation problem. Build fills Path (and Ref for
// conflicts) with the position in Input, e.g. "workloads[1].ips[0]"; Parse
// adds the file and lines.
type FieldError = fielderr.Error

// fieldErrors collects FieldErrors in order.
type fieldErrors = fielderr.List

// FieldErrors returns the FieldErrors inside err (as returned by Build,
// Parse or LoadFile), in order.
func FieldErrors(err error) []*FieldError { return fielderr.All(err) }
