package main

import (
	"context"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rsrc "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	testv3 "github.com/envoyproxy/go-control-plane/pkg/test/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
)

func sotwResp(typeURL, version, nonce string) *discovery.DiscoveryResponse {
	return &discovery.DiscoveryResponse{TypeUrl: typeURL, VersionInfo: version, Nonce: nonce}
}

func TestStaleProxyIsCaught(t *testing.T) {
	a := newAckCallbacks(&testv3.Callbacks{})
	ctx := context.Background()
	// v0: LDS and CDS sent and ACKed.
	a.OnStreamResponse(ctx, 1, nil, sotwResp(rsrc.ListenerType, "v0", "1"))
	a.OnStreamResponse(ctx, 1, nil, sotwResp(rsrc.ClusterType, "v0", "2"))
	_ = a.OnStreamRequest(1, &discovery.DiscoveryRequest{TypeUrl: rsrc.ListenerType, VersionInfo: "v0", ResponseNonce: "1"})
	_ = a.OnStreamRequest(1, &discovery.DiscoveryRequest{TypeUrl: rsrc.ClusterType, VersionInfo: "v0", ResponseNonce: "2"})
	if m := a.missing("v0"); len(m) != 0 {
		t.Fatalf("v0 should be applied, missing %v", m)
	}
	// v1: sent, the proxy never answers: not applied.
	a.OnStreamResponse(ctx, 1, nil, sotwResp(rsrc.ListenerType, "v1", "3"))
	a.OnStreamResponse(ctx, 1, nil, sotwResp(rsrc.ClusterType, "v1", "4"))
	if m := a.waitApplied("v1", 10*time.Millisecond); len(m) != 2 {
		t.Fatalf("want LDS and CDS missing at v1, got %v", m)
	}
	// The ACK on another stream with the same nonce does not count.
	_ = a.OnStreamRequest(2, &discovery.DiscoveryRequest{TypeUrl: rsrc.ListenerType, ResponseNonce: "3"})
	if m := a.missing("v1"); len(m) != 2 {
		t.Fatalf("ack on a foreign stream counted: %v", m)
	}
}

func TestNackFailsTheRun(t *testing.T) {
	a := newAckCallbacks(&testv3.Callbacks{})
	ctx := context.Background()
	a.OnStreamResponse(ctx, 1, nil, sotwResp(rsrc.ListenerType, "v0", "1"))
	a.OnStreamResponse(ctx, 1, nil, sotwResp(rsrc.ClusterType, "v0", "2"))
	_ = a.OnStreamRequest(1, &discovery.DiscoveryRequest{TypeUrl: rsrc.ClusterType, ResponseNonce: "2"})
	_ = a.OnStreamRequest(1, &discovery.DiscoveryRequest{
		TypeUrl: rsrc.ListenerType, ResponseNonce: "1", ErrorDetail: &status.Status{Message: "bad listener"},
	})
	m := a.missing("v0")
	if len(m) != 2 || !strings.Contains(strings.Join(m, "|"), "bad listener") {
		t.Fatalf("want 'Listener not ACKed' and the NACK, got %v", m)
	}
}

func TestDeltaAndRestAcks(t *testing.T) {
	a := newAckCallbacks(&testv3.Callbacks{})
	a.OnStreamDeltaResponse(7, nil, &discovery.DeltaDiscoveryResponse{TypeUrl: rsrc.ListenerType, SystemVersionInfo: "v2", Nonce: "5"})
	_ = a.OnStreamDeltaRequest(7, &discovery.DeltaDiscoveryRequest{TypeUrl: rsrc.ListenerType, ResponseNonce: "5"})
	// CDS over REST: the fetch response, then a fetch carrying the applied version.
	a.OnFetchResponse(nil, sotwResp(rsrc.ClusterType, "v2", ""))
	_ = a.OnFetchRequest(context.Background(), &discovery.DiscoveryRequest{TypeUrl: rsrc.ClusterType, VersionInfo: "v2"})
	if m := a.missing("v2"); len(m) != 0 {
		t.Fatalf("v2 should be applied, missing %v", m)
	}
	if got := a.ackedTypes("v2"); got != "Cluster,Listener" {
		t.Fatalf("ackedTypes = %q", got)
	}
}
