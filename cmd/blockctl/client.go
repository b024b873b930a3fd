package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// QMPError is an error reply from the daemon: its class and description,
// printed as they came.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string { return e.Class + ": " + e.Desc }

// Event is one QMP event. Raw is the event as the daemon sent it.
type Event struct {
	Event     string         `json:"event"`
	Data      map[string]any `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	Raw json.RawMessage `json:"-"`
}

// Time is when the daemon sent the event.
func (e Event) Time() time.Time {
	return time.Unix(e.Timestamp.Seconds, e.Timestamp.Microseconds*1000)
}

// Client is a QMP connection. One goroutine reads everything the daemon
// sends: replies go to the single caller waiting in Call, events to every
// subscriber's queue. Queues are unbounded, so the reader never waits for
// a slow subscriber and never stops reading while a command runs (a job's
// events may come before, during and after the reply that started it).
type Client struct {
	conn    net.Conn
	callMu  sync.Mutex // one command at a time; replies come in order
	replies chan json.RawMessage

	mu     sync.Mutex
	subs   map[*Subscription]struct{} // guarded by mu
	err    error                      // why the reader stopped; guarded by mu
	closed chan struct{}              // closed when the reader stops
}

// greetingTimeout bounds the wait for the greeting: qemu-storage-daemon
// accepts a second client on a monitor socket but greets it only when the
// first one leaves.
const greetingTimeout = 10 * time.Second

// Dial connects to a QMP socket and negotiates capabilities.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(conn)
	var greeting struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	conn.SetReadDeadline(time.Now().Add(greetingTimeout))
	if err := dec.Decode(&greeting); err != nil || greeting.QMP == nil {
		conn.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("%s: no QMP greeting within %v (does another client hold this monitor socket?)", path, greetingTimeout)
		}
		return nil, fmt.Errorf("%s: not a QMP socket (no greeting): %v", path, err)
	}
	conn.SetReadDeadline(time.Time{})
	c := &Client{
		conn:    conn,
		replies: make(chan json.RawMessage, 1),
		subs:    map[*Subscription]struct{}{},
		closed:  make(chan struct{}),
	}
	go c.read(dec)
	if _, err := c.Call(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the connection; the reader stops.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.closed
	return err
}

func (c *Client) read(dec *json.Decoder) {
	var err error
	for {
		var raw json.RawMessage
		if err = dec.Decode(&raw); err != nil {
			break
		}
		var probe struct {
			Event string `json:"event"`
		}
		if json.Unmarshal(raw, &probe) == nil && probe.Event != "" {
			var e Event
			if json.Unmarshal(raw, &e) == nil {
				e.Raw = raw
				c.publish(e)
			}
			continue
		}
		select {
		case c.replies <- raw:
		default: // a reply nobody asked for: the daemon broke the protocol
			err = fmt.Errorf("unexpected message from the daemon: %s", raw)
		}
		if err != nil {
			break
		}
	}
	c.mu.Lock()
	c.err = fmt.Errorf("connection to the daemon lost: %v", err)
	for s := range c.subs {
		s.wake()
	}
	c.mu.Unlock()
	close(c.closed)
}

func (c *Client) publish(e Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.subs {
		s.push(e)
	}
}

// Call runs a command and returns its "return" value, or a *QMPError.
func (c *Client) Call(ctx context.Context, name string, args any) (json.RawMessage, error) {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	select {
	case raw := <-c.replies:
		var rep struct {
			Return json.RawMessage `json:"return"`
			Error  *QMPError       `json:"error"`
		}
		if err := json.Unmarshal(raw, &rep); err != nil {
			return nil, fmt.Errorf("bad reply to %s: %s", name, raw)
		}
		if rep.Error != nil {
			return nil, rep.Error
		}
		return rep.Return, nil
	case <-c.closed:
		return nil, c.readErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *Client) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Subscription is a queue of the events received after Subscribe.
type Subscription struct {
	c     *Client
	mu    sync.Mutex
	queue []Event       // guarded by mu
	ready chan struct{} // has a token while queue is not empty
}

// Subscribe starts queueing events. Subscribe before the command whose
// events you want: they may arrive before its reply.
func (c *Client) Subscribe() *Subscription {
	s := &Subscription{c: c, ready: make(chan struct{}, 1)}
	c.mu.Lock()
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	return s
}

// Stop ends the subscription.
func (s *Subscription) Stop() {
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
}

func (s *Subscription) push(e Event) {
	s.mu.Lock()
	s.queue = append(s.queue, e)
	s.mu.Unlock()
	s.wake()
}

func (s *Subscription) wake() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Ready is signalled when events may be waiting; call Take after it.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Take returns the events queued so far, or the connection's error once
// the queue is empty and the connection is gone.
func (s *Subscription) Take() ([]Event, error) {
	s.mu.Lock()
	q := s.queue
	s.queue = nil
	s.mu.Unlock()
	if len(q) > 0 {
		return q, nil
	}
	select {
	case <-s.c.closed:
		return nil, s.c.readErr()
	default:
		return nil, nil
	}
}

// Next waits for the next event.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			e := s.queue[0]
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return e, nil
		}
		s.mu.Unlock()
		select {
		case <-s.ready:
		case <-s.c.closed:
			s.mu.Lock()
			empty := len(s.queue) == 0
			s.mu.Unlock()
			if empty {
				return Event{}, s.c.readErr()
			}
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}
