package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	stdx509 "crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/siderolabs/crypto/x509"
	"github.com/siderolabs/talos/pkg/machinery/api/cluster"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config"
	machinetype "github.com/siderolabs/talos/pkg/machinery/config/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// emulator holds every emulated node and the cluster-wide state (bootstraps, faults).
type emulator struct {
	dir      string
	interval time.Duration

	mu           sync.Mutex
	nodes        map[string]*node
	order        []string
	bootstrapped map[string]string // cluster ID -> node that bootstrapped it
	faultMu      sync.Mutex
}

func newEmulator(dir string, interval time.Duration) *emulator {
	return &emulator{
		dir:          dir,
		interval:     interval,
		nodes:        map[string]*node{},
		bootstrapped: map[string]string{},
	}
}

// node is one emulated Talos node: maintenance mode until a config is applied, then
// configured (apid with mutual TLS).
type node struct {
	em     *emulator
	addr   string
	server *grpc.Server

	maintenanceCert tls.Certificate

	mu      sync.Mutex
	cfg     config.Provider
	apiCert *tls.Certificate
}

func (em *emulator) addNode(addr string) (*node, error) {
	cert, err := selfSigned(addr)
	if err != nil {
		return nil, fmt.Errorf("node %s: maintenance certificate: %w", addr, err)
	}
	n := &node{em: em, addr: addr, maintenanceCert: cert}
	creds := credentials.NewTLS(&tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"h2"},
		GetConfigForClient: n.tlsConfig,
	})
	n.server = grpc.NewServer(grpc.Creds(creds))
	machine.RegisterMachineServiceServer(n.server, &machineServer{n: n})
	cluster.RegisterClusterServiceServer(n.server, &clusterServer{n: n})
	em.mu.Lock()
	defer em.mu.Unlock()
	if _, dup := em.nodes[addr]; dup {
		return nil, fmt.Errorf("node %s is listed twice", addr)
	}
	em.nodes[addr] = n
	em.order = append(em.order, addr)
	return n, nil
}

func (em *emulator) node(addr string) *node {
	em.mu.Lock()
	defer em.mu.Unlock()
	if ip := net.ParseIP(addr); ip != nil {
		addr = ip.String()
	}
	return em.nodes[addr]
}

// config returns the applied machine config, or nil in maintenance mode.
func (n *node) config() config.Provider {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cfg
}

func (n *node) setConfig(cfg config.Provider) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cfg = cfg
	n.apiCert = nil
}

func (n *node) isControlPlane() bool {
	cfg := n.config()
	if cfg == nil {
		return false
	}
	t := cfg.Machine().Type()
	return t == machinetype.TypeControlPlane || t == machinetype.TypeInit
}

func clusterID(cfg config.Provider) string {
	return cfg.Cluster().ID()
}

// tlsConfig picks the TLS side of the node's state for each new connection: maintenance mode
// serves a self-signed certificate and asks for no client certificate (talosctl --insecure
// skips verification); a configured node requires and verifies a client certificate signed by
// the machine config's OS CA (machine.ca, plus machine.acceptedCAs), as apid does.
func (n *node) tlsConfig(*tls.ClientHelloInfo) (*tls.Config, error) {
	cfg := n.config()
	if cfg == nil {
		return &tls.Config{
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"h2"},
			Certificates: []tls.Certificate{n.maintenanceCert},
			ClientAuth:   tls.NoClientCert,
		}, nil
	}
	cert, err := n.apidCertificate(cfg)
	if err != nil {
		return nil, err
	}
	pool := stdx509.NewCertPool()
	sec := cfg.Machine().Security()
	if ca := sec.IssuingCA(); ca != nil && len(ca.Crt) > 0 {
		pool.AppendCertsFromPEM(ca.Crt)
	}
	for _, ca := range sec.AcceptedCAs() {
		pool.AppendCertsFromPEM(ca.Crt)
	}
	// As apid (siderolabs/crypto tls.New with Mutual auth): TLS 1.2 at least (Go clients get
	// 1.3), a verified client certificate, and apid's extended key usage check.
	return &tls.Config{
		MinVersion:            tls.VersionTLS12,
		NextProtos:            []string{"h2"},
		Certificates:          []tls.Certificate{*cert},
		ClientAuth:            tls.RequireAndVerifyClientCert,
		ClientCAs:             pool,
		VerifyPeerCertificate: verifyExtKeyUsage,
	}, nil
}

