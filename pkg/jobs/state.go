package jobs

// Status is a job's state, with QMP's names.
type Status string

const (
	Undefined Status = "undefined"
	Created   Status = "created"
	Running   Status = "running"
	Paused    Status = "paused"
	Ready     Status = "ready"
	Standby   Status = "standby"
	Waiting   Status = "waiting"
	Pending   Status = "pending"
	Aborting  Status = "aborting"
	Concluded Status = "concluded"
	Null      Status = "null"
)

// next lists, for each status, the statuses a job may move to. It is the
// whole state machine (QEMU 7.2's table).
var next = map[Status][]Status{
	Undefined: {Created},
	Created:   {Running, Aborting, Null},
	Running:   {Paused, Ready, Waiting, Aborting},
	Paused:    {Running},
	Ready:     {Standby, Waiting, Aborting},
	Standby:   {Ready},
	Waiting:   {Pending, Aborting},
	Pending:   {Aborting, Concluded},
	Aborting:  {Aborting, Concluded},
	Concluded: {Null},
}

// Verb is a command a job may accept.
type Verb string

const (
	VerbCancel   Verb = "cancel"
	VerbPause    Verb = "pause"
	VerbResume   Verb = "resume"
	VerbSetSpeed Verb = "set-speed"
	VerbComplete Verb = "complete"
	VerbFinalize Verb = "finalize"
	VerbDismiss  Verb = "dismiss"
)

// allowed lists the statuses in which each verb is accepted (QEMU 7.2's
// JobVerbTable: a job that is already aborting cannot be cancelled again,
// and a ready job paused into standby can still be completed).
var allowed = map[Verb][]Status{
	VerbCancel:   {Created, Running, Paused, Ready, Standby, Waiting, Pending},
	VerbPause:    {Created, Running, Paused, Ready, Standby},
	VerbResume:   {Created, Running, Paused, Ready, Standby},
	VerbSetSpeed: {Created, Running, Paused, Ready, Standby},
	VerbComplete: {Ready, Standby},
	VerbFinalize: {Pending},
	VerbDismiss:  {Concluded},
}

func canMove(from, to Status) bool {
	for _, s := range next[from] {
		if s == to {
			return true
		}
	}
	return false
}

func accepts(v Verb, s Status) bool {
	for _, x := range allowed[v] {
		if x == s {
			return true
		}
	}
	return false
}
