package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const mib = 1 << 20

func TestStoreCommitIsAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	store, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Commit(func(s *State) error { s.Volumes["a"] = &Volume{ID: "a", Name: "n", Size: 5}; return nil }); err != nil {
		t.Fatal(err)
	}
	refused := errors.New("refused")
	err = store.Commit(func(s *State) error { s.Volumes["a"].Size = 9; s.Volumes["b"] = &Volume{ID: "b"}; return refused })
	if !errors.Is(err, refused) {
		t.Fatalf("Commit returned %v, want the change's error", err)
	}
	reopened, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*Store{"in memory": store, "on disk": reopened} {
		if len(s.State().Volumes) != 1 || s.State().Volumes["a"].Size != 5 || s.State().VolumeByName("n") == nil {
			t.Errorf("%s: state is %+v, want only volume a of size 5", name, s.State().Volumes)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "state.json.tmp")); !os.IsNotExist(err) {
		t.Errorf("state.json.tmp left behind: %v", err)
	}
}

func TestStoreRefusesACorruptStateFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(`{"volumes": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(dir); err == nil || !strings.Contains(err.Error(), "state.json") {
		t.Fatalf("OpenStore of a truncated state.json returned %v, want an error naming it", err)
	}
}

func TestCreateVolumeIsIdempotentByName(t *testing.T) {
	d := newTestDriver(t)
	c := controller{driver: d}
	first := createVolume(t, c, "pvc-1", false, 10*mib, nil)
	again := createVolume(t, c, "pvc-1", false, 10*mib, nil)
	if again.VolumeId != first.VolumeId {
		t.Errorf("the same name made volumes %s and %s", first.VolumeId, again.VolumeId)
	}
	_, err := c.CreateVolume(context.Background(), volumeRequest("pvc-1", true, 10*mib, nil))
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("the same name as Block returned %v, want AlreadyExists", err)
	}
	if info, err := os.Stat(filepath.Join(d.stateDir, first.VolumeId)); err != nil || !info.IsDir() {
		t.Errorf("a Filesystem volume is not the directory <statedir>/<id>: %v", err)
	}
}

// A Filesystem volume holding a sparse disk.img is cloned and restored from a snapshot with the
// same bytes and the holes kept.
func TestFilesystemCloneAndRestoreKeepBytesAndHoles(t *testing.T) {
	d := newTestDriver(t)
	c := controller{driver: d}
	src := createVolume(t, c, "src", false, 64*mib, nil)
	image := filepath.Join(d.stateDir, src.VolumeId, "disk.img")
	data := bytes.Repeat([]byte("cdi-py"), 1000)
	writeAt(t, image, 50*mib, data)
	if err := os.Truncate(image, 100*mib); err != nil {
		t.Fatal(err)
	}
	snap, err := c.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: src.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Snapshot.SizeBytes != 64*mib || !snap.Snapshot.ReadyToUse {
		t.Errorf("snapshot %+v: want size 64 MiB, ready", snap.Snapshot)
	}
	clone := createVolume(t, c, "clone", false, 64*mib, volumeSource(src.VolumeId))
	restored := createVolume(t, c, "restored", false, 128*mib, snapshotSource(snap.Snapshot.SnapshotId))
	for _, v := range []*csi.Volume{clone, restored} {
		if info, err := os.Stat(filepath.Join(d.stateDir, v.VolumeId)); err != nil || info.Mode().Perm() != 0o777 {
			t.Errorf("%s: the volume's directory lost its mode 0777 (%v, %v)", v.VolumeId, info, err)
		}
		copied := filepath.Join(d.stateDir, v.VolumeId, "disk.img")
		if got := readAt(t, copied, 50*mib, len(data)); !bytes.Equal(got, data) {
			t.Errorf("%s: disk.img lost its data", v.VolumeId)
		}
		info, err := os.Stat(copied)
		if err != nil {
			t.Fatal(err)
		}
		if blocks := info.Sys().(*syscall.Stat_t).Blocks * 512; info.Size() != 100*mib || blocks > mib {
			t.Errorf("%s: disk.img is %d bytes using %d on disk, want 100 MiB and sparse", v.VolumeId, info.Size(), blocks)
		}
	}
	_, err = c.CreateVolume(context.Background(), volumeRequest("small", false, 32*mib, volumeSource(src.VolumeId)))
	if status.Code(err) != codes.OutOfRange {
		t.Errorf("a clone smaller than its source returned %v, want OutOfRange", err)
	}
}

// A Block volume goes through its whole life on a real loop device: publish, write through the
// device, snapshot, restore, expand online, unpublish (detaching the loop device), delete.
func TestBlockVolumeOnALoopDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop devices and mounts need root")
	}
	d := newTestDriver(t)
	c, n := controller{driver: d}, node{driver: d}
	ctx := context.Background()
	v := createVolume(t, c, "block", true, 16*mib, nil)
	file := filepath.Join(d.stateDir, v.VolumeId)
	target := filepath.Join(t.TempDir(), "publish", "pod-1")
	blockCap := volumeRequest("", true, 0, nil).VolumeCapabilities[0]
	publish := &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target, VolumeCapability: blockCap}
	if _, err := n.NodePublishVolume(ctx, publish); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(target); detachLoops(file) })
	if _, err := n.NodePublishVolume(ctx, publish); err != nil {
		t.Errorf("publishing again at the same target: %v", err)
	}
	data := []byte("written through the loop device")
	writeAt(t, target, 3*mib, data)
	if got := readAt(t, file, 3*mib, len(data)); !bytes.Equal(got, data) {
		t.Fatalf("<statedir>/<id> holds %q after a write through the published device", got)
	}
	snap, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: v.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	restored := createVolume(t, c, "restored", true, 32*mib, snapshotSource(snap.Snapshot.SnapshotId))
	restoredFile := filepath.Join(d.stateDir, restored.VolumeId)
	if got := readAt(t, restoredFile, 3*mib, len(data)); !bytes.Equal(got, data) {
		t.Errorf("the restored volume holds %q", got)
	}
	if info, _ := os.Stat(restoredFile); info.Size() != 32*mib {
		t.Errorf("the restored volume is %d bytes, want the 32 MiB asked for", info.Size())
	}

	expanded, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.VolumeId,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 48 * mib}})
	if err != nil || !expanded.NodeExpansionRequired {
		t.Fatalf("ControllerExpandVolume: %v, %v (want node expansion required)", expanded, err)
	}
	if _, err := n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: v.VolumeId, VolumePath: target}); err != nil {
		t.Fatal(err)
	}
	if size := deviceSize(t, target); size != 48*mib {
		t.Errorf("the published device is %d bytes after expansion, want 48 MiB", size)
	}

	if _, err := n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if devices, err := loopDevices(file); err != nil || len(devices) > 0 {
		t.Errorf("loop devices %v (%v) still attached after the last unpublish", devices, err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("the target is still there after unpublish: %v", err)
	}
	for _, id := range []string{v.VolumeId, restored.VolumeId} {
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("the deleted volume's file is still there: %v", err)
	}
}

// A Filesystem volume published read-only refuses writes through the target.
func TestReadOnlyPublish(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts need root")
	}
	d := newTestDriver(t)
	v := createVolume(t, controller{driver: d}, "ro", false, mib, nil)
	target := filepath.Join(t.TempDir(), "mount")
	n := node{driver: d}
	_, err := n.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId,
		TargetPath: target, Readonly: true, VolumeCapability: volumeRequest("", false, 0, nil).VolumeCapabilities[0]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(target) })
	err = os.WriteFile(filepath.Join(target, "x"), nil, 0o600)
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing in a read-only volume returned %v, want EROFS", err)
	}
	if _, err := n.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
}

// A volume recorded as published at a target that is no longer mounted (its node was torn down
// without NodeUnpublishVolume) can still be deleted; one still mounted cannot.
func TestDeleteVolumeChecksRecordedTargetsAreStillMounted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts need root")
	}
	d := newTestDriver(t)
	c := controller{driver: d}
	v := createVolume(t, c, "published", false, mib, nil)
	target := filepath.Join(t.TempDir(), "mount")
	_, err := node{driver: d}.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId,
		TargetPath: target, VolumeCapability: volumeRequest("", false, 0, nil).VolumeCapabilities[0]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(target) })
	_, err = c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("deleting a mounted volume returned %v, want FailedPrecondition", err)
	}
	if err := unmountAll(target); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
		t.Errorf("deleting a volume whose target was unmounted behind the driver's back: %v", err)
	}
}

func TestValidIDRefusesPathsOutsideTheStateDirectory(t *testing.T) {
	for _, id := range []string{"", ".", "..", "../etc", "a/b", "snapshots", "state.json", ".hidden", "x.tmp"} {
		if validID(id) {
			t.Errorf("validID(%q) = true", id)
		}
	}
	if !validID("csi-0123abcd") {
		t.Error("validID refuses a kubelet inline volume ID")
	}
}

func newTestDriver(t *testing.T) *driver {
	t.Helper()
	d, err := newDriver(config{name: "hostpath.csi.k8s.io", nodeID: "node-1", stateDir: t.TempDir(), expansion: true})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func volumeRequest(name string, block bool, size int64, source *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	capability := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{
		Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	if block {
		capability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		capability.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}
	}
	return &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{capability},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeContentSource: source}
}

func createVolume(t *testing.T, c controller, name string, block bool, size int64, source *csi.VolumeContentSource) *csi.Volume {
	t.Helper()
	resp, err := c.CreateVolume(context.Background(), volumeRequest(name, block, size, source))
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.Volume
}

func volumeSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

func snapshotSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func writeAt(t *testing.T, path string, offset int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, offset); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, path string, offset int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, offset); err != nil {
		t.Fatal(err)
	}
	return buf
}

func deviceSize(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := f.Seek(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	return size
}
