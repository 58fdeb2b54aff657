package main

import (
	"context"

	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Roles per method, copied from Talos v1.11.5 (internal/app/machined/pkg/system/services/machined.go).
var methodRoles = map[string]role.Set{
	"/cluster.ClusterService/HealthCheck":        role.MakeSet(role.Admin, role.Operator, role.Reader),
	"/machine.MachineService/ApplyConfiguration": role.MakeSet(role.Admin),
	"/machine.MachineService/Bootstrap":          role.MakeSet(role.Admin),
	"/machine.MachineService/Kubeconfig":         role.MakeSet(role.Admin),
	"/machine.MachineService/ServiceList":        role.MakeSet(role.Admin, role.Operator, role.Reader),
	"/machine.MachineService/Version":            role.MakeSet(role.Admin, role.Operator, role.Reader),
}

// errNotAuthorized is Talos' authz.ErrNotAuthorized.
var errNotAuthorized = status.Error(codes.PermissionDenied, "not authorized")

// clientRoles returns the roles of a verified client certificate (its Organization entries,
// like Talos' authn), or false when the connection carries none (maintenance mode).
func clientRoles(ctx context.Context) (role.Set, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return role.Set{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.PeerCertificates) == 0 {
		return role.Set{}, false
	}
	roles, _ := role.Parse(info.State.PeerCertificates[0].Subject.Organization)
	return roles, true
}

// authorize checks the caller's roles for method, as Talos' authz middleware does.
func authorize(ctx context.Context, method string) error {
	roles, ok := clientRoles(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "emulator: no verified client certificate")
	}
	allowed, known := methodRoles[method]
	if !known || !roles.IncludesAny(allowed) {
		return errNotAuthorized
	}
	return nil
}

// target is where a request goes after apid's director: the local node (no node metadata,
// or "node"), or each of "nodes" (one-to-many: replies carry metadata with the hostname, and
// a node's error becomes metadata instead of failing the call).
type target struct {
	addr      string
	oneToMany bool
}

func targets(ctx context.Context, local string) ([]target, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if nodes := md.Get("nodes"); len(nodes) > 0 {
		out := make([]target, 0, len(nodes))
		for _, n := range nodes {
			out = append(out, target{addr: n, oneToMany: true})
		}
		return out, nil
	}
	if node := md.Get("node"); len(node) > 0 {
		if len(node) != 1 {
			return nil, status.Error(codes.InvalidArgument, "node metadata must be single-valued")
		}
		return []target{{addr: node[0]}}, nil
	}
	return []target{{addr: local}}, nil
}

// resolve finds a target among the emulated, configured nodes; any other address fails the
// way apid's dial to it would.
func (em *emulator) resolve(addr string) (*node, error) {
	n := em.node(addr)
	if n == nil || n.config() == nil {
		return nil, status.Errorf(codes.Unavailable,
			"connection error: desc = \"transport: Error while dialing: dial tcp %s:50000: connect: connection refused\"", addr)
	}
	return n, nil
}

// meta is the metadata apid adds to one-to-many replies; err, if any, becomes its error.
func meta(t target, err error) *common.Metadata {
	if !t.oneToMany {
		return nil
	}
	md := &common.Metadata{Hostname: t.addr}
	if err != nil {
		md.Error = err.Error()
		md.Status = status.Convert(err).Proto()
	}
	return md
}
