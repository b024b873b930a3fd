// Package throttle is the "throttle" filter driver and the
// "throttle-group" object it takes its limits from.
//
//	     parents
//	        │
//	throttle node ──member of──▶ throttle-group "tg0" ◀── other throttle nodes
//	        │ file (filtered, primary)
//	      child
//
// # Groups
//
// A Group (object-add qom-type throttle-group) holds six leaky buckets:
// bytes and operations, each for reads, writes and both together. A
// request pours its size (bps buckets) and one operation (iops buckets;
// with iops-size, a request larger than iops-size counts as size/iops-size
// operations) into the buckets of its direction and the total ones. Each
// bucket leaks at its average rate (iops-total, bps-read, ...). A request
// must wait while a bucket it uses is full: a bucket without a burst
// holds a tenth of a second's worth of its rate, so short bursts pass; with
// a burst rate (*-max) it holds max times the burst length (*-max-length,
// seconds), and, for bursts longer than a second, a second bucket leaking
// at the burst rate keeps the burst itself at that rate. So iops-total=100,
// iops-total-max=2000, iops-total-max-length=60 allows 2000 IOPS for about
// a minute, then 100 IOPS, and the burst comes back after idling. This is
// QEMU's algorithm (docs/throttle.txt), written anew.
//
// Every throttle node naming the group shares its buckets. While they are
// full, queued requests are let go one at a time as they leak, taking
// the member nodes in turn (round robin) and alternating reads and writes
// when both wait for a total bucket, so no node or direction starves.
//
// NewGroup validates limits as qsd does, with its messages ("bps/iops/max
// values must be within [0, 1000000000000000]", "bps_max/iops_max cannot
// be lower than bps/iops", ...). Limits is QMP's ThrottleLimits: Limits()
// reads it back the way qom-get shows it (unset limits 0, every
// *-max-length 1); SetLimits (qom-set) merges the members given into the
// current configuration, restarts the buckets empty and reschedules the
// requests already queued at once. The legacy flat x-* properties of
// object-add are in Properties (applied before the nested limits); they
// cannot be set afterwards. A group is in use while a node is its member,
// and object-del refuses to delete it then.
//
// The group runs on a Clock: the wall clock, or blocktest.FakeClock in
// tests, which makes time pass only when told so.
//
// # The filter
//
// Options (BlockdevOptionsThrottle): "throttle-group", the id of an
// existing throttle-group object ("Throttle group 'x' does not exist"
// otherwise, also for an object of another type), and "file", the child.
//
// Reads wait for the read and total buckets; writes, write-zeroes and
// discards wait for the write and total buckets, counting their length
// (as QEMU's throttle node does). Flush, block status and truncate pass
// straight through. Capabilities and limits are the child's. A waiting
// request ends with the context's error if its context ends first.
//
// Drain: the node implements block.Drainer. DrainBegin lets every request
// it holds go at once, and requests that come while it is drained are not
// throttled (still accounted) until DrainEnd, so a graph change never
// waits for a throttle timer.
//
// Permissions: those of a filter (block.DefaultChildPerm for a filtered
// child): what the parents take and share passes through to the child.
package throttle
