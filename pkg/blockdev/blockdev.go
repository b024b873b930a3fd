// Package blockdev holds the QMP command handlers: it decodes arguments,
// calls the block layer, the job runner and the NBD server, and encodes
// replies in the shapes qemu-storage-daemon 7.2 uses.
package blockdev

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/chardev"
	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/qmp"
)

// Server is the daemon's state behind the QMP commands.
type Server struct {
	G        *block.Graph
	Jobs     *jobs.Runner
	Chardevs *chardev.Registry
	log      logrus.FieldLogger
	emit     block.Emitter

	exports exportState
	mu      sync.Mutex
}

// lateEmitter hands events to the QMP server once it is set.
type lateEmitter struct {
	mu sync.RWMutex
	e  block.Emitter
}

func (l *lateEmitter) Emit(name string, data any) {
	l.mu.RLock()
	e := l.e
	l.mu.RUnlock()
	if e != nil {
		e.Emit(name, data)
	}
}

// New returns a server with an empty graph.
func New(log logrus.FieldLogger) *Server {
	if log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		log = l
	}
	em := &lateEmitter{}
	s := &Server{log: log, emit: em, Chardevs: chardev.New()}
	s.G = block.NewGraph(block.Decoder(qmp.Decode), log)
	s.G.SetEmitter(em)
	s.Jobs = jobs.NewRunner(s.G, em, log, nil)
	return s
}

// SetEmitter sets where events go (the QMP server).
func (s *Server) SetEmitter(e block.Emitter) {
	em := s.emit.(*lateEmitter)
	em.mu.Lock()
	em.e = e
	em.mu.Unlock()
}

// Register adds every command to q, and declares to q what its
// query-qmp-schema cannot learn from the commands' Go types (schema.go).
func (s *Server) Register(q *qmp.Server) {
	s.SetEmitter(q)
	declareSchema(q)
	for name, h := range s.handlers() {
		q.Handle(name, h)
	}
}

