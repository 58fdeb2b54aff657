package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/version"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// metalMode is the runtime mode the configs are validated against (bare metal, as
// `talosctl validate --mode metal`): an install disk is required.
type metalMode struct{}

func (metalMode) String() string        { return "metal" }
func (metalMode) RequiresInstall() bool { return true }
func (metalMode) InContainer() bool     { return false }

// machineServer is a node's MachineService: maintenance mode's handlers until a config is
// applied, apid's (with its node routing) after.
type machineServer struct {
	machine.UnimplementedMachineServiceServer
	n *node
}

func (s *machineServer) maintenance() bool { return s.n.config() == nil }

// errMaintenanceAdmin is what maintenance mode answers to admin-only calls from a client
// without the admin role (every client: maintenance mode has no client certificates).
var errMaintenanceAdmin = status.Error(codes.Unimplemented, "API is not implemented in maintenance mode")

// parseConfig loads and validates a machine config like Talos' ApplyConfiguration does
// (configloader, then Validate for the platform's mode).
func parseConfig(data []byte) (config.Provider, []string, error) {
	cfg, err := configloader.NewFromBytes(data)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to parse config: %w", err)
	}
	if cfg.RawV1Alpha1() == nil {
		return nil, nil, status.Error(codes.InvalidArgument, "emulator: the config has no v1alpha1 machine config document")
	}
	warnings, err := cfg.Validate(metalMode{})
	if err != nil {
		return nil, nil, status.Errorf(codes.InvalidArgument, "configuration validation failed: %s", err)
	}
	return cfg, warnings, nil
}

// ApplyConfiguration: in maintenance mode, Talos' maintenance server (modes auto, reboot and
// try only; parse, validate, then the node installs and reboots into the config). Configured:
// apid, admin role, per target node.
func (s *machineServer) ApplyConfiguration(ctx context.Context, in *machine.ApplyConfigurationRequest) (*machine.ApplyConfigurationResponse, error) {
	if s.maintenance() {
		s.n.em.record("apply-config --insecure %s", s.n.addr)
		if err := s.n.em.fault("apply-config", s.n.addr); err != nil {
			return nil, err
		}
		switch in.Mode {
		case machine.ApplyConfigurationRequest_TRY, machine.ApplyConfigurationRequest_REBOOT, machine.ApplyConfigurationRequest_AUTO:
		default:
			return nil, status.Errorf(codes.Unimplemented, "apply configuration --mode='%s' is not supported in maintenance mode",
				strings.ReplaceAll(strings.ToLower(in.Mode.String()), "_", "-"))
		}
		cfg, warnings, err := parseConfig(in.GetData())
		if err != nil {
			return nil, err
		}
		reply := &machine.ApplyConfigurationResponse{Messages: []*machine.ApplyConfiguration{{Warnings: warnings}}}
		if in.DryRun {
			reply.Messages[0].ModeDetails = "Dry run summary:\nNode is running in maintenance mode and does not have a config yet."
			return reply, nil
		}
		s.n.setConfig(cfg)
		log.Printf("node %s: config applied in maintenance mode (%s, cluster %q); apid now requires client certificates",
			s.n.addr, cfg.Machine().Type(), cfg.Cluster().Name())
		return reply, nil
	}
	if err := authorize(ctx, "/machine.MachineService/ApplyConfiguration"); err != nil {
		return nil, err
	}
	ts, err := targets(ctx, s.n.addr)
	if err != nil {
		return nil, err
	}
	reply := &machine.ApplyConfigurationResponse{}
	for _, t := range ts {
		msg, err := s.n.em.applyConfigured(t.addr, in)
		if err != nil {
			if !t.oneToMany {
				return nil, err
			}
			msg = &machine.ApplyConfiguration{}
		}
		msg.Metadata = meta(t, err)
		reply.Messages = append(reply.Messages, msg)
	}
	return reply, nil
}

func (em *emulator) applyConfigured(addr string, in *machine.ApplyConfigurationRequest) (*machine.ApplyConfiguration, error) {
	n, err := em.resolve(addr)
	if err != nil {
		return nil, err
	}
	em.record("apply-config %s", n.addr)
	if err := em.fault("apply-config", n.addr); err != nil {
		return nil, err
	}
	cfg, warnings, err := parseConfig(in.GetData())
	if err != nil {
		return nil, err
	}
	mode := in.Mode
	if mode == machine.ApplyConfigurationRequest_AUTO {
		mode = machine.ApplyConfigurationRequest_NO_REBOOT
	}
	details := "Applied configuration without a reboot"
	if in.DryRun {
		return &machine.ApplyConfiguration{Warnings: warnings, Mode: mode, ModeDetails: "Dry run summary:\n" + details}, nil
	}
	n.setConfig(cfg)
	log.Printf("node %s: config re-applied over apid (%s)", n.addr, mode)
	return &machine.ApplyConfiguration{Warnings: warnings, Mode: mode, ModeDetails: details}, nil
}

