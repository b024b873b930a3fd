// Command blockctl drives a block-storage daemon over QMP: blockd, or
// qemu-storage-daemon 7.2 alike, since it speaks nothing else. It shows
// the node graph as a tree, adds and deletes nodes and exports, starts
// block jobs and follows them with a progress bar, controls jobs, follows
// events and sends any command.
//
//	blockctl -s blockd.sock nodes
//	blockctl add driver=qcow2,node-name=top,file.driver=file,file.filename=top.qcow2
//	blockctl stream --job-id s0 --device top --wait
//
// Errors are one line, "blockctl: CLASS: DESC" for the daemon's errors,
// and the exit status is 1.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"github.com/spf13/cobra"
)

// defaultSocket is where blockctl looks for the daemon when neither -s
// nor BLOCKCTL_SOCKET says: the socket 'make run' starts blockd on.
const defaultSocket = "blockd.sock"

// app is one run of blockctl: the global options, the streams and the
// connection, opened by the first command that needs it.
type app struct {
	socket string
	output string
	stdout io.Writer
	stderr io.Writer
	// isTerminal says whether progress may be drawn as a bar on stdout.
	isTerminal func() bool
	client     *Client
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	a := &app{stdout: os.Stdout, stderr: os.Stderr, isTerminal: stdoutIsTerminal}
	os.Exit(a.run(ctx, os.Args[1:]))
}

// run executes one command line and returns the exit status.
func (a *app) run(ctx context.Context, args []string) int {
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	err := root.ExecuteContext(ctx)
	if a.client != nil {
		a.client.Close()
	}
	if err != nil {
		fmt.Fprintln(a.stderr, "blockctl: "+oneLine(err))
		return 1
	}
	return 0
}

// oneLine makes sure an error prints as one line.
func oneLine(err error) string {
	if errors.Is(err, context.Canceled) {
		return "interrupted"
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "blockctl",
		Short: "Drive blockd or qemu-storage-daemon over QMP",
		Long: `blockctl drives a block-storage daemon over QMP on a UNIX socket: blockd,
or qemu-storage-daemon 7.2 (start it with a --chardev socket and a
--monitor for blockctl; qsd serves one client per monitor socket).`,
		Example: `  blockctl -s /run/blockd.sock nodes
  BLOCKCTL_SOCKET=/run/blockd.sock blockctl jobs -o json`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if a.output != "text" && a.output != "json" {
				return fmt.Errorf("--output must be text or json, not %q", a.output)
			}
			return nil
		},
	}
	sock := os.Getenv("BLOCKCTL_SOCKET")
	if sock == "" {
		sock = defaultSocket
	}
	root.PersistentFlags().StringVarP(&a.socket, "socket", "s", sock, "the daemon's QMP socket; $BLOCKCTL_SOCKET sets the default")
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "text", "output format: text or json")
	root.RegisterFlagCompletionFunc("output", fixedCompletion("text", "json"))
	root.AddCommand(a.nodesCommand(), a.graphCommand(), a.addCommand(), a.delCommand(), a.createCommand(), a.exportCommand())
	for _, spec := range jobCommands {
		root.AddCommand(a.jobStartCommand(spec))
	}
	root.AddCommand(a.jobsCommand(), a.jobCommand(), a.eventsCommand(), a.rawCommand())
	root.InitDefaultCompletionCmd() // cobra's, made now to give it an example
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Example = "  source <(blockctl completion bash)\n  blockctl completion zsh > \"${fpath[1]}/_blockctl\""
		}
	}
	return root
}

// fixedCompletion completes a flag from a fixed list.
func fixedCompletion(values ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}

// conn returns the connection to the daemon, dialling it the first time.
func (a *app) conn(ctx context.Context) (*Client, error) {
	if a.client != nil {
		return a.client, nil
	}
	c, err := Dial(ctx, a.socket)
	if err != nil {
		return nil, err
	}
	a.client = c
	return c, nil
}

// call runs one command on the daemon.
func (a *app) call(ctx context.Context, name string, args any) ([]byte, error) {
	c, err := a.conn(ctx)
	if err != nil {
		return nil, err
	}
	return c.Call(ctx, name, args)
}

func (a *app) json() bool { return a.output == "json" }
