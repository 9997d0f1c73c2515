package main

import (
	"context"
	"os"
	"sort"
	"strconv"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// defaultSize is a new volume's size when the CO asks for none.
const defaultSize = 1 << 30

// controller is the CSI Controller service: volumes and snapshots under the state directory.
type controller struct {
	csi.UnimplementedControllerServer
	*driver
}

func (c controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	types := []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	}
	if c.expansion {
		types = append(types, csi.ControllerServiceCapability_RPC_EXPAND_VOLUME)
	}
	caps := make([]*csi.ControllerServiceCapability, len(types))
	for i, t := range types {
		caps[i] = &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}}
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// CreateVolume makes an empty volume, a restore of a snapshot or a clone of a volume. The same
// name asked again gets the same volume, if it still fits the request.
func (c controller) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume name missing")
	}
	block, err := accessType(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	required, limit, err := capacityRange(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	if !c.reachable(req.GetAccessibilityRequirements()) {
		return nil, status.Errorf(codes.ResourceExhausted, "the volume must be reachable from nodes other than %s", c.nodeID)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	source := req.GetVolumeContentSource()
	if v := c.store.State().VolumeByName(req.GetName()); v != nil {
		if v.Block != block || v.Size < required || (limit > 0 && v.Size > limit) || v.Source != sourceKey(source) {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists as %s, which does not fit this request", req.GetName(), v.ID)
		}
		return c.created(v, source), nil
	}
	v := &Volume{ID: newID(), Name: req.GetName(), Block: block, Source: sourceKey(source)}
	if err := c.fill(v, source, required, limit); err != nil {
		return nil, err
	}
	if err := c.store.Commit(func(s *State) error { s.Volumes[v.ID] = v; return nil }); err != nil {
		os.RemoveAll(c.volumePath(v.ID))
		return nil, status.Error(codes.Internal, err.Error())
	}
	return c.created(v, source), nil
}

func (c controller) created(v *Volume, source *csi.VolumeContentSource) *csi.CreateVolumeResponse {
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: v.ID, CapacityBytes: v.Size,
		ContentSource: source, AccessibleTopology: c.topology()}}
}

// fill sizes v and writes its data at its path: a copy of the source, or an empty directory
// or sparse file.
func (c controller) fill(v *Volume, source *csi.VolumeContentSource, required, limit int64) error {
	from, fromBlock, fromSize, err := c.sourceData(source)
	if err != nil {
		return err
	}
	switch {
	case required > 0:
		v.Size = required
	case from != "":
		v.Size = fromSize
	case limit > 0 && limit < defaultSize:
		v.Size = limit
	default:
		v.Size = defaultSize
	}
	path := c.volumePath(v.ID)
	if from == "" {
		return toStatus(createEmpty(path, v.Block, v.Size))
	}
	if fromBlock != v.Block {
		return status.Errorf(codes.InvalidArgument, "the source is a %s volume, the request wants %s", kind(fromBlock), kind(v.Block))
	}
	if v.Size < fromSize || (limit > 0 && limit < fromSize) {
		return status.Errorf(codes.OutOfRange, "the source holds %d bytes, more than the %d asked for", fromSize, v.Size)
	}
	if err := copyPath(from, path); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if v.Block && v.Size > fromSize {
		if err := os.Truncate(path, v.Size); err != nil {
			os.RemoveAll(path)
			return status.Error(codes.Internal, err.Error())
		}
	}
	return nil
}

// sourceData finds what a new volume is copied from: its path, access type and size ("" if the
// volume starts empty).
func (c controller) sourceData(source *csi.VolumeContentSource) (string, bool, int64, error) {
	if id := source.GetSnapshot().GetSnapshotId(); source.GetSnapshot() != nil {
		snap := c.store.State().Snapshots[id]
		if snap == nil {
			return "", false, 0, status.Errorf(codes.NotFound, "no snapshot %q", id)
		}
		return c.snapshotPath(id), snap.Block, snap.Size, nil
	}
	if id := source.GetVolume().GetVolumeId(); source.GetVolume() != nil {
		v := c.store.State().Volumes[id]
		if v == nil {
			return "", false, 0, status.Errorf(codes.NotFound, "no volume %q", id)
		}
		return c.volumePath(id), v.Block, v.Size, nil
	}
	return "", false, 0, nil
}