// GenerateClientConfiguration in maintenance mode fails as in Talos.
func (s *machineServer) GenerateClientConfiguration(context.Context, *machine.GenerateClientConfigurationRequest) (*machine.GenerateClientConfigurationResponse, error) {
	if s.maintenance() {
		return nil, status.Error(codes.Unimplemented, "client configuration (talosconfig) can't be generated in the maintenance mode")
	}
	return nil, status.Error(codes.Unimplemented, "emulator: GenerateClientConfiguration is not emulated")
}

// Upgrade, Reset, MetaWrite and MetaDelete need the admin role in maintenance mode, which no
// maintenance-mode client has; configured nodes do not emulate them.
func (s *machineServer) Upgrade(context.Context, *machine.UpgradeRequest) (*machine.UpgradeResponse, error) {
	return nil, s.notEmulated("Upgrade")
}

func (s *machineServer) Reset(context.Context, *machine.ResetRequest) (*machine.ResetResponse, error) {
	return nil, s.notEmulated("Reset")
}

func (s *machineServer) MetaWrite(context.Context, *machine.MetaWriteRequest) (*machine.MetaWriteResponse, error) {
	return nil, s.notEmulated("MetaWrite")
}

func (s *machineServer) MetaDelete(context.Context, *machine.MetaDeleteRequest) (*machine.MetaDeleteResponse, error) {
	return nil, s.notEmulated("MetaDelete")
}

func (s *machineServer) notEmulated(method string) error {
	if s.maintenance() {
		return errMaintenanceAdmin
	}
	return status.Errorf(codes.Unimplemented, "emulator: %s is not emulated", method)
}

// Version answers with the machinery module's version (the talosctl's), per target node.
func (s *machineServer) Version(ctx context.Context, _ *emptypb.Empty) (*machine.VersionResponse, error) {
	if s.maintenance() {
		return nil, errMaintenanceAdmin
	}
	if err := authorize(ctx, "/machine.MachineService/Version"); err != nil {
		return nil, err
	}
	ts, err := targets(ctx, s.n.addr)
	if err != nil {
		return nil, err
	}
	reply := &machine.VersionResponse{}
	for _, t := range ts {
		msg := &machine.Version{}
		_, err := s.n.em.resolve(t.addr)
		if err != nil && !t.oneToMany {
			return nil, err
		}
		if err == nil {
			msg.Version = version.NewVersion()
			msg.Platform = &machine.PlatformInfo{Name: "metal", Mode: "metal"}
		}
		msg.Metadata = meta(t, err)
		reply.Messages = append(reply.Messages, msg)
	}
	return reply, nil
}

// Bootstrap: control-plane nodes only, and once per cluster: a second one fails with
// AlreadyExists "etcd data directory is not empty", as Talos does once etcd has data. On
// success the emulator writes bootstrap.json, on which the test starts the real control plane.
func (s *machineServer) Bootstrap(ctx context.Context, in *machine.BootstrapRequest) (*machine.BootstrapResponse, error) {
	if s.maintenance() {
		return nil, status.Error(codes.Unimplemented, "method Bootstrap not implemented")
	}
	if err := authorize(ctx, "/machine.MachineService/Bootstrap"); err != nil {
		return nil, err
	}
	ts, err := targets(ctx, s.n.addr)
	if err != nil {
		return nil, err
	}
	reply := &machine.BootstrapResponse{}
	for _, t := range ts {
		err := s.n.em.bootstrap(t.addr, in)
		if err != nil && !t.oneToMany {
			return nil, err
		}
		reply.Messages = append(reply.Messages, &machine.Bootstrap{Metadata: meta(t, err)})
	}
	return reply, nil
}

func (em *emulator) bootstrap(addr string, in *machine.BootstrapRequest) error {
	n, err := em.resolve(addr)
	if err != nil {
		return err
	}
	em.record("bootstrap %s", n.addr)
	if err := em.fault("bootstrap", n.addr); err != nil {
		return err
	}
	if !n.isControlPlane() {
		return status.Error(codes.FailedPrecondition, "bootstrap can only be performed on a control plane node")
	}
	if in.GetRecoverEtcd() {
		return status.Error(codes.Unimplemented, "emulator: etcd recovery is not emulated")
	}
	cfg := n.config()
	id := clusterID(cfg)
	em.mu.Lock()
	if _, done := em.bootstrapped[id]; done {
		em.mu.Unlock()
		return status.Error(codes.AlreadyExists, "etcd data directory is not empty")
	}
	em.bootstrapped[id] = n.addr
	em.mu.Unlock()
	cps, workers := em.clusterNodes(id)
	if workers == nil {
		workers = []string{}
	}
	record, err := json.Marshal(map[string]any{
		"node":              n.addr,
		"cluster":           cfg.Cluster().Name(),
		"controlPlaneNodes": cps,
		"workerNodes":       workers,
		"at":                time.Now().UTC().Format(time.RFC3339Nano),
	})
	if err == nil {
		err = writeAtomic(filepath.Join(em.dir, "bootstrap.json"), record)
	}
	if err != nil {
		return status.Errorf(codes.Internal, "emulator: record the bootstrap: %v", err)
	}
	log.Printf("node %s: bootstrap of cluster %q", n.addr, cfg.Cluster().Name())
	return nil
}

