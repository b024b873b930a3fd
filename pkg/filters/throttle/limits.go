package throttle

import (
	"math"

	"github.com/blockd/blockd/pkg/block"
)

// Limits is QMP's ThrottleLimits: the "limits" member of object-add for a
// throttle-group, and what qom-get/qom-set of "limits" carry. A nil member
// is "not given": SetLimits leaves the current value as it is. Limits
// returned by (*Group).Limits have every member set, so that encoding them
// gives the 19 members qsd reports (unset limits 0, lengths 1).
type Limits struct {
	IopsTotal          *int64 `json:"iops-total,omitempty"`
	IopsTotalMax       *int64 `json:"iops-total-max,omitempty"`
	IopsTotalMaxLength *int64 `json:"iops-total-max-length,omitempty"`
	IopsRead           *int64 `json:"iops-read,omitempty"`
	IopsReadMax        *int64 `json:"iops-read-max,omitempty"`
	IopsReadMaxLength  *int64 `json:"iops-read-max-length,omitempty"`
	IopsWrite          *int64 `json:"iops-write,omitempty"`
	IopsWriteMax       *int64 `json:"iops-write-max,omitempty"`
	IopsWriteMaxLength *int64 `json:"iops-write-max-length,omitempty"`
	BpsTotal           *int64 `json:"bps-total,omitempty"`
	BpsTotalMax        *int64 `json:"bps-total-max,omitempty"`
	BpsTotalMaxLength  *int64 `json:"bps-total-max-length,omitempty"`
	BpsRead            *int64 `json:"bps-read,omitempty"`
	BpsReadMax         *int64 `json:"bps-read-max,omitempty"`
	BpsReadMaxLength   *int64 `json:"bps-read-max-length,omitempty"`
	BpsWrite           *int64 `json:"bps-write,omitempty"`
	BpsWriteMax        *int64 `json:"bps-write-max,omitempty"`
	BpsWriteMaxLength  *int64 `json:"bps-write-max-length,omitempty"`
	IopsSize           *int64 `json:"iops-size,omitempty"`
}

// Properties are the members of object-add for qom-type throttle-group
// besides qom-type and id (QMP's ThrottleGroupProperties): the nested
// limits, and the legacy flat x-* properties (unstable in qsd 7.2).
type Properties struct {
	Limits *Limits `json:"limits,omitempty"`

	XIopsTotal          *int64 `json:"x-iops-total,omitempty"`
	XIopsTotalMax       *int64 `json:"x-iops-total-max,omitempty"`
	XIopsTotalMaxLength *int64 `json:"x-iops-total-max-length,omitempty"`
	XIopsRead           *int64 `json:"x-iops-read,omitempty"`
	XIopsReadMax        *int64 `json:"x-iops-read-max,omitempty"`
	XIopsReadMaxLength  *int64 `json:"x-iops-read-max-length,omitempty"`
	XIopsWrite          *int64 `json:"x-iops-write,omitempty"`
	XIopsWriteMax       *int64 `json:"x-iops-write-max,omitempty"`
	XIopsWriteMaxLength *int64 `json:"x-iops-write-max-length,omitempty"`
	XBpsTotal           *int64 `json:"x-bps-total,omitempty"`
	XBpsTotalMax        *int64 `json:"x-bps-total-max,omitempty"`
	XBpsTotalMaxLength  *int64 `json:"x-bps-total-max-length,omitempty"`
	XBpsRead            *int64 `json:"x-bps-read,omitempty"`
	XBpsReadMax         *int64 `json:"x-bps-read-max,omitempty"`
	XBpsReadMaxLength   *int64 `json:"x-bps-read-max-length,omitempty"`
	XBpsWrite           *int64 `json:"x-bps-write,omitempty"`
	XBpsWriteMax        *int64 `json:"x-bps-write-max,omitempty"`
	XBpsWriteMaxLength  *int64 `json:"x-bps-write-max-length,omitempty"`
	XIopsSize           *int64 `json:"x-iops-size,omitempty"`
}

