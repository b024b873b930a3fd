package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// startJob runs a job's start command and, with --wait, follows the job
// to its end. The events are subscribed to before the command is sent:
// a job with nothing to do may run its whole life before the reply.
func (a *app) startJob(ctx context.Context, name string, req map[string]any, wf waitFlags) error {
	if wf.complete || wf.finalize || wf.dismiss {
		wf.wait = true
	}
	c, err := a.conn(ctx)
	if err != nil {
		return err
	}
	if !wf.wait {
		_, err := c.Call(ctx, name, req)
		return err
	}
	if _, ok := req["job-id"]; !ok {
		req["job-id"] = req["device"]
	}
	sub := c.Subscribe()
	defer sub.Stop()
	if _, err := c.Call(ctx, name, req); err != nil {
		return err
	}
	w := a.newWaiter(c, sub, req["job-id"].(string), jobType(name), wf)
	w.autoFinalize, w.autoDismiss = req["auto-finalize"] != false, req["auto-dismiss"] != false
	return w.run(ctx)
}

func (a *app) newWaiter(c *Client, sub *Subscription, id, typ string, wf waitFlags) *jobWaiter {
	w := &jobWaiter{c: c, sub: sub, id: id, typ: typ, flags: wf, now: time.Now}
	if a.isTerminal() {
		w.view, w.interval = newBarView(a.stdout, w.id, w.typ), 200*time.Millisecond
	} else {
		w.view, w.interval = newLineView(a.stdout, w.id, w.typ), time.Second
	}
	return w
}

// waitJob follows a job that is already there (started by a transaction,
// say) to its end, doing what wf asks on the way.
func (a *app) waitJob(ctx context.Context, id string, wf waitFlags) error {
	c, err := a.conn(ctx)
	if err != nil {
		return err
	}
	sub := c.Subscribe()
	defer sub.Stop()
	ret, err := c.Call(ctx, "query-jobs", nil)
	if err != nil {
		return err
	}
	var jobs []jobInfo
	if err := json.Unmarshal(ret, &jobs); err != nil {
		return fmt.Errorf("query-jobs: %v", err)
	}
	for _, j := range jobs {
		if j.ID != id {
			continue
		}
		w := a.newWaiter(c, sub, id, j.Type, wf)
		// What the job was started with is not in query-jobs: the flags
		// say which verbs blockctl is to send.
		w.autoFinalize, w.autoDismiss = !wf.finalize, !wf.dismiss
		w.failure = j.Error
		w.progress(j.Current, j.Total)
		if err := w.status(ctx, j.Status); err != nil {
			return err
		}
		return w.run(ctx)
	}
	return fmt.Errorf("no job '%s' (a job that ended and was dismissed is gone: start it with auto-dismiss=false to wait for it)", id)
}

// jobType is the job type a start command creates.
func jobType(cmd string) string {
	switch cmd {
	case "block-stream":
		return "stream"
	case "block-commit":
		return "commit"
	case "blockdev-mirror", "drive-mirror":
		return "mirror"
	case "blockdev-backup", "drive-backup":
		return "backup"
	}
	return cmd
}

// jobState is what a view shows of a job.
type jobState struct {
	Status     string
	Cur, Total int64
	Rate       float64       // bytes per second lately, 0 if not known
	ETA        time.Duration // -1 if not known
}

// progressView shows a job's progress: a bar or lines.
type progressView interface {
	update(st jobState)
	note(msg string) // a line about an event (ready, an I/O error)
	done(st jobState, ok bool)
}

// jobWaiter follows one job: the job's events move it along, a poll of
// query-jobs every interval gives the progress.
type jobWaiter struct {
	c            *Client
	sub          *Subscription
	id, typ      string
	flags        waitFlags
	autoFinalize bool // the daemon finalizes and dismisses by itself
	autoDismiss  bool
	view         progressView
	interval     time.Duration
	now          func() time.Time

	st       jobState
	meter    rateMeter
	failure  string // BLOCK_JOB_COMPLETED's error
	canceled bool
	finished bool
}

