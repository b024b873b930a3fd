package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// argKind is the schema type of a job command's argument.
type argKind int

const (
	argString argKind = iota
	argInt
	argBool
	argEnum
)

// jobArg is one argument of a job command, with its QMP name as the
// flag's name.
type jobArg struct {
	name     string
	kind     argKind
	required bool
	values   []string // argEnum: the values, for --help and completion
	help     string
}

// jobCommand is a blockctl command that starts a block job.
type jobCommand struct {
	use, qmp, short, long, example string
	args                           []jobArg
}

var (
	onError   = []string{"report", "ignore", "enospc", "stop", "auto"}
	syncModes = []string{"top", "full", "none", "incremental", "bitmap"}
	// Arguments every job command has.
	commonJobArgs = []jobArg{
		{"job-id", argString, false, nil, "the job's id (with --wait, default: the device)"},
		{"device", argString, true, nil, "the node the job works on"},
		{"speed", argInt, false, nil, "rate limit in bytes per second (k, M, G suffixes; 0: none)"},
		{"auto-finalize", argBool, false, nil, "finalize without job-finalize (default true)"},
		{"auto-dismiss", argBool, false, nil, "dismiss once concluded (default true)"},
		{"filter-node-name", argString, false, nil, "the name of the job's implicit filter node"},
	}
)

// The argument tables of qemu-storage-daemon 7.2's block-stream,
// block-commit, blockdev-mirror and blockdev-backup (blockd's are the
// same, and it may lack a command: the daemon's error says so).
var jobCommands = []jobCommand{{
	use: "stream", qmp: "block-stream", short: "Copy data from backing nodes into a node (block-stream)",
	example: `  blockctl stream --job-id s0 --device top --base-node base --wait
  blockctl stream --device top --speed 10M --wait`,
	args: append(commonJobArgs[:len(commonJobArgs):len(commonJobArgs)],
		jobArg{"base-node", argString, false, nil, "stream down to (not including) this node"},
		jobArg{"base", argString, false, nil, "the same, by file name"},
		jobArg{"bottom", argString, false, nil, "the last node to stream from"},
		jobArg{"backing-file", argString, false, nil, "the backing file name written into the image"},
		jobArg{"on-error", argEnum, false, onError, "what to do on an I/O error"}),
}, {
	use: "commit", qmp: "block-commit", short: "Commit a node's data down into a backing node (block-commit)",
	example: `  blockctl commit --job-id c0 --device top --top-node mid --base-node base --wait
  blockctl commit --job-id c1 --device top --wait --complete   # active commit`,
	args: append(commonJobArgs[:len(commonJobArgs):len(commonJobArgs)],
		jobArg{"top-node", argString, false, nil, "the top of the data to commit (default: device, an active commit)"},
		jobArg{"base-node", argString, false, nil, "the node to commit into (default: the bottom of the chain)"},
		jobArg{"top", argString, false, nil, "top-node by file name (deprecated)"},
		jobArg{"base", argString, false, nil, "base-node by file name (deprecated)"},
		jobArg{"backing-file", argString, false, nil, "the backing file name written into the image above base"},
		jobArg{"on-error", argEnum, false, onError, "what to do on an I/O error"}),
}, {
	use: "mirror", qmp: "blockdev-mirror", short: "Mirror a node to a target node (blockdev-mirror)",
	example: `  blockctl mirror --job-id m0 --device top --target copy --sync full --wait --complete`,
	args: append(commonJobArgs[:len(commonJobArgs):len(commonJobArgs)],
		jobArg{"target", argString, true, nil, "the node to mirror to"},
		jobArg{"sync", argEnum, true, syncModes, "what to copy"},
		jobArg{"replaces", argString, false, nil, "the node the target replaces on completion (default: device)"},
		jobArg{"granularity", argInt, false, nil, "dirty bitmap granularity in bytes (a power of 2)"},
		jobArg{"buf-size", argInt, false, nil, "bytes in flight at most"},
		jobArg{"on-source-error", argEnum, false, onError, "what to do on a read error"},
		jobArg{"on-target-error", argEnum, false, onError, "what to do on a write error"},
		jobArg{"copy-mode", argEnum, false, []string{"background", "write-blocking"}, "how guest writes reach the target"}),
}, {
	use: "backup", qmp: "blockdev-backup", short: "Back a node up to a target node (blockdev-backup)",
	long: `backup sends blockdev-backup. blockd may not have that command yet; the
daemon then answers CommandNotFound, and blockctl prints it and exits 1.`,
	example: `  blockctl backup --job-id b0 --device top --target bak --sync full --wait`,
	args: append(commonJobArgs[:len(commonJobArgs):len(commonJobArgs)],
		jobArg{"target", argString, true, nil, "the node to back up to"},
		jobArg{"sync", argEnum, true, syncModes, "what to copy"},
		jobArg{"bitmap", argString, false, nil, "the dirty bitmap of an incremental backup"},
		jobArg{"bitmap-mode", argEnum, false, []string{"on-success", "never", "always"}, "when the bitmap is synchronised"},
		jobArg{"compress", argBool, false, nil, "compress the data written to the target"},
		jobArg{"on-source-error", argEnum, false, onError, "what to do on a read error"},
		jobArg{"on-target-error", argEnum, false, onError, "what to do on a write error"}),
}}

