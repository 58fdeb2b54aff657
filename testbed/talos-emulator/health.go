package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/cluster"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// clusterServer is a node's ClusterService: the server-side health check that `talosctl
// health` (default --server=true) calls.
type clusterServer struct {
	cluster.UnimplementedClusterServiceServer
	n *node
}

// errSkip is Talos' conditions.ErrSkipAssertion: the check is reported as "SKIP" and passes.
var errSkip = errors.New("SKIP")

// healthCheck is one of Talos v1.11.5's check.DefaultClusterChecks (same description and
// order), with the emulator's assertion.
type healthCheck struct {
	description string
	assert      func(ctx context.Context, h *healthRun) error
}

type healthRun struct {
	em      *emulator
	cps     []string
	workers []string
}

func (h *healthRun) all() []string { return append(append([]string{}, h.cps...), h.workers...) }

var healthChecks = []healthCheck{
	{"etcd to be healthy", func(ctx context.Context, h *healthRun) error {
		return h.em.etcdHealthy(ctx)
	}},
	{"etcd members to be consistent across nodes", func(ctx context.Context, h *healthRun) error {
		n, err := h.em.etcdMembers(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("etcd lists no members")
		}
		return nil
	}},
	// The testbed runs one etcd on loopback for every emulated control-plane node, so its
	// members cannot be matched to the nodes' addresses.
	{"etcd members to be control plane nodes", func(context.Context, *healthRun) error { return errSkip }},
	{"apid to be ready", func(_ context.Context, h *healthRun) error {
		for _, addr := range h.all() {
			if _, err := h.em.resolve(addr); err != nil {
				return fmt.Errorf("%s: %w", addr, err)
			}
		}
		return nil
	}},
	// Emulated nodes have no memory or disks to report.
	{"all nodes memory sizes", func(context.Context, *healthRun) error { return errSkip }},
	{"all nodes disk sizes", func(context.Context, *healthRun) error { return errSkip }},
	{"no diagnostics", func(context.Context, *healthRun) error { return nil }},
	{"kubelet to be healthy", func(ctx context.Context, h *healthRun) error { return h.em.anyNodeReady(ctx) }},
	{"all nodes to finish boot sequence", func(_ context.Context, h *healthRun) error {
		for _, addr := range h.all() {
			n, err := h.em.resolve(addr)
			if err != nil {
				return err
			}
			if _, err := n.apidCertificate(n.config()); err != nil {
				return err
			}
		}
		return nil
	}},
	{"all k8s nodes to report", func(ctx context.Context, h *healthRun) error {
		nodes, err := h.em.kubeNodes(ctx)
		if err != nil {
			return err
		}
		// As Talos: every node's address must be some Kubernetes node's InternalIP.
		reported := map[string]bool{}
		for _, n := range nodes {
			for _, ip := range n.internalIPs() {
				if parsed := net.ParseIP(ip); parsed != nil {
					reported[parsed.String()] = true
				}
			}
		}
		var missing []string
		for _, addr := range h.all() {
			if !reported[net.ParseIP(addr).String()] {
				missing = append(missing, addr)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("some nodes are not reported by Kubernetes: %q", missing)
		}
		return nil
	}},
	{"all control plane static pods to be running", func(ctx context.Context, h *healthRun) error {
		return h.em.kubeGet(ctx, "/readyz", nil)
	}},
	{"all control plane components to be ready", func(ctx context.Context, h *healthRun) error {
		return h.em.kubeGet(ctx, "/readyz", nil)
	}},
	{"all k8s nodes to report ready", func(ctx context.Context, h *healthRun) error {
		nodes, err := h.em.kubeNodes(ctx)
		if err != nil {
			return err
		}
		var notReady []string
		for _, n := range nodes {
			if !n.ready() {
				notReady = append(notReady, n.Metadata.Name)
			}
		}
		if len(notReady) > 0 {
			return fmt.Errorf("some nodes are not ready: %v", notReady)
		}
		return nil
	}},
	{"kube-proxy to report ready", func(ctx context.Context, h *healthRun) error {
		return h.em.workloadReady(ctx, "daemonsets", "k8s-app=kube-proxy")
	}},
	{"coredns to report ready", func(ctx context.Context, h *healthRun) error {
		return h.em.workloadReady(ctx, "deployments", "k8s-app=kube-dns")
	}},
	{"all k8s nodes to report schedulable", func(ctx context.Context, h *healthRun) error {
		nodes, err := h.em.kubeNodes(ctx)
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if n.Spec.Unschedulable {
				return fmt.Errorf("node %s is unschedulable", n.Metadata.Name)
			}
		}
		return nil
	}},
}

