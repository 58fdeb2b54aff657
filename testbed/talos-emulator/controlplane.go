package main

import (
	"bytes"
	"context"
	"crypto/tls"
	stdx509 "crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// controlPlane is what the test writes to control-plane.json once the testbed's real control
// plane runs: the admin kubeconfig that Kubeconfig returns, and what the health checks query.
type controlPlane struct {
	Kubeconfig string `json:"kubeconfig"`
	Server     string `json:"server"`
	CAPem      string `json:"caPem"`
	Token      string `json:"token"`
	Etcd       string `json:"etcd"`
}

func (em *emulator) controlPlane() (*controlPlane, error) {
	data, err := os.ReadFile(filepath.Join(em.dir, "control-plane.json"))
	if err != nil {
		return nil, errors.New("the control plane is not running")
	}
	var cp controlPlane
	if err := json.Unmarshal(data, &cp); err != nil {
		return nil, fmt.Errorf("control-plane.json: %w", err)
	}
	if cp.Kubeconfig == "" || cp.Server == "" {
		return nil, errors.New("control-plane.json: kubeconfig and server are required")
	}
	return &cp, nil
}

func httpClient(caPem string) *http.Client {
	tr := &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	if caPem != "" {
		pool := stdx509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(caPem))
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// kubeGet GETs path from the API server as the admin and decodes the JSON answer into out.
func (em *emulator) kubeGet(ctx context.Context, path string, out any) error {
	cp, err := em.controlPlane()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cp.Server+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+cp.Token)
	resp, err := httpClient(cp.CAPem).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close() //nolint:errcheck
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(body, out)
}

// etcdHealthy asks the testbed's etcd (its /health endpoint) whether it is healthy.
func (em *emulator) etcdHealthy(ctx context.Context) error {
	cp, err := em.controlPlane()
	if err != nil {
		return err
	}
	if cp.Etcd == "" {
		return errors.New("control-plane.json names no etcd")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cp.Etcd+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := httpClient("").Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close() //nolint:errcheck
	var h struct {
		Health string `json:"health"`
		Reason string `json:"reason"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&h); err != nil {
		return fmt.Errorf("etcd /health: %w", err)
	}
	if h.Health != "true" {
		return fmt.Errorf("etcd is not healthy: %s", h.Reason)
	}
	return nil
}

// etcdMembers lists the etcd members through etcd's JSON gateway.
func (em *emulator) etcdMembers(ctx context.Context) (int, error) {
	cp, err := em.controlPlane()
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cp.Etcd+"/v3/cluster/member/list", bytes.NewReader([]byte("{}")))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient("").Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close() //nolint:errcheck
	var list struct {
		Members []json.RawMessage `json:"members"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&list); err != nil {
		return 0, fmt.Errorf("etcd member list: %w", err)
	}
	return len(list.Members), nil
}

type kubeNode struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Unschedulable bool `json:"unschedulable"`
	} `json:"spec"`
	Status struct {
		Addresses []struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		} `json:"addresses"`
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

func (n kubeNode) internalIPs() []string {
	var ips []string
	for _, a := range n.Status.Addresses {
		if a.Type == "InternalIP" {
			ips = append(ips, a.Address)
		}
	}
	return ips
}

func (n kubeNode) ready() bool {
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

func (em *emulator) kubeNodes(ctx context.Context) ([]kubeNode, error) {
	var list struct {
		Items []kubeNode `json:"items"`
	}
	if err := em.kubeGet(ctx, "/api/v1/nodes", &list); err != nil {
		return nil, err
	}
	return list.Items, nil
}

func (em *emulator) anyNodeReady(ctx context.Context) error {
	nodes, err := em.kubeNodes(ctx)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.ready() {
			return nil
		}
	}
	return errors.New("no Kubernetes node is Ready")
}