// intValue is an integer flag that takes k, M, G, T suffixes (binary).
type intValue int64

func (v *intValue) String() string { return strconv.FormatInt(int64(*v), 10) }
func (v *intValue) Type() string   { return "int" }
func (v *intValue) Set(s string) error {
	n, err := parseInt(s)
	if err != nil {
		return err
	}
	*v = intValue(n)
	return nil
}

// parseInt reads an integer with an optional binary suffix: 64k, 10M.
func parseInt(s string) (int64, error) {
	shift := 0
	if i := len(s) - 1; i > 0 {
		if p := strings.IndexByte("kMGT", s[i]); p >= 0 {
			shift, s = 10*(p+1), s[:i]
		} else if s[i] == 'K' {
			shift, s = 10, s[:i]
		}
	}
	n, err := strconv.ParseInt(s, 0, 64)
	if err != nil || n<<shift>>shift != n {
		return 0, fmt.Errorf("not an integer: %q", s)
	}
	return n << shift, nil
}

// addJobFlags declares a flag for each argument of the command.
func addJobFlags(fs *pflag.FlagSet, args []jobArg) {
	for _, a := range args {
		help := a.help
		if a.kind == argEnum {
			help += " (" + strings.Join(a.values, ", ") + ")"
		}
		switch a.kind {
		case argInt:
			fs.Var(new(intValue), a.name, help)
		case argBool:
			fs.Bool(a.name, false, help)
		default:
			fs.String(a.name, "", help)
		}
	}
}

// jobArgs collects the arguments given on the command line, typed as
// the schema types them; arguments not given are not sent.
func jobArgs(fs *pflag.FlagSet, args []jobArg) (map[string]any, error) {
	out := map[string]any{}
	for _, a := range args {
		f := fs.Lookup(a.name)
		if !f.Changed {
			if a.required {
				return nil, fmt.Errorf("--%s is required", a.name)
			}
			continue
		}
		switch a.kind {
		case argInt:
			out[a.name] = int64(*f.Value.(*intValue))
		case argBool:
			b, err := fs.GetBool(a.name)
			if err != nil {
				return nil, err
			}
			out[a.name] = b
		default:
			out[a.name] = f.Value.String()
		}
	}
	return out, nil
}

// waitFlags are what --wait does once the job runs.
type waitFlags struct {
	wait, complete, finalize, dismiss bool
}

func (w *waitFlags) add(fs *pflag.FlagSet) {
	fs.BoolVar(&w.wait, "wait", false, "follow the job until it ends: a progress bar on a terminal, lines otherwise")
	fs.BoolVar(&w.complete, "complete", false, "complete the job when it is ready (implies --wait)")
	fs.BoolVar(&w.finalize, "finalize", false, "finalize the job when it is pending (with --auto-finalize=false; implies --wait)")
	fs.BoolVar(&w.dismiss, "dismiss", false, "dismiss the job when it has concluded (with --auto-dismiss=false; implies --wait)")
}

func (a *app) jobStartCommand(spec jobCommand) *cobra.Command {
	var wf waitFlags
	long := spec.long
	if long == "" {
		long = spec.short + "."
	}
	cmd := &cobra.Command{
		Use:   spec.use + " --device NODE [--ARGUMENT VALUE]... [--wait]",
		Short: spec.short,
		Long: long + `

The flags are the command's QMP arguments by their own names; only those
given are sent. --wait follows the job to its end and exits 1 with the
job's error if it fails or is cancelled.`,
		Example: spec.example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := jobArgs(cmd.Flags(), spec.args)
			if err != nil {
				return err
			}
			return a.startJob(cmd.Context(), spec.qmp, req, wf)
		},
	}
	addJobFlags(cmd.Flags(), spec.args)
	wf.add(cmd.Flags())
	for _, arg := range spec.args {
		if arg.kind == argEnum {
			cmd.RegisterFlagCompletionFunc(arg.name, fixedCompletion(arg.values...))
		}
	}
	return cmd
}

// jobInfo merges what query-jobs and query-block-jobs say about a job.
type jobInfo struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Status   string `json:"status"`
	Current  int64  `json:"current-progress"`
	Total    int64  `json:"total-progress"`
	Error    string `json:"error,omitempty"`
	Speed    int64  `json:"-"`
	IOStatus string `json:"-"`
}

