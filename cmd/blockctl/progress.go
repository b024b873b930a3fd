package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// rateMeter measures a job's copy rate over the last few seconds from
// the progress it reports.
type rateMeter struct {
	samples []rateSample
}

type rateSample struct {
	t time.Time
	n int64
}

// rateWindow is how far back the rate looks: long enough to smooth a
// job's bursts, short enough to follow a change of --speed.
const rateWindow = 5 * time.Second

func (m *rateMeter) add(t time.Time, n int64) {
	if k := len(m.samples); k > 0 && n < m.samples[k-1].n {
		m.samples = m.samples[:0] // progress went back: a new pass (mirror)
	}
	m.samples = append(m.samples, rateSample{t, n})
	for len(m.samples) > 2 && t.Sub(m.samples[1].t) >= rateWindow {
		m.samples = m.samples[1:]
	}
}

// rate is bytes per second over the window, 0 with fewer than 2 samples.
func (m *rateMeter) rate() float64 {
	if len(m.samples) < 2 {
		return 0
	}
	first, last := m.samples[0], m.samples[len(m.samples)-1]
	dt := last.t.Sub(first.t).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(last.n-first.n) / dt
}

// eta is how long the rest takes at rate, -1 if that is not known.
func eta(cur, total int64, rate float64) time.Duration {
	if rate <= 0 || total <= cur {
		return -1
	}
	return time.Duration(float64(total-cur) / rate * float64(time.Second)).Round(time.Second)
}

func percent(cur, total int64) float64 {
	if total <= 0 {
		return 0
	}
	return 100 * float64(cur) / float64(total)
}

func rateText(r float64) string { return fmt.Sprintf("%.1f MiB/s", r/(1<<20)) }

func etaText(d time.Duration) string {
	if d < 0 {
		return "ETA -"
	}
	return "ETA " + d.String()
}

// progressLine is one plain line of progress:
//
//	s0 stream: running 45.2% (29 MiB of 64 MiB) 12.5 MiB/s ETA 3s
func progressLine(id, typ string, st jobState) string {
	s := []string{fmt.Sprintf("%s %s: %s", id, typ, st.Status)}
	if st.Total > 0 {
		s = append(s, progressText(st.Cur, st.Total))
	}
	if st.Total > 0 && (st.Status == "running" || st.Status == "ready") {
		s = append(s, rateText(st.Rate), etaText(st.ETA))
	}
	return strings.Join(s, " ")
}

// lineView prints a line per poll (once a second) and on every change of
// status: for logs and pipes.
type lineView struct {
	w       io.Writer
	id, typ string
	last    string
}

func newLineView(w io.Writer, id, typ string) *lineView {
	return &lineView{w: w, id: id, typ: typ}
}

func (v *lineView) update(st jobState) {
	if st.Status == "" {
		return // before the first status change
	}
	line := progressLine(v.id, v.typ, st)
	v.last = line
	fmt.Fprintln(v.w, line)
}

func (v *lineView) note(msg string) { fmt.Fprintf(v.w, "%s %s: %s\n", v.id, v.typ, msg) }

func (v *lineView) done(st jobState, ok bool) {
	if st.Status == "" {
		return
	}
	if line := progressLine(v.id, v.typ, st); line != v.last {
		fmt.Fprintln(v.w, line)
	}
}

// barView draws a live bar on a terminal with mpb: the job and its
// status, the bar, percent, rate and ETA. Notes go above it.
type barView struct {
	id, typ string
	p       *mpb.Progress
	bar     *mpb.Bar
	mu      sync.Mutex
	st      jobState // guarded by mu; read by the decorators
}

func newBarView(w io.Writer, id, typ string) *barView {
	v := &barView{id: id, typ: typ, p: mpb.New(mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))}
	field := func(f func(jobState) string) decor.Decorator {
		return decor.Any(func(decor.Statistics) string {
			v.mu.Lock()
			defer v.mu.Unlock()
			return f(v.st)
		})
	}
	moving := func(st jobState) bool { return st.Status == "running" || st.Status == "ready" }
	v.bar = v.p.New(0, mpb.BarStyle(),
		mpb.PrependDecorators(decor.Name(id+" "+typ+": "), field(func(st jobState) string { return st.Status + " " })),
		mpb.AppendDecorators(
			field(func(st jobState) string { return fmt.Sprintf(" %5.1f%%", percent(st.Cur, st.Total)) }),
			field(func(st jobState) string {
				if !moving(st) {
					return ""
				}
				return "  " + rateText(st.Rate) + "  " + etaText(st.ETA)
			})))
	return v
}

func (v *barView) update(st jobState) {
	v.mu.Lock()
	v.st = st
	v.mu.Unlock()
	if st.Total > 0 {
		v.bar.SetTotal(st.Total, false)
		v.bar.SetCurrent(st.Cur)
	}
}

func (v *barView) note(msg string) { fmt.Fprintf(v.p, "%s %s: %s\n", v.id, v.typ, msg) }

func (v *barView) done(st jobState, ok bool) {
	v.update(st)
	if ok {
		v.bar.SetTotal(-1, true) // complete, at whatever the job copied
	} else {
		v.bar.Abort(false)
	}
	v.p.Wait()
}