func (s *Server) handlers() map[string]qmp.Handler {
	m := map[string]qmp.Handler{
		"blockdev-add":              qmp.Declare[BlockdevOptions, empty](qmp.HandlerFunc(s.blockdevAdd)),
		"blockdev-del":              qmp.Command(s.blockdevDel),
		"block_resize":              qmp.Command(s.blockResize),
		"query-named-block-nodes":   qmp.Command(s.queryNamedBlockNodes),
		"query-block":               qmp.Command(s.queryBlock),
		"query-blockstats":          qmp.Command(s.queryBlockstats),
		"x-debug-query-block-graph": qmp.Command(s.queryBlockGraph),
		"blockdev-create":           qmp.Command(s.blockdevCreate),
		"query-jobs":                qmp.Command(s.queryJobs),
		"query-block-jobs":          qmp.Command(s.queryBlockJobs),
		"job-dismiss":               qmp.Command(s.jobVerb(jobs.VerbDismiss, false)),
		"job-finalize":              qmp.Command(s.jobVerb(jobs.VerbFinalize, false)),
		"job-cancel":                qmp.Command(s.jobVerb(jobs.VerbCancel, false)),
		"job-pause":                 qmp.Command(s.jobVerb(jobs.VerbPause, false)),
		"job-resume":                qmp.Command(s.jobVerb(jobs.VerbResume, false)),
		"job-complete":              qmp.Command(s.jobVerb(jobs.VerbComplete, false)),
		"block-job-dismiss":         qmp.Command(s.jobVerb(jobs.VerbDismiss, true)),
		"block-job-finalize":        qmp.Command(s.jobVerb(jobs.VerbFinalize, true)),
		"block-job-pause":           qmp.Command(s.blockJobDevice(jobs.VerbPause)),
		"block-job-resume":          qmp.Command(s.blockJobDevice(jobs.VerbResume)),
		"block-job-complete":        qmp.Command(s.blockJobDevice(jobs.VerbComplete)),
		"block-job-cancel":          qmp.Command(s.blockJobCancel),
		"block-job-set-speed":       qmp.Command(s.blockJobSetSpeed),
		"block-stream":              qmp.Command(s.blockStream),
		"block-commit":              qmp.Command(s.blockCommit),
		"blockdev-mirror":           qmp.Command(s.blockdevMirror),
		"drive-mirror":              qmp.Command(s.driveMirror),
		"change-backing-file":       qmp.Command(s.changeBackingFile),
		"nbd-server-start":          qmp.Command(s.nbdServerStart),
		"nbd-server-stop":           qmp.Command(s.nbdServerStop),
		"block-export-add":          qmp.Declare[BlockExportOptions, empty](qmp.HandlerFunc(s.blockExportAdd)),
		"block-export-del":          qmp.Command(s.blockExportDel),
		"query-block-exports":       qmp.Command(s.queryBlockExports),
		"nbd-server-add":            qmp.WithFeatures(qmp.Command(s.nbdServerAdd), "deprecated"),
		"nbd-server-remove":         qmp.WithFeatures(qmp.Command(s.nbdServerRemove), "deprecated"),
		"blockdev-snapshot":         qmp.Command(s.blockdevSnapshot),
		"blockdev-snapshot-sync":    qmp.Command(s.blockdevSnapshotSync),
		"transaction":               qmp.Command(s.transaction),
		"blockdev-reopen":           qmp.Command(s.blockdevReopen),
		"object-add":                qmp.Declare[ObjectOptions, empty](qmp.HandlerFunc(s.objectAdd)),
		"object-del":                qmp.Command(s.objectDel),
		"qom-get":                   qmp.Command(s.qomGet),
		"qom-set":                   qmp.Command(s.qomSet),
		"qom-list":                  qmp.Command(s.qomList),
		"block-set-write-threshold": qmp.Command(s.blockSetWriteThreshold),
		"x-blockdev-set-iothread":   qmp.Command(s.xBlockdevSetIOThread),
		"qom-list-types":            qmp.Command(s.qomListTypes),
		"qom-list-properties":       qmp.Command(s.qomListProperties),
		"x-blockdev-change":         qmp.Command(s.xBlockdevChange),
		"x-blockdev-amend":          qmp.Command(s.xBlockdevAmend),

		"blockdev-snapshot-internal-sync":        qmp.Command(s.blockdevSnapshotInternalSync),
		"blockdev-snapshot-delete-internal-sync": qmp.Command(s.blockdevSnapshotDeleteInternalSync),
	}
	m["x-debug-block-dirty-bitmap-sha256"] = qmp.Command(s.xDebugBitmapSHA256)
	m["blockdev-backup"] = qmp.Command(s.blockdevBackup)
	m["drive-backup"] = qmp.WithFeatures(qmp.Command(s.driveBackup), "deprecated")
	for name, c := range bitmapCommands {
		m[name] = c.handler(s)
	}
	for name, h := range s.Chardevs.Handlers() {
		m[name] = h
	}
	return m
}

// Shutdown tears everything down the way qsd's quit does: jobs are
// cancelled, exports deleted (with their events), nodes flushed and closed.
func (s *Server) Shutdown(ctx context.Context) {
	// compat(qsd-7.2): qsd drains every node before it cancels the jobs,
	// so running jobs report paused and running (ready ones standby and
	// ready) before they abort.
	drain := s.G.Begin()
	drain.Drain(s.G.Nodes()...)
	drain.Abort()
	s.Jobs.Close()
	s.stopExports(ctx)
	tx := s.G.Begin()
	tx.CloseAll()
	if err := tx.Commit(); err != nil {
		s.log.WithError(err).Warn("shutdown: closing nodes")
	}
}

type empty struct{}

// args turns absent arguments into an empty object.
func args(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || string(raw) == "null" {
		return json.RawMessage("{}")
	}
	return raw
}

// Execute runs a command as if a QMP client had sent it; the command
// line's --blockdev, --object, --nbd-server and --export use it.
func (s *Server) Execute(ctx context.Context, name string, args json.RawMessage) error {
	h, ok := s.handlers()[name]
	if !ok {
		return fmt.Errorf("The command %s has not been found", name)
	}
	_, err := h.ServeQMP(ctx, args)
	return err
}
