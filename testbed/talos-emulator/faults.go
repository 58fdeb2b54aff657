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

// record appends one line to calls.log, the emulator's record of the calls it served (one per
// target node and attempt, injected failures included), for tests to assert on.
func (em *emulator) record(format string, args ...any) {
	em.faultMu.Lock()
	defer em.faultMu.Unlock()
	f, err := os.OpenFile(filepath.Join(em.dir, "calls.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	defer f.Close() //nolint:errcheck
	_, _ = fmt.Fprintf(f, format+"\n", args...)
}

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
