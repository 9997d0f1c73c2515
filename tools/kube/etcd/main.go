// Command etcd is the etcd server, built from the go.etcd.io/etcd/server/v3 version that the
// pinned k8s.io/kubernetes itself requires (see ../go.mod), so that the apiserver talks to the
// etcd release it was tested with. Debian bookworm ships etcd 3.4.23: kube-apiserver 1.34 runs
// on it, but logs "RequestWatchProgress feature is not supported" and turns off consistent
// reads from its watch cache, which every real 1.34 cluster uses. The body is etcd's own main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
