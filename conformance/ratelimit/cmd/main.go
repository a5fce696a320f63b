// Command ratelimit is envoyproxy/ratelimit's service, built from the Go module pinned in
// go.mod: the same two lines as upstream's src/service_cmd/main.go. A module of our own,
// so that go.sum pins every dependency and `go build` works offline once the module cache
// holds them (see ../run.sh and scripts/install-deps.sh).
package main

import (
	"github.com/envoyproxy/ratelimit/src/service_cmd/runner"
	"github.com/envoyproxy/ratelimit/src/settings"
)

func main() {
	runner := runner.NewRunner(settings.NewSettings())
	runner.Run()
}