func (a *app) jobsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "jobs",
		Short: "List the jobs (query-jobs, query-block-jobs)",
		Long: `jobs lists every job with its status and progress; block jobs also with
their rate limit and I/O status. -o json prints
{"jobs": <query-jobs>, "block-jobs": <query-block-jobs>}.`,
		Example: `  blockctl jobs
  blockctl jobs -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			jobsRaw, err := a.call(cmd.Context(), "query-jobs", nil)
			if err != nil {
				return err
			}
			blockRaw, err := a.call(cmd.Context(), "query-block-jobs", nil)
			if err != nil {
				return err
			}
			if a.json() {
				b, _ := json.Marshal(map[string]json.RawMessage{"jobs": jobsRaw, "block-jobs": blockRaw})
				return a.printJSON(b)
			}
			jobs, err := mergeJobs(jobsRaw, blockRaw)
			if err != nil {
				return err
			}
			printJobs(a.stdout, jobs)
			return nil
		},
	}
}

func mergeJobs(jobsRaw, blockRaw json.RawMessage) ([]jobInfo, error) {
	var jobs []jobInfo
	var block []struct {
		Device   string `json:"device"`
		Speed    int64  `json:"speed"`
		IOStatus string `json:"io-status"`
	}
	if err := json.Unmarshal(jobsRaw, &jobs); err != nil {
		return nil, fmt.Errorf("query-jobs: %v", err)
	}
	if err := json.Unmarshal(blockRaw, &block); err != nil {
		return nil, fmt.Errorf("query-block-jobs: %v", err)
	}
	for i := range jobs {
		for _, b := range block {
			if b.Device == jobs[i].ID {
				jobs[i].Speed, jobs[i].IOStatus = b.Speed, b.IOStatus
			}
		}
	}
	return jobs, nil
}

func printJobs(w0 io.Writer, jobs []jobInfo) {
	w := tabwriter.NewWriter(w0, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tTYPE\tSTATUS\tPROGRESS\tSPEED\tIO\tERROR")
	for _, j := range jobs {
		speed := "-"
		if j.Speed > 0 {
			speed = humanSize(j.Speed) + "/s"
		}
		ios := j.IOStatus
		if ios == "" {
			ios = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Type, j.Status,
			progressText(j.Current, j.Total), speed, ios, j.Error)
	}
	w.Flush()
}

// progressText is "45.2% (29 MiB of 64 MiB)".
func progressText(cur, total int64) string {
	if total <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%% (%s of %s)", percent(cur, total), humanSize(cur), humanSize(total))
}

// jobVerbs are 'blockctl job VERB ID', each the job-VERB command.
var jobVerbs = []struct{ verb, short string }{
	{"pause", "Pause a job"},
	{"resume", "Resume a paused job"},
	{"cancel", "Cancel a job (--force: block-job-cancel with force)"},
	{"complete", "Complete a ready job (pivot a mirror, end an active commit)"},
	{"finalize", "Finalize a pending job"},
	{"dismiss", "Dismiss a concluded job"},
}

func (a *app) jobCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job pause|resume|cancel|complete|finalize|dismiss|wait ID",
		Short: "Control a job (job-pause, job-cancel ...)",
		Example: `  blockctl job pause s0
  blockctl job cancel --force m0`,
	}
	for _, v := range jobVerbs {
		cmd.AddCommand(a.jobVerbCommand(v.verb, v.short))
	}
	cmd.AddCommand(a.jobWaitCommand())
	return cmd
}

func (a *app) jobWaitCommand() *cobra.Command {
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "wait ID [--complete] [--finalize] [--dismiss]",
		Short: "Follow a running job to its end, as --wait does for the jobs blockctl starts",
		Long: `wait follows a job that is already running (one a transaction started,
say) with the progress view of --wait, completes, finalizes or dismisses
it as asked, and exits 1 with the job's error if it fails or is
cancelled. A job that has ended and been dismissed is gone: start it with
auto-dismiss=false and wait with --dismiss.`,
		Example: `  blockctl raw transaction '{"actions": [...blockdev-backup with "job-id": "b0", "auto-dismiss": false...]}'
  blockctl job wait b0 --dismiss`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.waitJob(cmd.Context(), args[0], wf)
		},
		ValidArgsFunction: a.completeJobs,
	}
	wf.add(cmd.Flags())
	cmd.Flags().Lookup("wait").Hidden = true
	return cmd
}

func (a *app) jobVerbCommand(verb, short string) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     verb + " ID",
		Short:   short,
		Example: "  blockctl job " + verb + " s0",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, req := "job-"+verb, map[string]any{"id": args[0]}
			if force {
				// job-cancel has no force; block-job-cancel's force also
				// cancels a ready mirror without completing it.
				name, req = "block-job-cancel", map[string]any{"device": args[0], "force": true}
			}
			_, err := a.call(cmd.Context(), name, req)
			return err
		},
		ValidArgsFunction: a.completeJobs,
	}
	if verb == "cancel" {
		cmd.Flags().BoolVar(&force, "force", false, "block-job-cancel with force: no completion of a ready job")
	}
	return cmd
}

// completeJobs completes a job id from the daemon's jobs.
func (a *app) completeJobs(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ret, err := a.call(cmd.Context(), "query-jobs", nil)
	var jobs []jobInfo
	if err != nil || json.Unmarshal(ret, &jobs) != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var ids []string
	for _, j := range jobs {
		ids = append(ids, j.ID)
	}
	return ids, cobra.ShellCompDirectiveNoFileComp
}
