//go:build tools

// Package tools pins CoreDNS's main package, so that `go mod tidy` keeps every module it needs
// in go.mod and go.sum. The build tag keeps it out of any build.
package tools

import _ "github.com/coredns/coredns"
