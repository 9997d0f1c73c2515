//go:build tools

// Package tools pins crictl (sigs.k8s.io/cri-tools), the CRI client the test node's teardown uses
// to stop every pod sandbox through containerd, so the CNI plugins release their addresses,
// veths and iptables rules. scripts/kube-build builds it beside kubelet.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
