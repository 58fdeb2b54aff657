package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fault applies the test's fault injection for cmd on node (not Talos behaviour): a file
// fail/<cmd>@<node> or fail/<cmd> holding "transient N" fails the next N calls with
// Unavailable, "permanent" fails every call with InvalidArgument.
func (em *emulator) fault(cmd, node string) error {
	em.faultMu.Lock()
	defer em.faultMu.Unlock()
	for _, name := range []string{cmd + "@" + node, cmd} {
		path := filepath.Join(em.dir, "fail", name)
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		fields := strings.Fields(string(data))
		if len(fields) == 0 {
			return nil
		}
		switch fields[0] {
		case "permanent":
			return status.Errorf(codes.InvalidArgument, "emulator: injected permanent failure of %s on %s", cmd, node)
		case "transient":
			left := 0
			if len(fields) > 1 {
				left, _ = strconv.Atoi(fields[1])
			}
			if left <= 0 {
				return nil
			}
			_ = os.WriteFile(path, []byte(fmt.Sprintf("transient %d\n", left-1)), 0o600)
			return status.Errorf(codes.Unavailable,
				"emulator: injected transient failure of %s on %s: connection refused", cmd, node)
		}
		return nil
	}
	return nil
}