// workloadReady is Talos' DaemonSetPresent/DeploymentPresent + pod readiness: absent means SKIP.
func (em *emulator) workloadReady(ctx context.Context, kind, selector string) error {
	var list struct {
		Items []struct {
			Status struct {
				Ready   int `json:"numberReady"`
				Desired int `json:"desiredNumberScheduled"`
				RReady  int `json:"readyReplicas"`
				Repl    int `json:"replicas"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := em.kubeGet(ctx, "/apis/apps/v1/namespaces/kube-system/"+kind+"?labelSelector="+selector, &list); err != nil {
		return err
	}
	if len(list.Items) == 0 {
		return errSkip
	}
	for _, it := range list.Items {
		if it.Status.Ready < it.Status.Desired || it.Status.RReady < it.Status.Repl {
			return fmt.Errorf("%s %s: not all pods are ready", kind, selector)
		}
	}
	return nil
}

// HealthCheck streams progress like Talos' server-side check: "discovered nodes: [...]", then
// for each check "waiting for <description>: <state>" whenever its state changes, until each
// passes (OK or SKIP) or the wait timeout ends the run.
func (s *clusterServer) HealthCheck(in *cluster.HealthCheckRequest, srv cluster.ClusterService_HealthCheckServer) error {
	ctx := srv.Context()
	if s.n.config() == nil {
		return status.Error(codes.Unimplemented, "unknown service cluster.ClusterService")
	}
	if err := authorize(ctx, "/cluster.ClusterService/HealthCheck"); err != nil {
		return err
	}
	ts, err := targets(ctx, s.n.addr)
	if err != nil {
		return err
	}
	for _, t := range ts {
		send := func(msg string) error {
			return srv.Send(&cluster.HealthCheckProgress{Message: msg, Metadata: meta(t, nil)})
		}
		err := s.n.em.healthCheck(ctx, t.addr, in, send)
		if err != nil {
			if !t.oneToMany {
				return err
			}
			if sendErr := srv.Send(&cluster.HealthCheckProgress{Metadata: meta(t, err)}); sendErr != nil {
				return sendErr
			}
		}
	}
	return nil
}

func (em *emulator) healthCheck(ctx context.Context, addr string, in *cluster.HealthCheckRequest, send func(string) error) error {
	n, err := em.resolve(addr)
	if err != nil {
		return err
	}
	em.record("health %s control-plane=%s workers=%s", n.addr,
		strings.Join(in.GetClusterInfo().GetControlPlaneNodes(), ","), strings.Join(in.GetClusterInfo().GetWorkerNodes(), ","))
	if err := em.fault("health", n.addr); err != nil {
		return err
	}
	h := &healthRun{em: em, cps: in.GetClusterInfo().GetControlPlaneNodes(), workers: in.GetClusterInfo().GetWorkerNodes()}
	if len(h.cps) == 0 && len(h.workers) == 0 {
		h.cps, h.workers = em.clusterNodes(clusterID(n.config()))
	}
	for _, a := range h.all() {
		if net.ParseIP(a) == nil {
			return status.Errorf(codes.InvalidArgument, "failed to parse IP address %q", a)
		}
	}
	if err := send(fmt.Sprintf("discovered nodes: %q", h.all())); err != nil {
		return err
	}
	wait := in.GetWaitTimeout().AsDuration()
	if wait <= 0 {
		wait = 20 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for _, c := range healthChecks {
		if err := em.poll(ctx, c, h, send); err != nil {
			return err
		}
	}
	return nil
}

// poll runs one check until it passes, reporting each new state (Talos' pollingCondition with
// the health reporter, which drops repeated lines).
func (em *emulator) poll(ctx context.Context, c healthCheck, h *healthRun, send func(string) error) error {
	last := ""
	report := func(state string) error {
		line := strings.TrimSpace(fmt.Sprintf("waiting for %s: %s", c.description, state))
		if line == last {
			return nil
		}
		last = line
		return send(line)
	}
	if err := report("..."); err != nil {
		return err
	}
	for {
		runCtx, cancel := context.WithTimeout(ctx, em.interval+5*time.Second)
		err := c.assert(runCtx, h)
		cancel()
		switch {
		case err == nil:
			return report("OK")
		case errors.Is(err, errSkip):
			return report("SKIP")
		}
		if rerr := report(err.Error()); rerr != nil {
			return rerr
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-time.After(em.interval):
		}
	}
}