// The six leaky buckets of a group.
type bucketType int

const (
	bpsTotal bucketType = iota
	bpsRead
	bpsWrite
	opsTotal
	opsRead
	opsWrite
	nBuckets
)

// valueMax bounds every rate (QEMU's THROTTLE_VALUE_MAX).
const valueMax = 1000000000000000

// bucket is one leaky bucket: it leaks at avg units per second; level is
// what was poured in and has not leaked yet. With a burst (max > 0) the
// bucket holds max*burstLength; burstLevel, leaking at max, keeps the
// burst itself at the max rate when the burst may last longer than a
// second.
type bucket struct {
	avg, max    uint64
	burstLength uint32 // seconds; >= 1 in a valid configuration
	level       float64
	burstLevel  float64
}

// config is a group's whole configuration and state.
type config struct {
	b      [nBuckets]bucket
	opSize uint64 // iops-size: requests larger count as size/opSize ops
}

func defaultConfig() config {
	var c config
	for i := range c.b {
		c.b[i].burstLength = 1
	}
	return c
}

// What a parameter sets in its bucket.
type paramKind int

const (
	kindAvg paramKind = iota
	kindMax
	kindLength
	kindOpSize
)

// param maps a QMP member to a field of a bucket. The table is in the
// order of ThrottleLimits in the schema.
type param struct {
	name   string
	bucket bucketType
	kind   paramKind
	limit  func(*Limits) **int64
	legacy func(*Properties) **int64
}

var params = []param{
	{"iops-total", opsTotal, kindAvg, func(l *Limits) **int64 { return &l.IopsTotal }, func(p *Properties) **int64 { return &p.XIopsTotal }},
	{"iops-total-max", opsTotal, kindMax, func(l *Limits) **int64 { return &l.IopsTotalMax }, func(p *Properties) **int64 { return &p.XIopsTotalMax }},
	{"iops-total-max-length", opsTotal, kindLength, func(l *Limits) **int64 { return &l.IopsTotalMaxLength }, func(p *Properties) **int64 { return &p.XIopsTotalMaxLength }},
	{"iops-read", opsRead, kindAvg, func(l *Limits) **int64 { return &l.IopsRead }, func(p *Properties) **int64 { return &p.XIopsRead }},
	{"iops-read-max", opsRead, kindMax, func(l *Limits) **int64 { return &l.IopsReadMax }, func(p *Properties) **int64 { return &p.XIopsReadMax }},
	{"iops-read-max-length", opsRead, kindLength, func(l *Limits) **int64 { return &l.IopsReadMaxLength }, func(p *Properties) **int64 { return &p.XIopsReadMaxLength }},
	{"iops-write", opsWrite, kindAvg, func(l *Limits) **int64 { return &l.IopsWrite }, func(p *Properties) **int64 { return &p.XIopsWrite }},
	{"iops-write-max", opsWrite, kindMax, func(l *Limits) **int64 { return &l.IopsWriteMax }, func(p *Properties) **int64 { return &p.XIopsWriteMax }},
	{"iops-write-max-length", opsWrite, kindLength, func(l *Limits) **int64 { return &l.IopsWriteMaxLength }, func(p *Properties) **int64 { return &p.XIopsWriteMaxLength }},
	{"bps-total", bpsTotal, kindAvg, func(l *Limits) **int64 { return &l.BpsTotal }, func(p *Properties) **int64 { return &p.XBpsTotal }},
	{"bps-total-max", bpsTotal, kindMax, func(l *Limits) **int64 { return &l.BpsTotalMax }, func(p *Properties) **int64 { return &p.XBpsTotalMax }},
	{"bps-total-max-length", bpsTotal, kindLength, func(l *Limits) **int64 { return &l.BpsTotalMaxLength }, func(p *Properties) **int64 { return &p.XBpsTotalMaxLength }},
	{"bps-read", bpsRead, kindAvg, func(l *Limits) **int64 { return &l.BpsRead }, func(p *Properties) **int64 { return &p.XBpsRead }},
	{"bps-read-max", bpsRead, kindMax, func(l *Limits) **int64 { return &l.BpsReadMax }, func(p *Properties) **int64 { return &p.XBpsReadMax }},
	{"bps-read-max-length", bpsRead, kindLength, func(l *Limits) **int64 { return &l.BpsReadMaxLength }, func(p *Properties) **int64 { return &p.XBpsReadMaxLength }},
	{"bps-write", bpsWrite, kindAvg, func(l *Limits) **int64 { return &l.BpsWrite }, func(p *Properties) **int64 { return &p.XBpsWrite }},
	{"bps-write-max", bpsWrite, kindMax, func(l *Limits) **int64 { return &l.BpsWriteMax }, func(p *Properties) **int64 { return &p.XBpsWriteMax }},
	{"bps-write-max-length", bpsWrite, kindLength, func(l *Limits) **int64 { return &l.BpsWriteMaxLength }, func(p *Properties) **int64 { return &p.XBpsWriteMaxLength }},
	{"iops-size", 0, kindOpSize, func(l *Limits) **int64 { return &l.IopsSize }, func(p *Properties) **int64 { return &p.XIopsSize }},
}

