// ACK/NACK tracking for the optional -strict check (a Sentinel addition; upstream's driver
// only checks that traffic flows).
//
// Upstream's verdict cannot tell whether the proxy applied version vN: every version routes to
// the same upstream echo, so a proxy that kept v0 would pass v1 and v2. With -strict a version
// also has to be ACKed: for every xDS type for which the server sent a response of version vN,
// the proxy must ACK one of those responses (a later request on the same stream carrying its
// nonce and no error_detail; for REST, a later fetch whose version_info is vN). LDS and CDS
// must be among them, and no response may be NACKed during the run.
package main

import (
	"context"
	"fmt"
	"log"
	"sort"
	"strings"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcetypes "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	testv3 "github.com/envoyproxy/go-control-plane/pkg/test/v3"
)

type sentKey struct {
	stream int64
	nonce  string
}

type sentResp struct {
	typeURL string
	version string
}

// ackCallbacks wraps upstream's test callbacks (which signal the first request and count
// requests/responses) and records which response versions the proxy ACKed or NACKed.
type ackCallbacks struct {
	*testv3.Callbacks

	mu    sync.Mutex
	sent  map[sentKey]sentResp
	sentV map[string]map[string]bool // version -> type URLs a response of that version went to
	acked map[string]map[string]bool // version -> type URLs that ACKed it
	nacks []string
}

func newAckCallbacks(cb *testv3.Callbacks) *ackCallbacks {
	return &ackCallbacks{
		Callbacks: cb,
		sent:      map[sentKey]sentResp{},
		sentV:     map[string]map[string]bool{},
		acked:     map[string]map[string]bool{},
	}
}

func shortType(typeURL string) string {
	return typeURL[strings.LastIndex(typeURL, ".")+1:]
}

func (a *ackCallbacks) recordSent(stream int64, nonce, typeURL, version string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sent[sentKey{stream, nonce}] = sentResp{typeURL, version}
	if a.sentV[version] == nil {
		a.sentV[version] = map[string]bool{}
	}
	a.sentV[version][typeURL] = true
}

func (a *ackCallbacks) recordReply(stream int64, nonce string, nack bool, errMsg string) {
	if nonce == "" {
		return // initial request or a new subscription, not a reply
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sent[sentKey{stream, nonce}]
	if !ok {
		return
	}
	if nack {
		msg := fmt.Sprintf("NACK of %s version %s (stream %d, nonce %s): %s", shortType(s.typeURL), s.version, stream, nonce, errMsg)
		a.nacks = append(a.nacks, msg)
		log.Print(msg)
		return
	}
	if a.acked[s.version] == nil {
		a.acked[s.version] = map[string]bool{}
	}
	a.acked[s.version][s.typeURL] = true
}

func (a *ackCallbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	a.recordReply(id, req.GetResponseNonce(), req.GetErrorDetail() != nil, req.GetErrorDetail().GetMessage())
	return a.Callbacks.OnStreamRequest(id, req)
}

func (a *ackCallbacks) OnStreamResponse(ctx context.Context, id int64, req *discovery.DiscoveryRequest, res *discovery.DiscoveryResponse) {
	a.recordSent(id, res.GetNonce(), res.GetTypeUrl(), res.GetVersionInfo())
	a.Callbacks.OnStreamResponse(ctx, id, req, res)
}

func (a *ackCallbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	a.recordReply(id, req.GetResponseNonce(), req.GetErrorDetail() != nil, req.GetErrorDetail().GetMessage())
	return a.Callbacks.OnStreamDeltaRequest(id, req)
}

func (a *ackCallbacks) OnStreamDeltaResponse(id int64, req *discovery.DeltaDiscoveryRequest, res *discovery.DeltaDiscoveryResponse) {
	a.recordSent(id, res.GetNonce(), res.GetTypeUrl(), res.GetSystemVersionInfo())
	a.Callbacks.OnStreamDeltaResponse(id, req, res)
}

// REST: a fetch carries the version the proxy has applied; there are no nonces.
func (a *ackCallbacks) OnFetchRequest(ctx context.Context, req *discovery.DiscoveryRequest) error {
	if ed := req.GetErrorDetail(); ed != nil {
		a.mu.Lock()
		msg := fmt.Sprintf("NACK (REST) of %s: %s", shortType(req.GetTypeUrl()), ed.GetMessage())
		a.nacks = append(a.nacks, msg)
		a.mu.Unlock()
		log.Print(msg)
	} else if v := req.GetVersionInfo(); v != "" {
		a.mu.Lock()
		if a.acked[v] == nil {
			a.acked[v] = map[string]bool{}
		}
		a.acked[v][req.GetTypeUrl()] = true
		a.mu.Unlock()
	}
	return a.Callbacks.OnFetchRequest(ctx, req)
}

func (a *ackCallbacks) OnFetchResponse(req *discovery.DiscoveryRequest, res *discovery.DiscoveryResponse) {
	if res != nil {
		a.mu.Lock()
		if a.sentV[res.GetVersionInfo()] == nil {
			a.sentV[res.GetVersionInfo()] = map[string]bool{}
		}
		a.sentV[res.GetVersionInfo()][res.GetTypeUrl()] = true
		a.mu.Unlock()
	}
	a.Callbacks.OnFetchResponse(req, res)
}

// missing returns what keeps version v from counting as applied: types sent at v but not
// ACKed at v, LDS/CDS never sent at v, and all NACKs so far.
func (a *ackCallbacks) missing(v string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, t := range []string{resourcetypes.ListenerType, resourcetypes.ClusterType} {
		if !a.sentV[v][t] {
			out = append(out, fmt.Sprintf("%s %s never sent", shortType(t), v))
		}
	}
	for t := range a.sentV[v] {
		if !a.acked[v][t] {
			out = append(out, fmt.Sprintf("%s %s not ACKed", shortType(t), v))
		}
	}
	sort.Strings(out)
	return append(out, a.nacks...)
}

// ackedTypes lists the types ACKed at version v, for the log.
func (a *ackCallbacks) ackedTypes(v string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ts []string
	for t := range a.acked[v] {
		ts = append(ts, shortType(t))
	}
	sort.Strings(ts)
	return strings.Join(ts, ",")
}

// waitApplied polls until version v is fully ACKed (nil) or the timeout passes (what is missing).
func (a *ackCallbacks) waitApplied(v string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		m := a.missing(v)
		if len(m) == 0 || time.Now().After(deadline) {
			return m
		}
		time.Sleep(50 * time.Millisecond)
	}
}
