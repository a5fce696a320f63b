// Command gcp-integration is Sentinel's copy of go-control-plane's own
// end-to-end integration driver (upstream: pkg/test/main/main.go plus
// internal/upstream/main.go and scripts/integration.sh).
//
// It runs, in one process:
//   - an upstream HTTP/1.1 echo server (default 127.0.0.1:18080) that answers
//     every request with -message,
//   - go-control-plane's xDS management server (gRPC, default 127.0.0.1:18000),
//     its REST gateway (default 127.0.0.1:18001) and a gRPC access log
//     service (default 127.0.0.1:18090),
//
// then pushes -u snapshot versions (v0, v1, ...) for node -nodeID. The
// snapshots are built by go-control-plane's own pkg/test/resource/v3
// generator: cluster and route names carry the version, so every version
// replaces all clusters, endpoints and routes. After each push it sends -r
// batches of GETs, one to every listener port from -base upwards; a version
// passes when at least one batch gets the upstream's message on every port.
// Exit status 0 = every version passed, 1 = a version failed or the proxy
// never connected.
//
// The flags are upstream's, with the same names and defaults. Differences to
// upstream's driver, all harness-only:
//   - the upstream echo runs in this process (upstream runs bin/upstream),
//   - every server binds 127.0.0.1 instead of all interfaces,
//   - -first-request-timeout replaces the hard-coded one minute,
//   - a one-line verdict per snapshot version and at the end.
//
// Licensed under the Apache License, Version 2.0, as the upstream code it
// adapts (Copyright 2018 Envoyproxy Authors).
package main

import (
	"context"
	cryptotls "crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	conf "github.com/envoyproxy/go-control-plane/pkg/server/config"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/envoyproxy/go-control-plane/pkg/test"
	"github.com/envoyproxy/go-control-plane/pkg/test/resource/v3"
	testv3 "github.com/envoyproxy/go-control-plane/pkg/test/v3"
)

const bindHost = "127.0.0.1"

var (
	debug bool

	port            uint
	gatewayPort     uint
	upstreamPort    uint
	upstreamMessage string
	basePort        uint
	alsPort         uint

	delay    time.Duration
	requests int
	updates  int

	mode                string
	clusters            int
	httpListeners       int
	scopedHTTPListeners int
	vhdsHTTPListeners   int
	tcpListeners        int
	runtimes            int
	tls                 bool
	mux                 bool
	extensionNum        int

	nodeID string

	pprofEnabled bool

	// Sentinel additions (harness only).
	firstRequestTimeout time.Duration
	requestTimeout      time.Duration
	strict              bool
	ackTimeout          time.Duration
)

func init() {
	// Upstream flags: same names, same defaults.
	flag.BoolVar(&debug, "debug", false, "Use debug logging")
	flag.UintVar(&port, "port", 18000, "xDS management server port")
	flag.UintVar(&gatewayPort, "gateway", 18001, "Management HTTP gateway (from HTTP to xDS) server port")
	flag.UintVar(&upstreamPort, "upstream", 18080, "Upstream HTTP/1.1 port")
	flag.UintVar(&basePort, "base", 9000, "Proxy listener base port")
	flag.UintVar(&alsPort, "als", 18090, "Control plane accesslog server port")
	flag.StringVar(&mode, "xds", resource.Ads, "Management protocol to test (ads, xds, rest, delta, delta-ads)")
	flag.StringVar(&nodeID, "nodeID", "test-id", "Node ID")
	flag.BoolVar(&tls, "tls", false, "Enable TLS on all listeners and use SDS for secret delivery")
	flag.IntVar(&clusters, "clusters", 4, "Number of clusters")
	flag.IntVar(&runtimes, "runtimes", 1, "Number of RTDS layers")
	flag.StringVar(&upstreamMessage, "message", "Default message", "Upstream HTTP server response message")
	flag.DurationVar(&delay, "delay", 500*time.Millisecond, "Interval between request batch retries")
	flag.IntVar(&updates, "u", 3, "Number of snapshot updates")
	flag.IntVar(&requests, "r", 5, "Number of request batches per snapshot update")
	flag.IntVar(&httpListeners, "http", 2, "Number of HTTP listeners (and RDS configs)")
	flag.IntVar(&scopedHTTPListeners, "scopedhttp", 2, "Number of HTTP listeners (and SRDS configs)")
	flag.IntVar(&vhdsHTTPListeners, "vhdshttp", 2, "Number of VHDS HTTP listeners (delta mode only)")
	flag.IntVar(&tcpListeners, "tcp", 2, "Number of TCP pass-through listeners")
	flag.BoolVar(&mux, "mux", false, "Enable muxed linear cache for EDS")
	flag.IntVar(&extensionNum, "extension", 1, "Number of ExtensionConfig (ECDS) resources")
	flag.BoolVar(&pprofEnabled, "pprof", false, "Enable use of the pprof profiler")

	// Sentinel additions.
	flag.DurationVar(&firstRequestTimeout, "first-request-timeout", time.Minute,
		"How long to wait for the proxy's first xDS request")
	flag.DurationVar(&requestTimeout, "request-timeout", 100*time.Millisecond,
		"Timeout of one GET through the proxy (upstream: 100ms)")
	flag.BoolVar(&strict, "strict", false,
		"Also require every snapshot version to be ACKed (LDS, CDS and every other type sent at that version) and no NACK")
	flag.DurationVar(&ackTimeout, "ack-timeout", 10*time.Second,
		"With -strict: how long after the request batches to wait for the ACKs")
}