// get reads a parameter as qom-get reports it.
func (c *config) get(p param) int64 {
	b := &c.b[p.bucket]
	switch p.kind {
	case kindAvg:
		return int64(b.avg)
	case kindMax:
		return int64(b.max)
	case kindLength:
		return int64(b.burstLength)
	}
	return int64(c.opSize)
}

// set stores a parameter the way QEMU's unsigned fields take a signed
// value: a negative rate becomes huge (and fails validation with the
// range message), a negative length wraps to 32 bits.
func (c *config) set(p param, v int64) {
	b := &c.b[p.bucket]
	switch p.kind {
	case kindAvg:
		b.avg = uint64(v)
	case kindMax:
		b.max = uint64(v)
	case kindLength:
		b.burstLength = uint32(v)
	default:
		c.opSize = uint64(v)
	}
}

// applyLimits merges the given members of l into c (QEMU's
// throttle_limits_to_config) and checks the result.
func (c *config) applyLimits(l *Limits) error {
	for _, p := range params {
		v := *p.limit(l)
		if v == nil {
			continue
		}
		if p.kind == kindLength && *v > math.MaxUint32 {
			return block.Errorf(block.ErrInvalid, "%s value must be in the range [0, %d]", p.name, uint32(math.MaxUint32))
		}
		c.set(p, *v)
	}
	return c.validate()
}

// applyLegacy sets the flat x-* properties given at creation.
func (c *config) applyLegacy(pr *Properties) error {
	for _, p := range params {
		v := *p.legacy(pr)
		if v == nil {
			continue
		}
		if *v < 0 {
			return block.Errorf(block.ErrInvalid, "Property values cannot be negative")
		}
		if p.kind == kindLength && *v > math.MaxUint32 {
			// compat(qsd-7.2): "therange" is QEMU's, missing space and all.
			return block.Errorf(block.ErrInvalid, "x-%s value must be in therange [0, %d]", p.name, uint32(math.MaxUint32))
		}
		c.set(p, *v)
	}
	return nil
}

