package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// topologyKey is the segment that pins volumes to this (the only) node.
const topologyKey = "topology.hostpath.csi/node"

type config struct {
	name, nodeID, stateDir string
	maxVolumes             int64
	expansion              bool
}

// driver is the state the three CSI services share. One lock serialises every call that reads or
// changes volumes: calls are few, and a serial driver cannot race with itself.
type driver struct {
	config
	mu    sync.Mutex
	store *Store
}

func newDriver(c config) (*driver, error) {
	if err := os.MkdirAll(filepath.Join(c.stateDir, "snapshots"), 0o750); err != nil {
		return nil, err
	}
	store, err := OpenStore(c.stateDir)
	if err != nil {
		return nil, err
	}
	removeLeftovers(c.stateDir)
	return &driver{config: c, store: store}, nil
}

// removeLeftovers deletes the *.tmp copies a crash in the middle of a create or snapshot left.
func removeLeftovers(dir string) {
	for _, pattern := range []string{"*.tmp", "snapshots/*.tmp"} {
		matches, _ := filepath.Glob(filepath.Join(dir, pattern))
		for _, m := range matches {
			os.RemoveAll(m)
		}
	}
}

func (d *driver) volumePath(id string) string   { return filepath.Join(d.stateDir, id) }
func (d *driver) snapshotPath(id string) string { return filepath.Join(d.stateDir, "snapshots", id) }

func (d *driver) topology() []*csi.Topology {
	return []*csi.Topology{{Segments: map[string]string{topologyKey: d.nodeID}}}
}

// validID refuses IDs that are not one plain path component, as every ID becomes a path under
// the state directory; the CO may send anything.
func validID(id string) bool {
	return id != "" && id != "." && id != ".." && id != "snapshots" && !strings.ContainsAny(id, "/\x00") &&
		!strings.HasPrefix(id, ".") && !strings.HasSuffix(id, ".tmp") && !strings.HasPrefix(id, "state.json")
}

func (d *driver) volume(id string) (*Volume, error) {
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID missing")
	}
	v := d.store.State().Volumes[id]
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "no volume %q", id)
	}
	return v, nil
}

// identity is the CSI Identity service.
type identity struct {
	csi.UnimplementedIdentityServer
	*driver
}

func (i identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: i.name, VendorVersion: version}, nil
}

func (i identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	service := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	expansion := func(t csi.PluginCapability_VolumeExpansion_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_VolumeExpansion_{
			VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: t}}}
	}
	caps := []*csi.PluginCapability{
		service(csi.PluginCapability_Service_CONTROLLER_SERVICE),
		service(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
	}
	if i.expansion {
		caps = append(caps, expansion(csi.PluginCapability_VolumeExpansion_ONLINE),
			expansion(csi.PluginCapability_VolumeExpansion_OFFLINE))
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

func (i identity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// What the driver does not offer, the embedded Unimplemented types answer.
var (
	_ csi.IdentityServer   = identity{}
	_ csi.ControllerServer = controller{}
	_ csi.NodeServer       = node{}
)
