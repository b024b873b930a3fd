package jobs

import "github.com/blockd/blockd/pkg/block"

// The data of the events jobs emit (job.go, blockjob.go build them as
// maps), declared for query-qmp-schema. The iotest TestQMPSchemaEvents
// checks the events a job sends against the schema, on blockd and qsd.

func init() {
	block.DeclareEvent("JOB_STATUS_CHANGE", StatusChangeEvent{})
	block.DeclareEvent("BLOCK_JOB_PENDING", PendingEvent{})
	block.DeclareEvent("BLOCK_JOB_READY", BlockJobEvent{})
	block.DeclareEvent("BLOCK_JOB_CANCELLED", BlockJobEvent{})
	block.DeclareEvent("BLOCK_JOB_COMPLETED", CompletedEvent{})
	block.DeclareEvent("BLOCK_JOB_ERROR", ErrorEvent{})
}

// StatusChangeEvent is JOB_STATUS_CHANGE's data.
type StatusChangeEvent struct {
	ID     string `json:"id"`
	Status Status `json:"status"`
}

// PendingEvent is BLOCK_JOB_PENDING's data.
type PendingEvent struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

// BlockJobEvent is the data of BLOCK_JOB_READY and BLOCK_JOB_CANCELLED.
type BlockJobEvent struct {
	Type   string `json:"type"`
	Device string `json:"device"`
	Len    int64  `json:"len"`
	Offset int64  `json:"offset"`
	Speed  int64  `json:"speed"`
}

// CompletedEvent is BLOCK_JOB_COMPLETED's data: Error is set when the
// job failed.
type CompletedEvent struct {
	BlockJobEvent
	Error string `json:"error,omitempty"`
}

// ErrorEvent is BLOCK_JOB_ERROR's data.
type ErrorEvent struct {
	Device    string `json:"device"`
	Operation string `json:"operation"` // read, write
	Action    Action `json:"action"`
}

// EnumValues lists the statuses for the schema (QMP's JobStatus).
func (Status) EnumValues() []string {
	return []string{"undefined", "created", "running", "paused", "ready", "standby", "waiting",
		"pending", "aborting", "concluded", "null"}
}

// EnumValues lists the actions for the schema (QMP's BlockErrorAction).
func (Action) EnumValues() []string { return []string{"ignore", "report", "stop"} }