// validate applies QEMU's rules for a throttle configuration, with its
// messages, in its order.
func (c *config) validate() error {
	b := &c.b
	conflict := func(total, read, write bucketType, f func(*bucket) uint64) bool {
		return f(&b[total]) != 0 && (f(&b[read]) != 0 || f(&b[write]) != 0)
	}
	avg := func(x *bucket) uint64 { return x.avg }
	burst := func(x *bucket) uint64 { return x.max }
	if conflict(bpsTotal, bpsRead, bpsWrite, avg) || conflict(opsTotal, opsRead, opsWrite, avg) ||
		conflict(bpsTotal, bpsRead, bpsWrite, burst) || conflict(opsTotal, opsRead, opsWrite, burst) {
		return block.Errorf(block.ErrInvalid, "bps/iops/max total values and read/write values cannot be used at the same time")
	}
	if c.opSize != 0 && b[opsTotal].avg == 0 && b[opsRead].avg == 0 && b[opsWrite].avg == 0 {
		return block.Errorf(block.ErrInvalid, "iops size requires an iops value to be set")
	}
	for i := range b {
		x := &b[i]
		switch {
		case x.avg > valueMax || x.max > valueMax:
			return block.Errorf(block.ErrInvalid, "bps/iops/max values must be within [0, %d]", valueMax)
		case x.burstLength == 0:
			return block.Errorf(block.ErrInvalid, "the burst length cannot be 0")
		case x.burstLength > 1 && x.max == 0:
			return block.Errorf(block.ErrInvalid, "burst length set without burst rate")
		case x.max != 0 && uint64(x.burstLength) > valueMax/x.max:
			return block.Errorf(block.ErrInvalid, "burst length too high for this burst rate")
		case x.max != 0 && x.avg == 0:
			return block.Errorf(block.ErrInvalid, "bps_max/iops_max require corresponding bps/iops values")
		case x.max != 0 && x.max < x.avg:
			return block.Errorf(block.ErrInvalid, "bps_max/iops_max cannot be lower than bps/iops")
		}
	}
	return nil
}

// enabled reports whether any limit is set.
func (c *config) enabled() bool {
	for i := range c.b {
		if c.b[i].avg != 0 {
			return true
		}
	}
	return false
}

// limits is c as qom-get reports it: every member set.
func (c *config) limits() Limits {
	var l Limits
	for _, p := range params {
		v := c.get(p)
		*p.limit(&l) = &v
	}
	return l
}

// leak lets every bucket leak for d nanoseconds.
func (c *config) leak(d float64) {
	for i := range c.b {
		x := &c.b[i]
		x.level = math.Max(x.level-float64(x.avg)*d/1e9, 0)
		if x.burstLength > 1 {
			x.burstLevel = math.Max(x.burstLevel-float64(x.max)*d/1e9, 0)
		}
	}
}

// wait is how long, in nanoseconds, a request must wait before bucket x
// lets it through: 0 while the bucket is not full. Without a burst rate
// the bucket still holds a tenth of a second's worth, so that short
// bursts do not throttle every other request.
func (x *bucket) wait() float64 {
	if x.avg == 0 {
		return 0
	}
	size, burstSize := float64(x.avg)/10, 0.0
	if x.max != 0 {
		size = float64(x.max) * float64(x.burstLength)
		burstSize = float64(x.max) / 10
	}
	if extra := x.level - size; extra > 0 {
		return extra * 1e9 / float64(x.avg)
	}
	if x.burstLength > 1 {
		if extra := x.burstLevel - burstSize; extra > 0 {
			return extra * 1e9 / float64(x.max)
		}
	}
	return 0
}

// Requests are reads or writes; zeroes and discards count as writes.
const (
	dirRead = iota
	dirWrite
	nDirs
)

var dirBuckets = [nDirs][4]bucketType{
	{bpsTotal, opsTotal, bpsRead, opsRead},
	{bpsTotal, opsTotal, bpsWrite, opsWrite},
}

// waitFor is the longest wait of the buckets that govern dir.
func (c *config) waitFor(dir int) float64 {
	w := 0.0
	for _, i := range dirBuckets[dir] {
		w = math.Max(w, c.b[i].wait())
	}
	return w
}

// account pours a request of size bytes into the buckets of dir.
func (c *config) account(dir int, size uint64) {
	units := 1.0
	if c.opSize != 0 && size > c.opSize {
		units = float64(size) / float64(c.opSize)
	}
	for _, i := range dirBuckets[dir] {
		x := &c.b[i]
		add := units
		if i == bpsTotal || i == bpsRead || i == bpsWrite {
			add = float64(size)
		}
		x.level += add
		if x.burstLength > 1 {
			x.burstLevel += add
		}
	}
}

// resetLevels empties the buckets (a new configuration starts afresh).
func (c *config) resetLevels() {
	for i := range c.b {
		c.b[i].level, c.b[i].burstLevel = 0, 0
	}
}
