package discovery

import (
	"errors"
	"strconv"
	"strings"
)

// FieldError is one validation problem. Build fills Path (and Ref for
// conflicts) with the position in Input, e.g. "workloads[1].ips[0]"; Parse
// adds the file and lines.
type FieldError struct {
	File    string // set by Parse
	Line    int    // set by Parse; 0 when unknown
	Path    string // field path, e.g. "workloads[1].ips[0]"; empty for the whole document
	Msg     string // the problem
	Ref     string // path of the conflicting entry, if any
	RefLine int    // line of Ref, set by Parse
}

// Error formats as "file:line: path: problem (ref, line N)", leaving out
// what is unknown.
func (e *FieldError) Error() string {
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

// fieldErrors collects FieldErrors in order.
type fieldErrors []*FieldError

func (fe *fieldErrors) add(path, msg string) {
	*fe = append(*fe, &FieldError{Path: path, Msg: msg})
}

func (fe *fieldErrors) addRef(path, msg, ref string) {
	*fe = append(*fe, &FieldError{Path: path, Msg: msg, Ref: ref})
}

// err joins the collected errors, or returns nil.
func (fe fieldErrors) err() error {
	if len(fe) == 0 {
		return nil
	}
	errs := make([]error, len(fe))
	for i, e := range fe {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// FieldErrors returns the FieldErrors inside err (as returned by Build,
// Parse or LoadFile), in order.
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if fe, ok := err.(*FieldError); ok {
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
