// Command hostpathplugin is a small single-node CSI driver whose volumes live under a state
// directory on the host: a Filesystem volume is the directory <statedir>/<volumeID>, bind-mounted
// into pods; a Block volume is the sparse file <statedir>/<volumeID>, attached as a loop device
// whose node is bind-mounted at the pod's device path. Snapshots are sparse copies under
// <statedir>/snapshots/<snapshotID>; clones and restores are sparse copies too. What the driver
// knows (volumes by name, snapshots, where volumes are published) is in <statedir>/state.json.
//
// Our own stand-in for csi-driver-host-path, whose module the Go module proxy does not serve
// here, taking the same flags the node uses. It runs on the host as root beside kubelet (not in
// a pod), serves the Identity, Controller and Node services on one unix socket and removes the
// socket on SIGINT/SIGTERM. Built static by scripts/node-build.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

var version = "cdi-py"

func main() {
	endpoint := flag.String("endpoint", "unix:///csi/csi.sock", "where to serve CSI (unix://path or a path)")
	nodeID := flag.String("nodeid", "", "this node's name (required)")
	name := flag.String("drivername", "hostpath.csi.k8s.io", "the driver's name")
	stateDir := flag.String("statedir", "/csi-data-dir", "where volumes, snapshots and state.json live")
	maxVolumes := flag.Int64("maxvolumespernode", 0, "announced to kubelet as the node's volume limit (0: none)")
	expansion := flag.Bool("enable-volume-expansion", true, "offer online and offline volume expansion")
	verbosity := flag.Int("v", 0, "log level: 2 logs every call, 5 every request and response")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(filepath.Base(os.Args[0]), version)
		return
	}
	if *nodeID == "" {
		log.Fatal("--nodeid is required")
	}
	d, err := newDriver(config{name: *name, nodeID: *nodeID, stateDir: *stateDir, maxVolumes: *maxVolumes,
		expansion: *expansion})
	if err != nil {
		log.Fatal(err)
	}
	if err := serve(strings.TrimPrefix(*endpoint, "unix://"), d, *verbosity); err != nil {
		log.Fatal(err)
	}
}

// serve answers CSI calls on socket until SIGINT/SIGTERM, then removes the socket.
func serve(socket string, d *driver, verbosity int) error {
	if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
		return err
	}
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing the stale %s: %w", socket, err)
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	server := grpc.NewServer(grpc.UnaryInterceptor(logCalls(verbosity)))
	csi.RegisterIdentityServer(server, identity{driver: d})
	csi.RegisterControllerServer(server, controller{driver: d})
	csi.RegisterNodeServer(server, node{driver: d})
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-signals
		server.GracefulStop()
	}()
	log.Printf("CSI driver %s %s for node %s serving on %s, state in %s", d.name, version, d.nodeID, socket, d.stateDir)
	err = server.Serve(listener)
	os.Remove(socket)
	return err
}

// logCalls logs each call at --v=2 (method and outcome; failures always) and its request and
// response at --v=5.
func logCalls(verbosity int) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if verbosity >= 5 {
			log.Printf("%s request: %v", info.FullMethod, req)
		}
		resp, err := handler(ctx, req)
		switch {
		case err != nil:
			log.Printf("%s failed: %v", info.FullMethod, status.Convert(err).Message())
		case verbosity >= 5:
			log.Printf("%s response: %v", info.FullMethod, resp)
		case verbosity >= 2 && !strings.HasSuffix(info.FullMethod, "/Probe"):
			log.Printf("%s ok", info.FullMethod)
		}
		return resp, err
	}
}