// sourceKey names a content source, so a repeated CreateVolume can be told from a different one.
func sourceKey(source *csi.VolumeContentSource) string {
	switch {
	case source.GetSnapshot() != nil:
		return "snapshot:" + source.GetSnapshot().GetSnapshotId()
	case source.GetVolume() != nil:
		return "volume:" + source.GetVolume().GetVolumeId()
	}
	return ""
}

// createEmpty makes a new volume's data: a directory anyone may write (pods run as any user, and
// the CSIDriver's fsGroupPolicy lets kubelet hand it to a pod's fsGroup), or a sparse file.
func createEmpty(path string, block bool, size int64) error {
	tmp := path + ".tmp"
	os.RemoveAll(tmp)
	var err error
	if block {
		var f *os.File
		if f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
			err = f.Truncate(size)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	} else if err = os.Mkdir(tmp, 0o700); err == nil {
		err = os.Chmod(tmp, 0o777)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.RemoveAll(tmp)
	}
	return err
}

// DeleteVolume removes a volume's data, then forgets it, so a retry after a failure finishes
// the job. An unknown volume is already deleted.
func (c controller) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID missing")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.store.State().Volumes[id]
	if v == nil {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if target := stillMounted(v); target != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %s", id, target)
	}
	if err := c.removeVolume(v); err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// stillMounted returns a target where v is still mounted, "" if none. Targets recorded but
// no longer mounted (a node torn down without NodeUnpublishVolume) do not keep v alive.
func stillMounted(v *Volume) string {
	for target := range v.Published {
		if mounted, err := isMountPoint(target); err != nil || mounted {
			return target
		}
	}
	return ""
}

func (d *driver) removeVolume(v *Volume) error {
	path := d.volumePath(v.ID)
	if v.Block {
		if err := detachLoops(path); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
	}
	if err := os.RemoveAll(path); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return toStatus(d.store.Commit(func(s *State) error { delete(s.Volumes, v.ID); return nil }))
}

func (c controller) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities missing")
	}
	c.mu.Lock()
	v, err := c.volume(req.GetVolumeId())
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	block, err := accessType(req.GetVolumeCapabilities())
	if err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	if block != v.Block {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: "volume " + v.ID + " is a " + kind(v.Block) + " volume"}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters: req.GetParameters(), MutableParameters: req.GetMutableParameters()}}, nil
}

// ControllerExpandVolume grows a volume: a Block volume's file grows here (sparse) and its loop
// device learns the new size in NodeExpandVolume; a directory has no size to grow.
func (c controller) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if !c.expansion {
		return nil, status.Error(codes.Unimplemented, "volume expansion is disabled")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range missing")
	}
	required, limit, err := capacityRange(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, err := c.volume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	size := max(required, v.Size)
	if limit > 0 && size > limit {
		return nil, status.Errorf(codes.OutOfRange, "volume %s already holds %d bytes, more than the limit %d", v.ID, v.Size, limit)
	}
	if size > v.Size {
		if v.Block {
			if err := os.Truncate(c.volumePath(v.ID), size); err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
		}
		if err := c.store.Commit(func(s *State) error { s.Volumes[v.ID].Size = size; return nil }); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: v.Block}, nil
}

