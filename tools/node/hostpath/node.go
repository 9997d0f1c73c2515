package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ephemeralKey marks a pod's inline volume in NodePublishVolume's volume context.
const ephemeralKey = "csi.storage.k8s.io/ephemeral"

// node is the CSI Node service: it bind-mounts volumes at the paths kubelet gives. There is no
// staging step: a Filesystem volume is already a directory, and a Block volume is attached as a
// loop device when it is first published.
type node struct {
	csi.UnimplementedNodeServer
	*driver
}

func (n node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: n.nodeID, MaxVolumesPerNode: n.maxVolumes,
		AccessibleTopology: n.topology()[0]}, nil
}

func (n node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	types := []csi.NodeServiceCapability_RPC_Type{csi.NodeServiceCapability_RPC_GET_VOLUME_STATS}
	if n.expansion {
		types = append(types, csi.NodeServiceCapability_RPC_EXPAND_VOLUME)
	}
	caps := make([]*csi.NodeServiceCapability, len(types))
	for i, t := range types {
		caps[i] = &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}}
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodePublishVolume bind-mounts a Filesystem volume's directory on the target directory, or a
// Block volume's loop device on the target file, creating the target (the CO creates only its
// parent). Publishing again at the same target with the same mode succeeds.
func (n node) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target := req.GetTargetPath()
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume ID missing")
	case target == "":
		return nil, status.Error(codes.InvalidArgument, "target path missing")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume capability missing")
	}
	block, err := accessType([]*csi.VolumeCapability{req.GetVolumeCapability()})
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if req.GetVolumeContext()[ephemeralKey] == "true" {
		if err := n.ensureEphemeral(req.GetVolumeId(), block); err != nil {
			return nil, err
		}
	}
	v, err := n.volume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if v.Block != block {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s is a %s volume", v.ID, kind(v.Block))
	}
	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	readOnly := req.GetReadonly() || mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY ||
		mode == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	mounted, err := isMountPoint(target)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if mounted {
		if wasReadOnly, ours := v.Published[target]; ours && wasReadOnly == readOnly {
			return &csi.NodePublishVolumeResponse{}, nil
		}
		return nil, status.Errorf(codes.AlreadyExists, "%s is already mounted, not as this request asks", target)
	}
	if err := n.mount(v, target, readOnly); err != nil {
		return nil, err
	}
	err = n.store.Commit(func(s *State) error {
		vol := s.Volumes[v.ID]
		if vol.Published == nil {
			vol.Published = map[string]bool{}
		}
		vol.Published[target] = readOnly
		return nil
	})
	if err != nil {
		unmountAll(target)
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// mount puts volume v at target.
func (n node) mount(v *Volume, target string, readOnly bool) error {
	path := n.volumePath(v.ID)
	if !v.Block {
		if err := os.MkdirAll(target, 0o750); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		return toStatus(bindMount(path, target, readOnly))
	}
	if err := makeFile(target); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	device, err := attachLoop(path)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if err := bindMount(device, target, readOnly); err != nil {
		if len(v.Published) == 0 {
			detachLoops(path)
		}
		return status.Error(codes.Internal, err.Error())
	}
	return nil
}

// makeFile creates an empty file at path (and its parents) unless something is there already.
func makeFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}

// ensureEphemeral creates a pod's inline volume, named by the ID kubelet gives, on its first
// publish: an empty directory (inline volumes are Filesystem only).
func (n node) ensureEphemeral(id string, block bool) error {
	if n.store.State().Volumes[id] != nil {
		return nil
	}
	if block || !validID(id) {
		return status.Errorf(codes.InvalidArgument, "cannot make an inline volume %q of access type %s", id, kind(block))
	}
	if err := createEmpty(n.volumePath(id), false, 0); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return toStatus(n.store.Commit(func(s *State) error {
		s.Volumes[id] = &Volume{ID: id, Ephemeral: true}
		return nil
	}))
}

// NodeUnpublishVolume unmounts and removes the target; with a volume's last target its loop
// device is detached, and an inline volume is deleted. A target that is not there is already
// unpublished.
func (n node) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume ID missing")
	case target == "":
		return nil, status.Error(codes.InvalidArgument, "target path missing")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := unmountAll(target); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	v := n.store.State().Volumes[req.GetVolumeId()]
	if v == nil {
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if _, ok := v.Published[target]; ok {
		err := n.store.Commit(func(s *State) error { delete(s.Volumes[v.ID].Published, target); return nil })
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		v = n.store.State().Volumes[v.ID]
	}
	if len(v.Published) > 0 {
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if v.Ephemeral {
		return &csi.NodeUnpublishVolumeResponse{}, n.removeVolume(v)
	}
	if v.Block {
		if err := detachLoops(n.volumePath(v.ID)); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeExpandVolume makes a Block volume's loop device take on the size its file grew to in
// ControllerExpandVolume; a Filesystem volume (a directory) has nothing to do.
func (n node) NodeExpandVolume(_ context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if !n.expansion {
		return nil, status.Error(codes.Unimplemented, "volume expansion is disabled")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path missing")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	v, err := n.volume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if v.Block {
		if err := refreshLoops(n.volumePath(v.ID)); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: v.Size}, nil
}

// NodeGetVolumeStats reports a published volume's usage: for a directory, its size (as asked
// at creation), the bytes its files take and the free inodes of the state directory's
// filesystem; for a Block volume, its size.
func (n node) NodeGetVolumeStats(_ context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path missing")
	}
	n.mu.Lock()
	v, err := n.volume(req.GetVolumeId())
	var published bool
	if err == nil {
		_, published = v.Published[req.GetVolumePath()]
	}
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if !published {
		return nil, status.Errorf(codes.NotFound, "volume %s is not published at %s", v.ID, req.GetVolumePath())
	}
	if v.Block {
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: v.Size}}}, nil
	}
	path := n.volumePath(v.ID)
	var fs syscall.Statfs_t
	if err := syscall.Statfs(path, &fs); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	used := allocatedBytes(path)
	available := int64(fs.Bavail) * fs.Bsize
	total := used + available
	if v.Size > 0 {
		total = v.Size
		available = min(available, max(v.Size-used, 0))
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: total, Used: used, Available: available},
		{Unit: csi.VolumeUsage_INODES, Total: int64(fs.Files), Used: int64(fs.Files - fs.Ffree), Available: int64(fs.Ffree)},
	}}, nil
}
