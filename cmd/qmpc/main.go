// Command qmpc sends QMP commands to a daemon's socket and prints the
// replies: a small client for trying blockd (or qemu-storage-daemon) by
// hand.
//
//	qmpc SOCKET 'COMMAND [JSON-ARGUMENTS]' ...
//	qmpc blockd.sock query-named-block-nodes
//	qmpc blockd.sock 'blockdev-add {"driver":"null-co","node-name":"n"}'
//
// Events that arrive while it waits are printed too.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: qmpc SOCKET 'COMMAND [JSON-ARGUMENTS]' ...")
		os.Exit(2)
	}
	c, err := net.Dial("unix", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "qmpc:", err)
		os.Exit(1)
	}
	defer c.Close()
	r := bufio.NewReaderSize(c, 1<<20)
	if _, err := r.ReadString('\n'); err != nil {
		fmt.Fprintln(os.Stderr, "qmpc: no greeting:", err)
		os.Exit(1)
	}
	status := 0
	cmds := append([]string{"qmp_capabilities"}, os.Args[2:]...)
	for i, cmd := range cmds {
		name, args, _ := strings.Cut(strings.TrimSpace(cmd), " ")
		req := map[string]any{"execute": name}
		if args = strings.TrimSpace(args); args != "" {
			req["arguments"] = json.RawMessage(args)
		}
		b, err := json.Marshal(req)
		if err != nil {
			fmt.Fprintf(os.Stderr, "qmpc: arguments of %s are not JSON: %v\n", name, err)
			os.Exit(2)
		}
		c.Write(append(b, '\n'))
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				fmt.Fprintln(os.Stderr, "qmpc:", err)
				os.Exit(1)
			}
			if strings.Contains(line, `"event": `) && !strings.HasPrefix(line, `{"return"`) {
				fmt.Print(line)
				continue
			}
			if i > 0 {
				fmt.Print(line)
			}
			if strings.Contains(line, `"error": `) {
				status = 1
			}
			break
		}
	}
	os.Exit(status)
}
