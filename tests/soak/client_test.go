package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// replyTimeout is how long a command may go unanswered before the run
// fails: far beyond any reply under this load, short of a hang.
const replyTimeout = 30 * time.Second

// counts are the commands of a run: sent, and answered with a return.
// An error reply or a lost connection is an error of the run.
type counts struct {
	sent, ok atomic.Int64
	lat      latencies
}

// latencies is a histogram of reply times in buckets of a quarter of a
// power of two (about 19 % wide), from 1 µs to about 70 s: fine enough
// for the p50 and p99 the report prints, and lock-free for 32 clients.
type latencies struct {
	buckets [104]atomic.Int64
}

func latencyBucket(d time.Duration) int {
	us := float64(d) / float64(time.Microsecond)
	if us < 1 {
		return 0
	}
	return min(int(4*math.Log2(us)), len(latencies{}.buckets)-1)
}

func (l *latencies) add(d time.Duration) { l.buckets[latencyBucket(d)].Add(1) }

// quantile is the upper edge of the bucket where the q-th of all
// recorded replies falls.
func (l *latencies) quantile(q float64) time.Duration {
	var total int64
	for i := range l.buckets {
		total += l.buckets[i].Load()
	}
	if total == 0 {
		return 0
	}
	want := int64(math.Ceil(q * float64(total)))
	var seen int64
	for i := range l.buckets {
		if seen += l.buckets[i].Load(); seen >= want {
			return time.Duration(math.Exp2(float64(i+1)/4) * float64(time.Microsecond))
		}
	}
	return 0
}

// monitor is one QMP connection, counting its commands and remembering
// since when its command in flight waits. It is a plain line client, not
// go-qemu's: go-qemu's SocketMonitor hands Run the reply in bufio.Scanner's
// buffer, which its reader goroutine overwrites with the next line, so a
// reply followed at once by an event (every job's status changes, sent to
// every monitor) came back corrupt ("invalid character '{' after
// top-level value") within seconds of this load
// (github.com/digitalocean/go-qemu/issues/226).
type monitor struct {
	c       net.Conn
	n       *counts
	since   atomic.Int64 // UnixNano the command in flight was sent; 0: none
	name    string
	replies chan []byte
	events  chan event // nil: events are dropped
}

// event is one QMP event as the job driver needs it.
type event struct {
	Event string         `json:"event"`
	Data  map[string]any `json:"data"`
}

// dial connects to a monitor socket and negotiates capabilities. keep
// says whether events are kept for the caller; either way one goroutine
// reads everything the daemon sends, in order, so that an event never
// holds up a reply.
func dial(sock, name string, n *counts, keep bool) (*monitor, error) {
	c, err := net.DialTimeout("unix", sock, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	m := &monitor{c: c, n: n, name: name, replies: make(chan []byte, 1)}
	if keep {
		m.events = make(chan event, 1024)
	}
	br := bufio.NewReaderSize(c, 1<<20)
	if _, err := br.ReadBytes('\n'); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: greeting: %w", name, err)
	}
	go m.read(br)
	if _, err := m.cmd("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return m, nil
}

func (m *monitor) read(br *bufio.Reader) {
	defer close(m.replies)
	if m.events != nil {
		defer close(m.events)
	}
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		var e event
		if json.Unmarshal(line, &e) == nil && e.Event != "" {
			if m.events != nil {
				m.events <- e
			}
			continue
		}
		m.replies <- line
	}
}

// cmd runs one command and returns its "return" value.
func (m *monitor) cmd(name string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	sent := time.Now()
	m.since.Store(sent.UnixNano())
	m.n.sent.Add(1)
	defer m.since.Store(0)
	if _, err := m.c.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", m.name, b, err)
	}
	line, ok := <-m.replies
	if !ok {
		return nil, fmt.Errorf("%s: %s: connection closed", m.name, b)
	}
	m.n.lat.add(time.Since(sent))
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fmt.Errorf("%s: %s: bad reply %q", m.name, b, line)
	}
	if r.Error != nil {
		return nil, fmt.Errorf("%s: %s: %s: %s", m.name, b, r.Error.Class, r.Error.Desc)
	}
	m.n.ok.Add(1)
	return r.Return, nil
}

// waiting is how long the command in flight has waited for its reply.
func (m *monitor) waiting(now time.Time) time.Duration {
	s := m.since.Load()
	if s == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, s))
}

// close disconnects: a command still waiting returns an error.
func (m *monitor) close() { m.c.Close() }

// clientLoop is one QMP client's work: the same round of cheap commands
// again and again, as fast as the replies come. The round adds a small
// node with a name no other round uses, arms a write threshold on it and
// deletes it, so the graph is the same after every round; the queries
// list the whole graph, the jobs and the exports while the job driver
// and the NBD writer change them.
func clientLoop(ctx context.Context, m *monitor, id int, g *gate, qg *guard) error {
	for round := 0; ctx.Err() == nil; round++ {
		node := fmt.Sprintf("c%dr%d", id, round)
		if err := g.do(func() error { return clientRound(m, node, qg) }); err != nil {
			return err
		}
	}
	return nil
}

func clientRound(m *monitor, node string, qg *guard) error {
	if err := qg.shared(func() error {
		_, err := m.cmd("query-named-block-nodes", map[string]any{"flat": true})
		return err
	}); err != nil {
		return err
	}
	steps := []struct {
		name string
		args any
	}{
		{"query-version", nil},
		{"blockdev-add", map[string]any{"driver": "null-co", "node-name": node, "size": 1 << 20}},
		{"block-set-write-threshold", map[string]any{"node-name": node, "write-threshold": 512 << 10}},
		{"query-jobs", nil},
		{"query-block-exports", nil},
		{"qom-list", map[string]any{"path": "/"}},
		{"blockdev-del", map[string]any{"node-name": node}},
	}
	for _, s := range steps {
		if _, err := m.cmd(s.name, s.args); err != nil {
			return err
		}
	}
	return nil
}

// watchdog fails the run when a command of mons waits longer than
// replyTimeout, and closes that connection so that the command returns
// (and the load can stop); it returns when ctx ends.
func watchdog(ctx context.Context, mons []*monitor, errs *errList) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			for _, m := range mons {
				if w := m.waiting(now); w > replyTimeout {
					errs.add(fmt.Errorf("%s: no reply for %v", m.name, w.Round(time.Second)))
					m.close()
					return
				}
			}
		}
	}
}

// errList collects the errors of the run's goroutines.
type errList struct {
	mu   sync.Mutex
	errs []error
}

func (l *errList) add(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
}

func (l *errList) list() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}
