// Package fielderr is the one shape of a validation error in Ambit's
// configuration: a field path, the problem, and where it was written.
package fielderr

import (
	"errors"
	"strconv"
	"strings"
)

// Error is one validation problem. Path is the position in the object, e.g.
// "workloads[1].ips[0]" or "spec.rules[0].from[0].source.ipBlocks[1]"; a
// parser of files fills File and Line.
type Error struct {
	File    string
	Line    int    // 0 when unknown
	Path    string // empty for the whole document
	Msg     string // the problem
	Ref     string // path of the conflicting entry, if any
	RefLine int    // line of Ref, set by a parser
}

// Error formats as "file:line: path: problem (ref, line N)", leaving out
// what is unknown.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Ref != "" {
		b.WriteString(" (")
		b.WriteString(e.Ref)
		if e.RefLine > 0 {
			b.WriteString(", line ")
			b.WriteString(strconv.Itoa(e.RefLine))
		}
		b.WriteByte(')')
	}
	return b.String()
}

// List collects Errors in order.
type List []*Error

// Add records msg at path.
func (l *List) Add(path, msg string) { *l = append(*l, &Error{Path: path, Msg: msg}) }

// AddRef records msg at path, conflicting with ref.
func (l *List) AddRef(path, msg, ref string) {
	*l = append(*l, &Error{Path: path, Msg: msg, Ref: ref})
}

// Err joins the collected errors, or returns nil.
func (l List) Err() error {
	if len(l) == 0 {
		return nil
	}
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// All returns the Errors inside err, in order.
func All(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if fe, ok := err.(*Error); ok {
			out = append(out, fe)
			return
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}