// CreateSnapshot copies a volume (sparse) to snapshots/<id>; the same name asked again for the
// same volume gets the same snapshot.
func (c controller) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot name missing")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume ID missing")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if snap := c.store.State().SnapshotByName(req.GetName()); snap != nil {
		if snap.SourceVolume != req.GetSourceVolumeId() {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q exists, of volume %s", req.GetName(), snap.SourceVolume)
		}
		return &csi.CreateSnapshotResponse{Snapshot: snapshotInfo(snap)}, nil
	}
	v, err := c.volume(req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	snap := &Snapshot{ID: newID(), Name: req.GetName(), SourceVolume: v.ID, Block: v.Block, Size: v.Size,
		CreatedAt: time.Now().UTC()}
	if err := copyPath(c.volumePath(v.ID), c.snapshotPath(snap.ID)); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := c.store.Commit(func(s *State) error { s.Snapshots[snap.ID] = snap; return nil }); err != nil {
		os.RemoveAll(c.snapshotPath(snap.ID))
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.CreateSnapshotResponse{Snapshot: snapshotInfo(snap)}, nil
}

func snapshotInfo(s *Snapshot) *csi.Snapshot {
	return &csi.Snapshot{SnapshotId: s.ID, SourceVolumeId: s.SourceVolume, SizeBytes: s.Size,
		CreationTime: timestamppb.New(s.CreatedAt), ReadyToUse: true}
}

func (c controller) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot ID missing")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.store.State().Snapshots[id] == nil {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err := os.RemoveAll(c.snapshotPath(id)); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := c.store.Commit(func(s *State) error { delete(s.Snapshots, id); return nil }); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists snapshots by ID order; the page token is the index of the next one.
func (c controller) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, status.Error(codes.InvalidArgument, "max_entries is negative")
	}
	c.mu.Lock()
	var found []*Snapshot
	for _, snap := range c.store.State().Snapshots {
		if (req.GetSnapshotId() == "" || snap.ID == req.GetSnapshotId()) &&
			(req.GetSourceVolumeId() == "" || snap.SourceVolume == req.GetSourceVolumeId()) {
			found = append(found, snap)
		}
	}
	c.mu.Unlock()
	sort.Slice(found, func(i, j int) bool { return found[i].ID < found[j].ID })
	start := 0
	if token := req.GetStartingToken(); token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(found) {
			return nil, status.Errorf(codes.Aborted, "starting token %q is not one this driver gave", token)
		}
		start = n
	}
	end := len(found)
	if m := int(req.GetMaxEntries()); m > 0 && start+m < end {
		end = start + m
	}
	resp := &csi.ListSnapshotsResponse{}
	for _, snap := range found[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotInfo(snap)})
	}
	if end < len(found) {
		resp.NextToken = strconv.Itoa(end)
	}
	return resp, nil
}

// reachable tells whether a volume on this node satisfies the requisite topology (any one
// segment set naming this node; none given means any node will do).
func (c controller) reachable(req *csi.TopologyRequirement) bool {
	if len(req.GetRequisite()) == 0 {
		return true
	}
	for _, t := range req.GetRequisite() {
		if node, ok := t.GetSegments()[topologyKey]; ok && node == c.nodeID {
			return true
		}
	}
	return false
}

// accessType checks volume capabilities and tells whether they ask for a Block volume; all
// must agree, and every access mode works on a single node.
func accessType(caps []*csi.VolumeCapability) (bool, error) {
	if len(caps) == 0 {
		return false, status.Error(codes.InvalidArgument, "volume capabilities missing")
	}
	var block, mount bool
	for _, c := range caps {
		switch {
		case c.GetBlock() != nil:
			block = true
		case c.GetMount() != nil:
			mount = true
		default:
			return false, status.Error(codes.InvalidArgument, "a volume capability has no access type")
		}
		if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_UNKNOWN {
			return false, status.Error(codes.InvalidArgument, "a volume capability has no access mode")
		}
	}
	if block && mount {
		return false, status.Error(codes.InvalidArgument, "a volume is either Block or Filesystem, not both")
	}
	return block, nil
}

func capacityRange(r *csi.CapacityRange) (required, limit int64, err error) {
	required, limit = r.GetRequiredBytes(), r.GetLimitBytes()
	if required < 0 || limit < 0 {
		return 0, 0, status.Error(codes.InvalidArgument, "negative capacity")
	}
	if limit > 0 && required > limit {
		return 0, 0, status.Errorf(codes.OutOfRange, "required %d bytes exceed the limit %d", required, limit)
	}
	return required, limit, nil
}

func kind(block bool) string {
	if block {
		return "Block"
	}
	return "Filesystem"
}

func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, err.Error())
}