func main() {
	flag.Parse()
	ctx := context.Background()

	if pprofEnabled {
		runtime.SetBlockProfileRate(1)
	}

	// The upstream echo (upstream's internal/upstream/main.go).
	go runUpstream(upstreamPort, upstreamMessage)

	signal := make(chan struct{})
	cb := newAckCallbacks(&testv3.Callbacks{Signal: signal, Debug: debug})

	// nil logger: go-control-plane's default (silent) logger.
	config := cache.NewSnapshotCache(mode == resource.Ads, cache.IDHash{}, nil)
	var configCache cache.Cache = config
	const edsTypeURL = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	eds := cache.NewLinearCache(edsTypeURL)
	if mux {
		configCache = &cache.MuxCache{
			Classify: func(req *cache.Request) string {
				if req.GetTypeUrl() == edsTypeURL {
					return "eds"
				}
				return "default"
			},
			Caches: map[string]cache.Cache{"default": config, "eds": eds},
		}
	}

	opts := []conf.XDSOption{}
	if mode == resource.Ads {
		log.Println("enabling ordered ADS mode...")
		opts = append(opts, sotw.WithOrderedADS())
	}
	srv := server.NewServer(ctx, configCache, cb, opts...)
	als := &testv3.AccessLogService{}

	// As upstream: VHDS listeners only exist in (non-ADS) delta mode.
	if mode != resource.Delta {
		vhdsHTTPListeners = 0
	}

	snapshots := resource.TestSnapshot{
		Xds:                    mode,
		UpstreamPort:           uint32(upstreamPort),
		BasePort:               uint32(basePort),
		NumClusters:            clusters,
		NumHTTPListeners:       httpListeners,
		NumScopedHTTPListeners: scopedHTTPListeners,
		NumVHDSHTTPListeners:   vhdsHTTPListeners,
		NumTCPListeners:        tcpListeners,
		TLS:                    tls,
		NumRuntimes:            runtimes,
		NumExtension:           extensionNum,
	}

	go runAccessLogServer(als, alsPort)
	go runManagementServer(srv, port)
	go runManagementGateway(srv, gatewayPort)

	log.Printf("waiting for the first request (node %q, mode %s)...", nodeID, mode)
	select {
	case <-signal:
	case <-time.After(firstRequestTimeout):
		log.Printf("FAIL: timeout (%v) waiting for the first xDS request", firstRequestTimeout)
		os.Exit(1)
	}
	log.Printf("initial snapshot %+v\n", snapshots)
	log.Printf("executing sequence updates=%d request=%d listeners=%d (http=%d scopedhttp=%d vhdshttp=%d tcp=%d)\n",
		updates, requests, totalListeners(), httpListeners, scopedHTTPListeners, vhdsHTTPListeners, tcpListeners)

	start := time.Now()
	for i := 0; i < updates; i++ {
		snapshots.Version = fmt.Sprintf("v%d", i)
		log.Printf("update snapshot %v\n", snapshots.Version)

		snapshot := snapshots.Generate()
		if err := snapshot.Consistent(); err != nil {
			log.Printf("snapshot inconsistency: %+v\n%+v\n", snapshot, err)
		}
		pushed := time.Now()
		if err := config.SetSnapshot(ctx, nodeID, snapshot); err != nil {
			log.Printf("snapshot error %q for %+v\n", err, snapshot)
			os.Exit(1)
		}
		if mux {
			for name, res := range snapshot.GetResources(edsTypeURL) {
				if err := eds.UpdateResource(name, res); err != nil {
					log.Printf("update error %q for %+v\n", err, name)
					os.Exit(1)
				}
			}
		}

		// pass is true if all requests of one batch succeed.
		pass := false
		passedAt := -1
		var passAfter time.Duration
		var lastErrs []string
		for j := 0; j < requests; j++ {
			ok, failed, errs := callEcho()
			if failed == 0 && !pass {
				pass = true
				passedAt = j
				passAfter = time.Since(pushed)
			}
			if failed > 0 {
				lastErrs = errs
			}
			log.Printf("request batch %d, ok %v, failed %v, pass %v\n", j, ok, failed, pass)
			time.Sleep(delay)
		}

		als.Dump(func(s string) {
			if debug {
				log.Println(s)
			}
		})
		cb.Report()

		if !pass {
			log.Printf("failed all requests in a run %d\n", i)
			for _, e := range lastErrs {
				log.Printf("  last failing batch: %s", e)
			}
			log.Printf("FAIL: snapshot %s: no batch of %d passed on all %d listener ports",
				snapshots.Version, requests, totalListeners())
			os.Exit(1)
		}
		if strict {
			if missing := cb.waitApplied(snapshots.Version, ackTimeout); len(missing) > 0 {
				for _, m := range missing {
					log.Printf("  %s", m)
				}
				log.Printf("FAIL: snapshot %s: traffic passed but the proxy did not ACK the version (-strict)",
					snapshots.Version)
				os.Exit(1)
			}
		}
		log.Printf("snapshot %s: PASS (first passing batch %d, %.2fs after push; ACKed: %s)",
			snapshots.Version, passedAt, passAfter.Seconds(), cb.ackedTypes(snapshots.Version))
	}

	if pprofEnabled {
		writeProfiles()
	}
	log.Printf("Test for %s passed! (%d snapshots in %.1fs)\n", mode, updates, time.Since(start).Seconds())
}

