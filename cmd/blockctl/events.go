package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"
)

func (a *app) rawCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "raw COMMAND ['{JSON-ARGUMENTS}']",
		Short: "Send any QMP command and print its result",
		Long: `raw sends one QMP command with optional JSON arguments and prints the
"return" value: indented with -o text, as one line with -o json.`,
		Example: `  blockctl raw query-version
  blockctl raw nbd-server-start '{"addr":{"type":"unix","data":{"path":"nbd.sock"}}}'`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var params any // nil: no "arguments" member at all
			if len(args) == 2 {
				if !json.Valid([]byte(args[1])) {
					return fmt.Errorf("arguments of %s are not JSON: %s", args[0], args[1])
				}
				params = json.RawMessage(args[1])
			}
			ret, err := a.call(cmd.Context(), args[0], params)
			if err != nil {
				return err
			}
			return a.printJSON(ret)
		},
	}
}

// printJSON prints a JSON value: compact with -o json, indented otherwise.
func (a *app) printJSON(v json.RawMessage) error {
	var b bytes.Buffer
	var err error
	if a.json() {
		err = json.Compact(&b, v)
	} else {
		err = json.Indent(&b, v, "", "  ")
	}
	if err != nil {
		return err
	}
	b.WriteByte('\n')
	_, err = a.stdout.Write(b.Bytes())
	return err
}

func (a *app) eventsCommand() *cobra.Command {
	var count int
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow the daemon's events",
		Long: `events prints every event the daemon sends, one line each, until
interrupted (or after --count events): the time, the name and the data as
key=value with -o text; the event as the daemon sent it with -o json.`,
		Example: `  blockctl events
  blockctl events -o json --count 1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.conn(cmd.Context())
			if err != nil {
				return err
			}
			sub := c.Subscribe()
			defer sub.Stop()
			for n := 0; count == 0 || n < count; n++ {
				e, err := sub.Next(cmd.Context())
				if err != nil {
					return err
				}
				if a.json() {
					fmt.Fprintf(a.stdout, "%s\n", compact(e.Raw))
				} else {
					fmt.Fprintln(a.stdout, formatEvent(e))
				}
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&count, "count", "n", 0, "exit after this many events (0: never)")
	return cmd
}

func compact(raw json.RawMessage) []byte {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return raw
	}
	return b.Bytes()
}

// formatEvent renders an event as one readable line:
//
//	12:04:05.123456 JOB_STATUS_CHANGE id=s0 status=running
func formatEvent(e Event) string {
	var b strings.Builder
	b.WriteString(e.Time().Format("15:04:05.000000"))
	b.WriteByte(' ')
	b.WriteString(e.Event)
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", k, formatValue(e.Data[k]))
	}
	return b.String()
}

// formatValue prints a value of an event's data: strings bare (quoted
// when they hold spaces), numbers without exponents, the rest as JSON.
func formatValue(v any) string {
	switch x := v.(type) {
	case string:
		if x == "" || strings.ContainsAny(x, " \t\"=") {
			return fmt.Sprintf("%q", x)
		}
		return x
	case float64:
		if x == float64(int64(x)) {
			return fmt.Sprintf("%d", int64(x))
		}
		return fmt.Sprint(x)
	}
	b, _ := json.Marshal(v)
	return string(b)
}
