// Command blockd is a block-storage daemon that speaks QMP like
// qemu-storage-daemon 7.2: one process owns a graph of block nodes, serves
// them over NBD and is driven over QMP on UNIX sockets.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/blockd/blockd/pkg/blockdev"
	"github.com/blockd/blockd/pkg/metrics"
	"github.com/blockd/blockd/pkg/qmp"

	// The drivers register themselves.
	_ "github.com/blockd/blockd/pkg/filters"
	_ "github.com/blockd/blockd/pkg/formats/file"
	_ "github.com/blockd/blockd/pkg/formats/nbd"
	_ "github.com/blockd/blockd/pkg/formats/nullco"
	_ "github.com/blockd/blockd/pkg/formats/qcow2"
	_ "github.com/blockd/blockd/pkg/formats/raw"
	_ "github.com/blockd/blockd/pkg/formats/rbd"
	_ "github.com/blockd/blockd/pkg/formats/snapshotaccess"
)

// Version is blockd's own version; query-version reports the QEMU version
// blockd is compatible with.
var Version = "0.1.0"

const usage = `Usage: blockd [options]
A block-storage daemon compatible with qemu-storage-daemon 7.2's QMP.

  -h, --help                 print this help and exit
  -V, --version              print the version and exit
  --qmp PATH                 serve QMP on a UNIX socket at PATH (shorthand
                             for --chardev/--monitor)
  --chardev socket,id=ID,path=PATH[,server=on][,wait=off]
                             a UNIX socket for a monitor
  --chardev socket,id=ID,host=HOST,port=PORT[,server=on][,wait=off]
                             a TCP socket for a monitor
  --chardev stdio,id=ID      stdin and stdout for a monitor; the daemon
                             exits when stdin closes
  --monitor [chardev=]ID[,mode=control][,pretty=on|off]
                             serve QMP on that socket
  --blockdev OPTIONS         add a node (key=value[,...] with dotted keys,
                             or a JSON object), like QMP blockdev-add
  --object OPTIONS           add an object, like QMP object-add
                             (throttle-group,id=ID,limits.iops-total=N,...)
  --nbd-server addr.type=unix,addr.path=PATH[,max-connections=N]
  --nbd-server addr.type=inet,addr.host=HOST,addr.port=PORT
                             start the NBD server
  --export [type=]nbd,id=ID,node-name=NODE[,name=NAME][,writable=on]
           [,description=TEXT][,allocation-depth=on]
                             export a node over NBD
  --export [type=]fuse,id=ID,node-name=NODE,mountpoint=FILE[,writable=on]
           [,growable=on][,allow-other=on|off|auto]
                             serve a node as the regular file FILE (FUSE)
  --metrics unix:PATH|tcp:HOST:PORT
                             serve Prometheus metrics at /metrics there
                             (off by default; blockd only, not qsd)
  --pidfile PATH             write the daemon's PID to PATH
  --daemonize                detach once everything is set up
  --log-level LEVEL          panic, fatal, error, warn, info, debug, trace
                             (default info)
  --log-format text|json     log format (default text)

Options are applied in the order given. SIGTERM and SIGINT shut the daemon
down cleanly; so does the QMP command quit.

Environment: BLOCKD_CPUPROFILE=FILE writes a Go CPU profile of the run to
FILE (a %p in FILE becomes the PID), for go tool pprof.
`

type option struct{ name, value string }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func parseArgs(argv []string) ([]option, error) {
	var opts []option
	takesValue := map[string]bool{
		"qmp": true, "chardev": true, "monitor": true, "blockdev": true, "object": true,
		"nbd-server": true, "export": true, "pidfile": true, "metrics": true, "log-level": true, "log-format": true,
		"trace": true, "T": true,
	}
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if !strings.HasPrefix(a, "-") {
			return nil, fmt.Errorf("unexpected argument '%s'", a)
		}
		name := strings.TrimLeft(a, "-")
		value, hasValue := "", false
		if k, v, ok := strings.Cut(name, "="); ok {
			name, value, hasValue = k, v, true
		}
		switch name {
		case "h", "help", "V", "version", "daemonize":
			opts = append(opts, option{name: name})
			continue
		}
		if !takesValue[name] {
			return nil, fmt.Errorf("unknown option '%s'", a)
		}
		if !hasValue {
			if i+1 >= len(argv) {
				return nil, fmt.Errorf("option '%s' needs an argument", a)
			}
			i++
			value = argv[i]
		}
		opts = append(opts, option{name, value})
	}
	return opts, nil
}

