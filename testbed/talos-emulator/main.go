// Command talos-emulator is a Talos node emulator for GuildNet's tests (issue 22).
//
// It serves the real Talos machine API (the gRPC services and messages of
// github.com/siderolabs/talos/pkg/machinery at the version of the testbed's talosctl) on
// <node>:50000 for each emulated node address, so the real talosctl drives it: apply-config
// --insecure in maintenance mode, then mutual TLS with the talosconfig that `talosctl gen
// config` wrote, bootstrap, health (server side) and kubeconfig. It runs no Talos: no
// machined, no etcd or kubelet of its own. The Kubernetes side is the testbed's real control
// plane, which the test starts when the emulator reports a bootstrap (see README.md).
//
// Files in --dir (the test's side of the protocol):
//
//	ready                written once every node listens (JSON: {"nodes": [...]})
//	bootstrap.json       written when a bootstrap succeeds (JSON: node, cluster, nodes)
//	calls.log            one line per call served (per target node and attempt)
//	control-plane.json   written by the test: {"kubeconfig", "server", "caPem", "token", "etcd"}
//	fail/<cmd>[@<node>]  fault injection: "transient N" or "permanent" (cmd: apply-config,
//	                     bootstrap, health, kubeconfig)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	var (
		dir      = flag.String("dir", "", "state and control directory (required)")
		nodes    = flag.String("nodes", "", "comma-separated node IP addresses to emulate (required)")
		port     = flag.Int("port", 50000, "apid port (Talos: 50000)")
		interval = flag.Duration("poll-interval", 500*time.Millisecond, "health check poll interval (Talos: 5s)")
	)
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("talos-emulator: ")
	if *dir == "" || *nodes == "" {
		fmt.Fprintln(os.Stderr, "usage: talos-emulator --dir DIR --nodes IP[,IP...] [--port 50000]")
		os.Exit(2)
	}
	if err := run(*dir, strings.Split(*nodes, ","), *port, *interval); err != nil {
		log.Printf("error: %v", err)
		os.Exit(1)
	}
}

func run(dir string, addrs []string, port int, interval time.Duration) error {
	if err := os.MkdirAll(filepath.Join(dir, "fail"), 0o700); err != nil {
		return err
	}
	em := newEmulator(dir, interval)
	listeners := make([]net.Listener, 0, len(addrs))
	for _, a := range addrs {
		ip := net.ParseIP(strings.TrimSpace(a))
		if ip == nil {
			return fmt.Errorf("--nodes: %q is not an IP address", a)
		}
		n, err := em.addNode(ip.String())
		if err != nil {
			return err
		}
		l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		if err != nil {
			return fmt.Errorf("listen for node %s: %w", ip, err)
		}
		listeners = append(listeners, l)
		go func() {
			if err := n.server.Serve(l); err != nil {
				log.Printf("node %s: serve: %v", n.addr, err)
			}
		}()
		log.Printf("node %s: maintenance mode, listening on %s", n.addr, l.Addr())
	}
	ready, err := json.Marshal(map[string]any{"nodes": em.order, "port": port})
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(dir, "ready"), ready); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	log.Printf("stopping")
	for _, n := range em.nodes {
		n.server.Stop()
	}
	for _, l := range listeners {
		_ = l.Close()
	}
	return nil
}

// writeAtomic writes data to path through a temp file and a rename, mode 0600.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
