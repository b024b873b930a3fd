package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/blockd/blockd/pkg/blockdev"

	// blockd's --blockdev parser types each value by the driver's options,
	// so the drivers it knows must be registered.
	_ "github.com/blockd/blockd/pkg/filters"
	_ "github.com/blockd/blockd/pkg/formats/file"
	_ "github.com/blockd/blockd/pkg/formats/nbd"
	_ "github.com/blockd/blockd/pkg/formats/nullco"
	_ "github.com/blockd/blockd/pkg/formats/qcow2"
	_ "github.com/blockd/blockd/pkg/formats/raw"
	_ "github.com/blockd/blockd/pkg/formats/rbd"
	_ "github.com/blockd/blockd/pkg/formats/snapshotaccess"
)

// blockdevArgs turns 'blockctl add' arguments into blockdev-add's: one
// JSON object, or KEY=VALUE items with dotted keys exactly as blockd's
// (and qsd's) --blockdev takes them. Several arguments are joined with
// commas, so "driver=raw file.driver=file" works as well as
// "driver=raw,file.driver=file".
func blockdevArgs(args []string) (json.RawMessage, error) {
	return optionArgs(args, "", blockdev.KeyvalBlockdev)
}

// exportArgs does the same for block-export-add, like --export, whose
// first item may be the bare type ("nbd,id=e0,node-name=top").
func exportArgs(args []string) (json.RawMessage, error) {
	return optionArgs(args, "type", blockdev.KeyvalExport)
}

func optionArgs(args []string, implied string, typed func(map[string]any) (json.RawMessage, error)) (json.RawMessage, error) {
	if len(args) == 1 && strings.HasPrefix(strings.TrimSpace(args[0]), "{") {
		if !json.Valid([]byte(args[0])) {
			return nil, fmt.Errorf("not a JSON object: %s", args[0])
		}
		return json.RawMessage(args[0]), nil
	}
	kv, err := blockdev.ParseKeyval(strings.Join(args, ","), implied)
	if err != nil {
		return nil, err
	}
	return typed(kv)
}

func (a *app) addCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "add KEY=VALUE[,KEY=VALUE...]... | '{JSON}'",
		Short: "Add a block node (blockdev-add)",
		Long: `add sends blockdev-add with the options given as dotted KEY=VALUE items,
the syntax of the daemon's --blockdev option (",," for a comma in a value),
or as one JSON object. Values are typed by blockd's driver options
(on/off for booleans, numbers, 1M-style sizes where the option is a
size); for a driver blockd does not have, use the JSON form.`,
		Example: `  blockctl add driver=qcow2,node-name=top,file.driver=file,file.filename=top.qcow2
  blockctl add driver=null-co node-name=n size=1073741824 read-zeroes=on
  blockctl add '{"driver":"raw","node-name":"r","file":{"driver":"file","filename":"a.raw"}}'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := blockdevArgs(args)
			if err != nil {
				return err
			}
			_, err = a.call(cmd.Context(), "blockdev-add", opts)
			return err
		},
	}
}

func (a *app) delCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "del NODE",
		Short:   "Delete a block node (blockdev-del)",
		Example: `  blockctl del top`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := a.call(cmd.Context(), "blockdev-del", map[string]any{"node-name": args[0]})
			return err
		},
		ValidArgsFunction: a.completeNodes,
	}
}

// completeNodes completes a node name from the daemon's nodes.
func (a *app) completeNodes(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ret, err := a.call(cmd.Context(), "query-named-block-nodes", map[string]any{"flat": true})
	var nodes []namedNode
	if err != nil || json.Unmarshal(ret, &nodes) != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.NodeName)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

func (a *app) exportCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Add, delete and list exports",
		Example: `  blockctl export add nbd,id=e0,node-name=top,writable=on
  blockctl export list
  blockctl export del e0`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "add KEY=VALUE[,KEY=VALUE...]... | '{JSON}'",
		Short: "Export a node (block-export-add)",
		Long: `export add sends block-export-add with the options of the daemon's
--export option, or one JSON object. The NBD server must be running
(blockd --nbd-server, or 'blockctl raw nbd-server-start ...').`,
		Example: `  blockctl export add nbd,id=e0,node-name=top,writable=on
  blockctl export add type=nbd id=e1 node-name=base name=base-image`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := exportArgs(args)
			if err != nil {
				return err
			}
			_, err = a.call(cmd.Context(), "block-export-add", opts)
			return err
		},
	}, a.exportDelCommand(), a.exportListCommand())
	return cmd
}

func (a *app) exportDelCommand() *cobra.Command {
	var hard bool
	cmd := &cobra.Command{
		Use:   "del ID",
		Short: "Delete an export (block-export-del)",
		Long: `export del deletes an export; by default (mode safe) the daemon refuses
while clients are connected, --hard disconnects them.`,
		Example: `  blockctl export del e0
  blockctl export del --hard e0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := map[string]any{"id": args[0]}
			if hard {
				req["mode"] = "hard"
			}
			_, err := a.call(cmd.Context(), "block-export-del", req)
			return err
		},
	}
	cmd.Flags().BoolVar(&hard, "hard", false, "disconnect the export's clients (mode hard)")
	return cmd
}

func (a *app) exportListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List the exports (query-block-exports)",
		Example: `  blockctl export list -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ret, err := a.call(cmd.Context(), "query-block-exports", nil)
			if err != nil || a.json() {
				if err == nil {
					err = a.printJSON(ret)
				}
				return err
			}
			var exports []struct {
				blockExport
				ShuttingDown bool `json:"shutting-down"`
			}
			if err := json.Unmarshal(ret, &exports); err != nil {
				return err
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tTYPE\tNODE\tSTATE")
			for _, e := range exports {
				state := "active"
				if e.ShuttingDown {
					state = "shutting down"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.ID, e.Type, e.NodeName, state)
			}
			return w.Flush()
		},
	}
}