func run(argv []string, stdout, stderr io.Writer) int {
	opts, err := parseArgs(argv)
	if err != nil {
		fmt.Fprintf(stderr, "blockd: %v\n%s", err, "Try 'blockd --help' for more information.\n")
		return 1
	}
	log := logrus.New()
	log.SetOutput(stderr)
	daemonize := false
	pidfile := ""
	withMetrics := false
	for _, o := range opts {
		switch o.name {
		case "h", "help":
			io.WriteString(stdout, usage) //nolint:errcheck // nowhere to report it
			return 0
		case "V", "version":
			fmt.Fprintf(stdout, "blockd %s (QMP compatible with qemu-storage-daemon 7.2)\n", Version)
			return 0
		case "daemonize":
			daemonize = true
		case "pidfile":
			pidfile = o.value
		case "metrics":
			withMetrics = true
		case "log-level":
			lvl, err := logrus.ParseLevel(o.value)
			if err != nil {
				fmt.Fprintf(stderr, "blockd: --log-level: %v\n", err)
				return 1
			}
			log.SetLevel(lvl)
		case "log-format":
			switch o.value {
			case "text":
				log.SetFormatter(&logrus.TextFormatter{})
			case "json":
				log.SetFormatter(&logrus.JSONFormatter{})
			default:
				fmt.Fprintf(stderr, "blockd: --log-format must be text or json\n")
				return 1
			}
		}
	}
	if daemonize && os.Getenv(daemonEnv) == "" {
		return parentOfDaemon(argv, stderr)
	}
	// Catch signals before any socket exists: a client may signal as soon
	// as it can connect, and a signal during set-up is served after it.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer startProfile(stderr)()
	d := newDaemon(log, withMetrics)
	if err := d.setup(opts); err != nil {
		d.shutdown()
		reportReady(err)
		fmt.Fprintf(stderr, "blockd: %v\n", err)
		return 1
	}
	if pidfile != "" {
		f, err := writePidfile(pidfile)
		if err != nil {
			d.shutdown()
			reportReady(err)
			fmt.Fprintf(stderr, "blockd: %v\n", err)
			return 1
		}
		// The lock lasts as long as the daemon: remove the file while it
		// is still ours.
		defer f.Close()
		defer os.Remove(pidfile)
	}
	reportReady(nil)
	log.WithField("version", Version).Info("blockd ready")
	select {
	case sig := <-sigs:
		log.WithField("signal", sig.String()).Info("shutting down")
		d.q.Close()
		d.shutdown()
	case <-d.q.Done():
		log.Info("quit")
		d.shutdown()
	case <-d.stdioDone:
		log.Info("stdin closed: shutting down")
		d.q.Close()
		d.shutdown()
	}
	return 0
}

type daemon struct {
	log      logrus.FieldLogger
	bd       *blockdev.Server
	q        *qmp.Server
	qmpCount int // --qmp monitors so far, for their chardevs' ids
	monitors []net.Listener
	// afterSetup starts serving the NBD server and the monitors once
	// every option is done: a client that connects early waits for its
	// greeting, as with qsd, instead of seeing a graph that is half made.
	afterSetup []func()

	stdioDone chan struct{} // closed when a stdio monitor's client is gone

	metrics     *metrics.Registry // nil without --metrics
	metricsEnds []net.Listener
}

// newDaemon makes the daemon's servers; withMetrics makes them count
// what --metrics will serve.
func newDaemon(log logrus.FieldLogger, withMetrics bool) *daemon {
	d := &daemon{log: log, stdioDone: make(chan struct{})}
	d.bd = blockdev.New(log)
	var onCommand func(string, qmp.Class)
	if withMetrics {
		d.metrics = metrics.New(metrics.Sources{Graph: d.bd.G, Jobs: d.bd.Jobs, NBD: d.bd.NBDLoad})
		onCommand = d.metrics.OnCommand
	}
	d.q = qmp.NewServer(qmp.ServerOptions{
		Version:   qmp.VersionInfo{Major: 7, Minor: 2, Micro: 22, Package: "blockd " + Version},
		Logger:    log.WithField("component", "qmp"),
		Quit:      d.bd.Shutdown,
		OnCommand: onCommand,
	})
	d.bd.Register(d.q)
	// The NBD server's release comes first, so that a client greeted on
	// QMP finds it accepting.
	d.afterSetup = []func(){d.bd.HoldNBDServing()}
	return d
}