// verifyExtKeyUsage is apid's check (internal/app/apid/main.go): every non-CA certificate of
// the verified chain has exactly the client-auth extended key usage.
func verifyExtKeyUsage(_ [][]byte, verifiedChains [][]*stdx509.Certificate) error {
	if len(verifiedChains) == 0 {
		return errors.New("no verified chains")
	}
	for _, cert := range verifiedChains[0] {
		if cert.IsCA {
			continue
		}
		if !slices.Equal(cert.ExtKeyUsage, []stdx509.ExtKeyUsage{stdx509.ExtKeyUsageClientAuth}) {
			return fmt.Errorf("certificate %q is missing the client auth extended key usage", cert.Subject)
		}
	}
	return nil
}

// apidCertificate issues (once per config) the node's apid serving certificate from the OS
// CA, for the node's address and machine.certSANs. A worker's config carries no CA key: like
// trustd, a configured control-plane node of the same cluster whose machine.token matches
// signs it; until one exists, TLS handshakes fail.
func (n *node) apidCertificate(cfg config.Provider) (*tls.Certificate, error) {
	n.mu.Lock()
	if n.apiCert != nil {
		defer n.mu.Unlock()
		return n.apiCert, nil
	}
	n.mu.Unlock()
	ca, err := n.em.signingCA(cfg)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.addr, err)
	}
	ips := []net.IP{net.ParseIP(n.addr)}
	var dns []string
	for _, san := range cfg.Machine().Security().CertSANs() {
		if ip := net.ParseIP(san); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, san)
		}
	}
	kp, err := x509.NewKeyPair(ca,
		x509.CommonName(n.addr),
		x509.IPAddresses(ips),
		x509.DNSNames(dns),
		x509.NotAfter(time.Now().Add(24*time.Hour)),
		x509.KeyUsage(stdx509.KeyUsageDigitalSignature),
		x509.ExtKeyUsage([]stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}),
	)
	if err != nil {
		return nil, fmt.Errorf("node %s: issue the apid certificate: %w", n.addr, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.apiCert = kp.Certificate
	return n.apiCert, nil
}

// signingCA is the OS CA with its key: the node's own (control plane), or, for a worker, that
// of a configured control-plane node with the same machine token (what trustd checks).
func (em *emulator) signingCA(cfg config.Provider) (*x509.CertificateAuthority, error) {
	if ca := cfg.Machine().Security().IssuingCA(); ca != nil && len(ca.Key) > 0 {
		return x509.NewCertificateAuthorityFromCertificateAndKey(ca)
	}
	token := cfg.Machine().Security().Token()
	em.mu.Lock()
	nodes := make([]*node, 0, len(em.nodes))
	for _, addr := range em.order {
		nodes = append(nodes, em.nodes[addr])
	}
	em.mu.Unlock()
	for _, other := range nodes {
		oc := other.config()
		if oc == nil || !other.isControlPlane() || oc.Machine().Security().Token() != token {
			continue
		}
		if ca := oc.Machine().Security().IssuingCA(); ca != nil && len(ca.Key) > 0 {
			return x509.NewCertificateAuthorityFromCertificateAndKey(ca)
		}
	}
	return nil, errors.New("no configured control-plane node with this machine token can sign the apid certificate (trustd)")
}

// clusterNodes lists the configured nodes of a cluster (by cluster ID), control planes first.
func (em *emulator) clusterNodes(id string) (cps, workers []string) {
	em.mu.Lock()
	nodes := make([]*node, 0, len(em.nodes))
	for _, addr := range em.order {
		nodes = append(nodes, em.nodes[addr])
	}
	em.mu.Unlock()
	for _, n := range nodes {
		cfg := n.config()
		if cfg == nil || clusterID(cfg) != id {
			continue
		}
		if n.isControlPlane() {
			cps = append(cps, n.addr)
		} else {
			workers = append(workers, n.addr)
		}
	}
	return cps, workers
}

// selfSigned makes the maintenance-mode certificate (Talos generates a self-signed one too).
func selfSigned(addr string) (tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &stdx509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "maintenance-service"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP(addr)},
		KeyUsage:     stdx509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth},
	}
	der, err := stdx509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}