func totalListeners() int {
	return httpListeners + scopedHTTPListeners + tcpListeners + vhdsHTTPListeners
}

// callEcho sends one GET to every listener port in parallel and counts how
// many returned the upstream's message.
func callEcho() (int, int, []string) {
	total := totalListeners()
	type result struct {
		port uint
		err  error
	}
	ch := make(chan result, total)

	client := http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			TLSClientConfig: &cryptotls.Config{InsecureSkipVerify: true}, // nolint:gosec
			// Fresh connection per batch, as each batch may hit a new listener.
			DisableKeepAlives: true,
		},
	}
	scheme := "http"
	if tls {
		scheme = "https"
	}

	for i := 0; i < total; i++ {
		p := basePort + uint(i)
		go func() {
			ch <- result{p, get(&client, fmt.Sprintf("%s://127.0.0.1:%d", scheme, p))}
		}()
	}

	ok, failed := 0, 0
	var errs []string
	for k := 0; k < total; k++ {
		r := <-ch
		if r.err == nil {
			ok++
		} else {
			failed++
			errs = append(errs, fmt.Sprintf("port %d: %v", r.port, r.err))
		}
	}
	return ok, failed, errs
}

func get(client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if string(body) != upstreamMessage {
		return fmt.Errorf("status %d, unexpected body %q", resp.StatusCode, truncate(string(body), 120))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func listen(port uint, what string) net.Listener {
	lis, err := net.Listen("tcp", fmt.Sprintf("%s:%d", bindHost, port))
	if err != nil {
		log.Printf("FAIL: %s cannot listen on %s:%d: %v", what, bindHost, port, err)
		os.Exit(1)
	}
	log.Printf("%s listening on %s:%d", what, bindHost, port)
	return lis
}

// runUpstream is upstream's internal/upstream echo server.
func runUpstream(port uint, message string) {
	lis := listen(port, "upstream echo (HTTP/1.1)")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := w.Write([]byte(message)); err != nil {
			log.Println(err)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.Serve(lis); err != nil {
		log.Println(err)
	}
}

// The three servers below are pkg/test's RunAccessLogServer,
// RunManagementServer and RunManagementGateway bound to 127.0.0.1.

func runAccessLogServer(als *testv3.AccessLogService, port uint) {
	lis := listen(port, "access log server (gRPC)")
	grpcServer := grpc.NewServer()
	testv3.RegisterAccessLogServer(grpcServer, als)
	if err := grpcServer.Serve(lis); err != nil {
		log.Println(err)
	}
}

func runManagementServer(srv server.Server, port uint) {
	// Same gRPC options as upstream's pkg/test.RunManagementServer.
	grpcServer := grpc.NewServer(
		grpc.MaxConcurrentStreams(1000000),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second,
			Timeout: 5 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             30 * time.Second,
			PermitWithoutStream: true,
		}),
	)
	lis := listen(port, "management server (xDS gRPC)")
	testv3.RegisterServer(grpcServer, srv)
	if err := grpcServer.Serve(lis); err != nil {
		log.Println(err)
	}
}

func runManagementGateway(srv server.Server, port uint) {
	lis := listen(port, "management gateway (REST xDS, HTTP/1.1)")
	httpSrv := &http.Server{
		Handler:           &test.HTTPGateway{Gateway: server.HTTPGateway{Server: srv}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	if err := httpSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Printf("gateway: %v", err)
	}
}

func writeProfiles() {
	for _, prof := range []string{"block", "goroutine", "mutex"} {
		p := pprof.Lookup(prof)
		if p == nil {
			continue
		}
		filePath := fmt.Sprintf("%s_profile_%s.pb.gz", prof, strings.ReplaceAll(mode, "/", "_"))
		f, err := os.Create(filePath)
		if err != nil {
			log.Printf("could not create %s profile %s: %s", prof, filePath, err)
			continue
		}
		if err := p.WriteTo(f, 1); err != nil {
			log.Printf("could not write %s profile: %s", prof, err)
		}
		f.Close()
		log.Printf("stored %s profile in %s", prof, filePath)
	}
}
