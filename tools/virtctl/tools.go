//go:build tools

// Package tools pins the main package scripts/virtctl-build compiles (KubeVirt's own virtctl,
// from the kubevirt.io/kubevirt module), so that `go mod tidy` keeps every module it needs in
// go.mod and go.sum. The build tag keeps it out of any build. See go.mod for why it carries
// replace lines.
package tools

import (
	_ "kubevirt.io/kubevirt/cmd/virtctl"
)
