// etcd built out of tree from the Go module proxy (scripts/kube_apiserver.py):
// the same entry point as go.etcd.io/etcd/server/v3's etcd binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
