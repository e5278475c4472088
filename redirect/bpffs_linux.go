package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

func fsMagic(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Type), nil
}

func onBPFFS(path string) bool {
	m, err := fsMagic(path)
	return err == nil && m == unix.BPF_FS_MAGIC
}

// ensureBPFFS makes dir an existing directory on a bpffs. Under a directory of sysfs (the
// usual /sys/fs/bpf, unmounted), bpffs is mounted on that parent; elsewhere on dir itself.
func ensureBPFFS(dir string) error {
	if onBPFFS(dir) {
		return nil
	}
	parent := filepath.Dir(dir)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if m, err := fsMagic(parent); err == nil && m == unix.SYSFS_MAGIC {
			if err := mountBPFFS(parent); err != nil {
				return err
			}
		}
		if onBPFFS(parent) {
			if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create pin directory %s: %w", dir, err)
			}
			return nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	if onBPFFS(dir) {
		return nil
	}
	return mountBPFFS(dir)
}

func mountBPFFS(dir string) error {
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return nil
}

// isBPFFSMountRoot reports whether dir is the root of its own bpffs mount (one that
// ensureBPFFS may have made), as opposed to a directory inside one.
func isBPFFSMountRoot(dir string) bool {
	if !onBPFFS(dir) {
		return false
	}
	var a, b unix.Stat_t
	if unix.Stat(dir, &a) != nil || unix.Stat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

func unmount(dir string) error {
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount bpffs %s: %w", dir, err)
	}
	return nil
}

// onlyPreloaded reports whether a bpffs root holds nothing but what the kernel puts in
// every new bpffs (bpf_preload's "maps.debug" and "progs.debug"; users cannot create names
// with dots), i.e. nothing of ours or of anybody else.
func onlyPreloaded(ents []os.DirEntry) bool {
	for _, e := range ents {
		if !strings.Contains(e.Name(), ".") {
			return false
		}
	}
	return true
}
