package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// isMountPoint tells whether path is the mount point of some mount in /proc/self/mountinfo
// (a bind mount of a directory or a file shows there like any other). mountinfo names mount
// points without symlinks, so path is resolved first.
func isMountPoint(path string) (bool, error) {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) > 4 && unescapeMountPath(fields[4]) == path {
			return true, nil
		}
	}
	return false, scanner.Err()
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space, \011, \012, \134).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// bindMount mounts source (a directory, or a device node onto a file) at target, then remounts
// it read-only if asked: a bind mount ignores MS_RDONLY on its first mount call.
func bindMount(source, target string, readOnly bool) error {
	if err := syscall.Mount(source, target, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s on %s: %w", source, target, err)
	}
	if !readOnly {
		return nil
	}
	flags := uintptr(syscall.MS_BIND | syscall.MS_REMOUNT | syscall.MS_RDONLY)
	if err := syscall.Mount("", target, "", flags, ""); err != nil {
		syscall.Unmount(target, 0)
		return fmt.Errorf("making %s read-only: %w", target, err)
	}
	return nil
}

// unmountAll unmounts target until it is no longer a mount point (a target mounted twice by a
// crashed earlier attempt needs two).
func unmountAll(target string) error {
	for i := 0; i < 8; i++ {
		mounted, err := isMountPoint(target)
		if err != nil || !mounted {
			return err
		}
		if err := syscall.Unmount(target, 0); err != nil && !errors.Is(err, syscall.EINVAL) {
			return fmt.Errorf("unmounting %s: %w", target, err)
		}
	}
	return fmt.Errorf("%s is still mounted after 8 unmounts", target)
}

// loopDevices lists the loop devices that have file attached.
func loopDevices(file string) ([]string, error) {
	out, err := run("losetup", "--noheadings", "--output", "NAME", "--associated", file)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// attachLoop returns a loop device for file: the one already attached, else a new one.
func attachLoop(file string) (string, error) {
	devices, err := loopDevices(file)
	if err != nil {
		return "", err
	}
	if len(devices) > 0 {
		return devices[0], nil
	}
	out, err := run("losetup", "--find", "--show", file)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// detachLoops detaches every loop device file is attached to.
func detachLoops(file string) error {
	devices, err := loopDevices(file)
	if err != nil {
		return err
	}
	for _, dev := range devices {
		if _, err := run("losetup", "--detach", dev); err != nil {
			return err
		}
	}
	return nil
}

// refreshLoops makes the loop devices of file take on its new size after it grew.
func refreshLoops(file string) error {
	devices, err := loopDevices(file)
	if err != nil {
		return err
	}
	for _, dev := range devices {
		if _, err := run("losetup", "--set-capacity", dev); err != nil {
			return err
		}
	}
	return nil
}

func run(name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
