// Command csi-node-driver-registrar announces a CSI driver to kubelet: it asks the driver for its
// name, then serves kubelet's plugin-registration API on <driver>-reg.sock in kubelet's plugin
// registry directory, which kubelet's plugin watcher finds, queries and answers. Our own small
// stand-in for the upstream registrar, whose module the Go module proxy does not serve here;
// it takes the same flags the node uses. On SIGINT/SIGTERM it removes its socket, so kubelet
// deregisters the driver. Built static by scripts/node-build.
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
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

var version = "cdi-py"

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "the CSI driver's socket (a path or unix://path)")
	kubeletPath := flag.String("kubelet-registration-path", "", "the CSI driver's socket as kubelet sees it (required)")
	registryDir := flag.String("plugin-registration-path", "/var/lib/kubelet/plugins_registry", "kubelet's plugin registry directory")
	timeout := flag.Duration("timeout", time.Minute, "how long to wait for the CSI driver to answer")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(filepath.Base(os.Args[0]), version)
		return
	}
	if *kubeletPath == "" {
		log.Fatal("--kubelet-registration-path is required")
	}
	name, err := driverName(*csiAddress, *timeout)
	if err != nil {
		log.Fatalf("asking the CSI driver at %s for its name: %v", *csiAddress, err)
	}
	if err := serve(filepath.Join(*registryDir, name+"-reg.sock"), registration{name: name, endpoint: *kubeletPath}); err != nil {
		log.Fatal(err)
	}
}

// driverName asks the driver's Identity service for its name, retrying until the driver is up
// (the registrar and the driver start together) or the timeout passes.
func driverName(address string, timeout time.Duration) (string, error) {
	path := strings.TrimPrefix(address, "unix://")
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return "", err
	}
	return info.GetName(), nil
}

// serve answers kubelet on socket until SIGINT/SIGTERM, then removes the socket.
func serve(socket string, reg registration) error {
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing the stale %s: %w", socket, err)
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	server := grpc.NewServer()
	registerapi.RegisterRegistrationServer(server, reg)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-signals
		server.Stop()
	}()
	log.Printf("registering CSI driver %s (endpoint %s) on %s", reg.name, reg.endpoint, socket)
	err = server.Serve(listener)
	os.Remove(socket)
	return err
}

// registration is kubelet's view of the driver: a CSI plugin, its name and where to reach it.
type registration struct {
	registerapi.UnimplementedRegistrationServer
	name, endpoint string
}

func (r registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: r.name, Endpoint: r.endpoint,
		SupportedVersions: []string{"1.0.0"}}, nil
}

// NotifyRegistrationStatus exits on a refused registration, so that whoever runs the registrar
// sees the failure and can start it again, as kubelet expects.
func (r registration) NotifyRegistrationStatus(_ context.Context, status *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !status.GetPluginRegistered() {
		log.Fatalf("kubelet refused CSI driver %s: %s", r.name, status.GetError())
	}
	log.Printf("kubelet registered CSI driver %s", r.name)
	return &registerapi.RegistrationStatusResponse{}, nil
}