// shutdown closes every node; after quit it has nothing left to do.
func (d *daemon) shutdown() {
	d.bd.Shutdown(context.Background())
	d.q.Close()
	d.bd.Chardevs.Close() // after the monitors' last replies
	for _, l := range d.metricsEnds {
		l.Close() // a UNIX listener removes its socket file
	}
}

// serveMetrics serves the metrics endpoint --metrics names.
func (d *daemon) serveMetrics(addr string) error {
	l, err := metrics.Listen(addr)
	if err != nil {
		return err
	}
	d.metricsEnds = append(d.metricsEnds, l)
	go func() {
		if err := d.metrics.Serve(l); err != nil {
			d.log.WithError(err).Error("metrics endpoint stopped")
		}
	}()
	return nil
}

func (d *daemon) setup(opts []option) error {
	ctx := context.Background()
	for _, o := range opts {
		var err error
		switch o.name {
		case "qmp":
			err = d.qmpMonitor(o.value)
		case "chardev":
			err = d.chardev(o.value)
		case "monitor":
			err = d.monitor(o.value)
		case "blockdev":
			err = d.blockdev(ctx, o.value)
		case "object":
			err = d.object(ctx, o.value)
		case "nbd-server":
			err = d.nbdServer(ctx, o.value)
		case "export":
			err = d.export(ctx, o.value)
		case "metrics":
			err = d.serveMetrics(o.value)
		}
		if err != nil {
			return fmt.Errorf("--%s %s: %w", o.name, o.value, err)
		}
	}
	// The chardevs no monitor took serve now, not while a later
	// --monitor could still take them.
	d.bd.Chardevs.Start()
	for _, start := range d.afterSetup {
		start()
	}
	return nil
}

func (d *daemon) blockdev(ctx context.Context, s string) error {
	var raw json.RawMessage
	if strings.HasPrefix(strings.TrimSpace(s), "{") {
		raw = json.RawMessage(s)
	} else {
		// As qsd: a leading bare value is the driver.
		kv, err := blockdev.ParseKeyval(s, "driver")
		if err != nil {
			return err
		}
		if raw, err = blockdev.KeyvalBlockdev(kv); err != nil {
			return err
		}
	}
	return d.bd.Execute(ctx, "blockdev-add", raw)
}

func (d *daemon) object(ctx context.Context, s string) error {
	var raw json.RawMessage
	if strings.HasPrefix(strings.TrimSpace(s), "{") {
		raw = json.RawMessage(s)
	} else {
		kv, err := blockdev.ParseKeyval(s, "qom-type")
		if err != nil {
			return err
		}
		if raw, err = blockdev.KeyvalObject(kv); err != nil {
			return err
		}
	}
	return d.bd.Execute(ctx, "object-add", raw)
}

// nbdServer takes qsd's --nbd-server, whose address is the flat
// SocketAddress, and starts the server as nbd-server-start would.
func (d *daemon) nbdServer(ctx context.Context, s string) error {
	var m map[string]any
	if strings.HasPrefix(strings.TrimSpace(s), "{") {
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			return err
		}
	} else {
		kv, err := blockdev.ParseKeyval(s, "")
		if err != nil {
			return err
		}
		m = kv
		if v, ok := m["max-connections"].(string); ok {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return fmt.Errorf("Parameter 'max-connections' expects uint32_t")
			}
			m["max-connections"] = n
		}
	}
	addr, ok := m["addr"].(map[string]any)
	if !ok {
		return fmt.Errorf("Parameter 'addr' is missing")
	}
	typ := addr["type"]
	delete(addr, "type")
	m["addr"] = map[string]any{"type": typ, "data": addr}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return d.bd.Execute(ctx, "nbd-server-start", raw)
}

func (d *daemon) export(ctx context.Context, s string) error {
	var raw json.RawMessage
	if strings.HasPrefix(strings.TrimSpace(s), "{") {
		raw = json.RawMessage(s)
	} else {
		kv, err := blockdev.ParseKeyval(s, "type")
		if err != nil {
			return err
		}
		if raw, err = blockdev.KeyvalExport(kv); err != nil {
			return err
		}
	}
	return d.bd.Execute(ctx, "block-export-add", raw)
}

// writePidfile writes the daemon's PID into path and keeps it locked
// (the returned file stays open), so that a second daemon with the same
// pid file refuses to start.
func writePidfile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot create PID file: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("Cannot lock pid file '%s': another daemon uses it", path)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := fmt.Fprintf(f, "%d\n", os.Getpid()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
