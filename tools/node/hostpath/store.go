package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Volume is what the driver remembers of a volume; its data lives at <statedir>/<ID>.
type Volume struct {
	ID        string `json:"id"`
	Name      string `json:"name,omitempty"` // the CO's name, for idempotent CreateVolume
	Block     bool   `json:"block"`
	Size      int64  `json:"size"`
	Source    string `json:"source,omitempty"`    // "snapshot:<id>", "volume:<id>" or "" (empty)
	Ephemeral bool   `json:"ephemeral,omitempty"` // a pod's inline volume: gone with its last unpublish
	// Published maps each target path the volume is bind-mounted on to whether it is read-only,
	// so that a repeated NodePublishVolume is recognised and a block volume's loop device is
	// detached only with its last target.
	Published map[string]bool `json:"published,omitempty"`
}

// Snapshot is a point-in-time copy of a volume at <statedir>/snapshots/<ID>; it keeps the
// source's access type and size so that a restore gets the same kind of volume, at least as big.
type Snapshot struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	SourceVolume string    `json:"sourceVolume"`
	Block        bool      `json:"block"`
	Size         int64     `json:"size"`
	CreatedAt    time.Time `json:"createdAt"`
}

// State is the whole of state.json.
type State struct {
	Volumes   map[string]*Volume   `json:"volumes"`
	Snapshots map[string]*Snapshot `json:"snapshots"`
}

// VolumeByName finds the volume the CO created under name (nil if none).
func (s *State) VolumeByName(name string) *Volume {
	for _, v := range s.Volumes {
		if v.Name == name {
			return v
		}
	}
	return nil
}

// SnapshotByName finds the snapshot the CO created under name (nil if none).
func (s *State) SnapshotByName(name string) *Snapshot {
	for _, snap := range s.Snapshots {
		if snap.Name == name {
			return snap
		}
	}
	return nil
}

// Store keeps State in <dir>/state.json. Every change is made on a copy and written atomically
// (temporary file, fsync, rename, fsync of the directory) before it replaces the state in
// memory, so a failed write or a crash leaves the previous state intact on disk and in memory.
// Callers serialise access (the driver holds one lock per RPC).
type Store struct {
	path  string
	state State
}

// OpenStore loads <dir>/state.json, or starts empty when there is none yet.
func OpenStore(dir string) (*Store, error) {
	s := &Store{path: filepath.Join(dir, "state.json")}
	data, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(data, &s.state); err != nil {
			return nil, fmt.Errorf("%s: %w", s.path, err)
		}
	}
	if s.state.Volumes == nil {
		s.state.Volumes = map[string]*Volume{}
	}
	if s.state.Snapshots == nil {
		s.state.Snapshots = map[string]*Snapshot{}
	}
	return s, nil
}

// State is the current state; read it, change it only through Commit.
func (s *Store) State() *State { return &s.state }

// Commit applies change to a copy of the state and saves it; the state changes only if both
// succeed.
func (s *Store) Commit(change func(*State) error) error {
	data, err := json.Marshal(&s.state)
	if err != nil {
		return err
	}
	var next State
	if err := json.Unmarshal(data, &next); err != nil {
		return err
	}
	if err := change(&next); err != nil {
		return err
	}
	if err := s.write(&next); err != nil {
		return fmt.Errorf("saving %s: %w", s.path, err)
	}
	s.state = next
	return nil
}

func (s *Store) write(state *State) error {
	data, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(s.path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// newID makes a volume or snapshot ID: random, so a name the CO reuses after a delete gets a
// fresh path, and a safe path component under the state directory.
func newID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return fmt.Sprintf("%s-%s-%s-%s-%s", hex.EncodeToString(b[0:4]), hex.EncodeToString(b[4:6]),
		hex.EncodeToString(b[6:8]), hex.EncodeToString(b[8:10]), hex.EncodeToString(b[10:16]))
}
