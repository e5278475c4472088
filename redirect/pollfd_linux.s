// Present so the compiler accepts pollfd_linux.go's functions without bodies: their
// bodies are the runtime's (go:linkname).