// Kubeconfig: control-plane nodes only (Talos' message otherwise); the testbed control plane's
// admin kubeconfig as the .tar.gz stream Talos sends (one file named "kubeconfig").
func (s *machineServer) Kubeconfig(_ *emptypb.Empty, srv machine.MachineService_KubeconfigServer) error {
	ctx := srv.Context()
	if s.maintenance() {
		return status.Error(codes.Unimplemented, "method Kubeconfig not implemented")
	}
	if err := authorize(ctx, "/machine.MachineService/Kubeconfig"); err != nil {
		return err
	}
	ts, err := targets(ctx, s.n.addr)
	if err != nil {
		return err
	}
	for _, t := range ts {
		data, err := s.n.em.kubeconfig(t.addr)
		if err != nil && !t.oneToMany {
			return err
		}
		if err := srv.Send(&common.Data{Bytes: data, Metadata: meta(t, err)}); err != nil {
			return err
		}
	}
	return nil
}

func (em *emulator) kubeconfig(addr string) ([]byte, error) {
	n, err := em.resolve(addr)
	if err != nil {
		return nil, err
	}
	em.record("kubeconfig %s", n.addr)
	if err := em.fault("kubeconfig", n.addr); err != nil {
		return nil, err
	}
	if !n.isControlPlane() {
		return nil, status.Errorf(codes.Unimplemented, "%s is only available on control plane nodes", "kubeconfig")
	}
	cp, err := em.controlPlane()
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition,
			"emulator: no control plane yet (bootstrap the cluster and wait for it): %v", err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	kc := []byte(cp.Kubeconfig)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "kubeconfig", Size: int64(len(kc)), ModTime: time.Now(), Mode: 0o600}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(kc); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ServiceList reports the node's emulated services: apid and trustd (control plane) from the
// emulator itself; etcd and kubelet from the testbed control plane once it runs.
func (s *machineServer) ServiceList(ctx context.Context, _ *emptypb.Empty) (*machine.ServiceListResponse, error) {
	if s.maintenance() {
		return nil, status.Error(codes.Unimplemented, "method ServiceList not implemented")
	}
	if err := authorize(ctx, "/machine.MachineService/ServiceList"); err != nil {
		return nil, err
	}
	ts, err := targets(ctx, s.n.addr)
	if err != nil {
		return nil, err
	}
	reply := &machine.ServiceListResponse{}
	for _, t := range ts {
		n, err := s.n.em.resolve(t.addr)
		if err != nil && !t.oneToMany {
			return nil, err
		}
		msg := &machine.ServiceList{Metadata: meta(t, err)}
		if err == nil {
			msg.Services = s.n.em.services(ctx, n)
		}
		reply.Messages = append(reply.Messages, msg)
	}
	return reply, nil
}

func (em *emulator) services(ctx context.Context, n *node) []*machine.ServiceInfo {
	svc := func(id, state string, healthy bool, msg string) *machine.ServiceInfo {
		now := timestamppb.Now()
		return &machine.ServiceInfo{
			Id:     id,
			State:  state,
			Events: &machine.ServiceEvents{Events: []*machine.ServiceEvent{{Msg: msg, State: state, Ts: now}}},
			Health: &machine.ServiceHealth{Healthy: healthy, LastMessage: msg, LastChange: now},
		}
	}
	out := []*machine.ServiceInfo{svc("apid", "Running", true, "")}
	if n.isControlPlane() {
		out = append(out, svc("trustd", "Running", true, ""))
		if err := em.etcdHealthy(ctx); err != nil {
			out = append(out, svc("etcd", "Preparing", false, err.Error()))
		} else {
			out = append(out, svc("etcd", "Running", true, ""))
		}
	}
	if err := em.anyNodeReady(ctx); err != nil {
		out = append(out, svc("kubelet", "Preparing", false, err.Error()))
	} else {
		out = append(out, svc("kubelet", "Running", true, ""))
	}
	slices.SortFunc(out, func(a, b *machine.ServiceInfo) int { return strings.Compare(a.Id, b.Id) })
	return out
}