func (w *jobWaiter) run(ctx context.Context) error {
	tick := time.NewTicker(w.interval)
	defer tick.Stop()
	w.st.ETA = -1
	for !w.finished {
		evs, err := w.sub.Take()
		if err != nil {
			w.view.done(w.st, false)
			return err
		}
		for _, e := range evs {
			if err := w.handle(ctx, e); err != nil {
				w.view.done(w.st, false)
				return err
			}
			if w.finished {
				break
			}
		}
		if w.finished {
			break
		}
		select {
		case <-ctx.Done():
			w.view.done(w.st, false)
			return ctx.Err()
		case <-w.sub.Ready():
		case <-tick.C:
			if err := w.poll(ctx); err != nil {
				w.view.done(w.st, false)
				return err
			}
		}
	}
	return w.result()
}

// result shows how the job ended and returns its error.
func (w *jobWaiter) result() error {
	var err error
	switch {
	case w.failure != "":
		w.st.Status, err = "failed", fmt.Errorf("job %s failed: %s", w.id, w.failure)
	case w.canceled:
		w.st.Status, err = "cancelled", fmt.Errorf("job %s was cancelled", w.id)
	default:
		w.st.Status = "completed"
	}
	w.view.done(w.st, err == nil)
	return err
}

// poll reads the job's progress from query-jobs.
func (w *jobWaiter) poll(ctx context.Context) error {
	ret, err := w.c.Call(ctx, "query-jobs", nil)
	if err != nil {
		return err
	}
	var jobs []jobInfo
	if err := json.Unmarshal(ret, &jobs); err != nil {
		return fmt.Errorf("query-jobs: %v", err)
	}
	for _, j := range jobs {
		if j.ID == w.id {
			w.progress(j.Current, j.Total)
			w.view.update(w.st)
		}
	}
	return nil
}

func (w *jobWaiter) progress(cur, total int64) {
	w.st.Cur, w.st.Total = cur, total
	w.meter.add(w.now(), cur)
	w.st.Rate = w.meter.rate()
	w.st.ETA = eta(cur, total, w.st.Rate)
}

// handle moves the job along on one of its events.
func (w *jobWaiter) handle(ctx context.Context, e Event) error {
	if id, _ := e.Data["id"].(string); e.Event == "JOB_STATUS_CHANGE" && id == w.id {
		return w.status(ctx, e.Data["status"].(string))
	}
	if dev, _ := e.Data["device"].(string); dev != w.id {
		return nil
	}
	switch e.Event {
	case "BLOCK_JOB_COMPLETED":
		w.failure, _ = e.Data["error"].(string)
		off, _ := e.Data["offset"].(float64)
		n, _ := e.Data["len"].(float64)
		w.progress(int64(off), int64(n))
	case "BLOCK_JOB_CANCELLED":
		w.canceled = true
	case "BLOCK_JOB_ERROR":
		w.view.note(fmt.Sprintf("%s error, action %s", e.Data["operation"], e.Data["action"]))
	}
	return nil
}

func (w *jobWaiter) status(ctx context.Context, s string) error {
	w.st.Status = s
	w.view.update(w.st)
	verb := ""
	switch s {
	case "ready":
		if !w.flags.complete {
			w.view.note(fmt.Sprintf("ready: 'blockctl job complete %s' completes it; waiting", w.id))
			return nil
		}
		verb = "complete"
	case "pending":
		if w.autoFinalize {
			return nil
		}
		if !w.flags.finalize {
			w.view.note(fmt.Sprintf("pending: 'blockctl job finalize %s' finalizes it; waiting", w.id))
			return nil
		}
		verb = "finalize"
	case "concluded":
		w.finished = true
		if w.autoDismiss || !w.flags.dismiss {
			return nil
		}
		verb = "dismiss"
	case "null":
		w.finished = true
		return nil
	default:
		return nil
	}
	w.view.note(map[string]string{"complete": "completing", "finalize": "finalizing", "dismiss": "dismissing"}[verb])
	_, err := w.c.Call(ctx, "job-"+verb, map[string]any{"id": w.id})
	return err
}
