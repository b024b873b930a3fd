package qcow2

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsQcow2's own members (qsd 7.2; discard-no-unref
// came with 8.1 and is not accepted).
type Options struct {
	File                block.NodeRef        `json:"file"`
	Backing             *block.NodeRefOrNull `json:"backing,omitempty"`
	LazyRefcounts       *bool                `json:"lazy-refcounts,omitempty"`
	PassDiscardRequest  *bool                `json:"pass-discard-request,omitempty"`
	PassDiscardSnapshot *bool                `json:"pass-discard-snapshot,omitempty"`
	PassDiscardOther    *bool                `json:"pass-discard-other,omitempty"`
	OverlapCheck        *OverlapCheck        `json:"overlap-check,omitempty"`
	CacheSize           *int64               `json:"cache-size,omitempty"`
	L2CacheSize         *int64               `json:"l2-cache-size,omitempty"`
	L2CacheEntrySize    *int64               `json:"l2-cache-entry-size,omitempty"`
	RefcountCacheSize   *int64               `json:"refcount-cache-size,omitempty"`
	CacheCleanInterval  *int64               `json:"cache-clean-interval,omitempty"`
	Encrypt             *EncryptOptions      `json:"encrypt,omitempty"`
	DataFile            *block.NodeRef       `json:"data-file,omitempty"`
}

// OverlapCheck is Qcow2OverlapChecks: either a template name or an object
// that switches single checks on and off. blockd accepts every value and
// keeps its own checks (header, L1 and L2 tables, refcount structures,
// snapshot and bitmap tables) on, which a valid image never notices.
type OverlapCheck struct {
	Template string             // set for the string form
	Flags    *OverlapCheckFlags // set for the object form
}

// OverlapCheckFlags is Qcow2OverlapCheckFlags.
type OverlapCheckFlags struct {
	Template        *string `json:"template,omitempty"`
	MainHeader      *bool   `json:"main-header,omitempty"`
	ActiveL1        *bool   `json:"active-l1,omitempty"`
	ActiveL2        *bool   `json:"active-l2,omitempty"`
	RefcountTable   *bool   `json:"refcount-table,omitempty"`
	RefcountBlock   *bool   `json:"refcount-block,omitempty"`
	SnapshotTable   *bool   `json:"snapshot-table,omitempty"`
	InactiveL1      *bool   `json:"inactive-l1,omitempty"`
	InactiveL2      *bool   `json:"inactive-l2,omitempty"`
	BitmapDirectory *bool   `json:"bitmap-directory,omitempty"`
}

var overlapTemplates = []string{"none", "constant", "cached", "all"}

func validTemplate(s string) bool {
	for _, t := range overlapTemplates {
		if s == t {
			return true
		}
	}
	return false
}

// UnmarshalQMP implements the QMP alternate (enum or object).
func (o *OverlapCheck) UnmarshalQMP(raw json.RawMessage, path string) error {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) > 0 && raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil || !validTemplate(s) {
			return fmt.Errorf("Parameter '%s' does not accept value '%s'", path, strings.Trim(string(raw), `"`))
		}
		o.Template = s
		return nil
	case len(raw) > 0 && raw[0] == '{':
		var f OverlapCheckFlags
		if err := strictJSON(raw, &f); err != nil {
			return fmt.Errorf("Invalid parameter type for '%s', expected: Qcow2OverlapCheckFlags", path)
		}
		if f.Template != nil && !validTemplate(*f.Template) {
			return fmt.Errorf("Parameter '%s.template' does not accept value '%s'", path, *f.Template)
		}
		o.Flags = &f
		return nil
	}
	return fmt.Errorf("Invalid parameter type for '%s', expected: Qcow2OverlapChecks", path)
}

// UnmarshalJSON lets encoding/json decode it too.
func (o *OverlapCheck) UnmarshalJSON(b []byte) error { return o.UnmarshalQMP(b, "overlap-check") }

func strictJSON(raw []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.DisallowUnknownFields()
	return d.Decode(v)
}

// EncryptOptions is BlockdevQcow2Encryption. blockd does not implement
// encrypted images; the options are decoded so that the refusal is clear.
type EncryptOptions struct {
	Format    EncryptFormat `json:"format"`
	KeySecret *string       `json:"key-secret,omitempty"`
}

// EncryptFormat is BlockdevQcow2EncryptionFormat.
type EncryptFormat string

// EnumValues implements qmp.Enum.
func (EncryptFormat) EnumValues() []string { return []string{"aes", "luks"} }

// CreateOptions are BlockdevCreateOptionsQcow2's members.
type CreateOptions struct {
	File            block.NodeRef    `json:"file"`
	DataFile        *block.NodeRef   `json:"data-file,omitempty"`
	DataFileRaw     *bool            `json:"data-file-raw,omitempty"`
	ExtendedL2      *bool            `json:"extended-l2,omitempty"`
	Size            uint64           `json:"size"`
	Version         *Version         `json:"version,omitempty"`
	BackingFile     *string          `json:"backing-file,omitempty"`
	BackingFmt      *DriverName      `json:"backing-fmt,omitempty"`
	Encrypt         json.RawMessage  `json:"encrypt,omitempty"`
	ClusterSize     *uint64          `json:"cluster-size,omitempty"`
	Preallocation   *Preallocation   `json:"preallocation,omitempty"`
	LazyRefcounts   *bool            `json:"lazy-refcounts,omitempty"`
	RefcountBits    *int64           `json:"refcount-bits,omitempty"`
	CompressionType *CompressionType `json:"compression-type,omitempty"`
}

// Version is BlockdevQcow2Version.
type Version string

// EnumValues implements qmp.Enum.
func (Version) EnumValues() []string { return []string{"v2", "v3"} }

// Preallocation is PreallocMode.
type Preallocation string

// EnumValues implements qmp.Enum.
func (Preallocation) EnumValues() []string { return []string{"off", "metadata", "falloc", "full"} }

// CompressionType is Qcow2CompressionType.
type CompressionType string

// EnumValues implements qmp.Enum.
func (CompressionType) EnumValues() []string { return []string{"zlib", "zstd"} }

// DriverName is BlockdevDriver (the values qsd 7.2 knows).
type DriverName string

// EnumValues implements qmp.Enum.
func (DriverName) EnumValues() []string {
	return []string{"blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop",
		"compress", "copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access",
		"ftp", "ftps", "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks",
		"nbd", "nfs", "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2",
		"qed", "quorum", "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk",
		"vpc", "vvfat"}
}

// cacheConfig is the outcome of the cache options.
type cacheConfig struct {
	l2Entries    int   // number of L2 cache entries
	l2EntrySize  int64 // bytes per L2 cache entry (a slice of a table)
	rbEntries    int   // number of refcount block cache entries
	cleanSeconds int64 // cache-clean-interval; 0: never
}

const (
	defaultL2CacheMax    = 32 << 20 // bytes; QEMU's default maximum on Linux
	minL2CacheEntries    = 2
	minRefcountEntries   = 4
	defaultCleanInterval = 600 // seconds
	maxCacheBytes        = 1 << 31
)

// cacheSizes applies QEMU's rules for cache-size, l2-cache-size,
// refcount-cache-size, l2-cache-entry-size and cache-clean-interval
// (docs/qcow2-cache.txt): by default enough L2 cache to map the whole
// image, up to 32 MiB, and four clusters of refcount cache.
func cacheSizes(opts *Options, clusterSize, virtualSize, l2EntryBytes int64) (cacheConfig, error) {
	var cc cacheConfig
	for _, x := range []struct {
		v    *int64
		name string
	}{{opts.CacheSize, "cache-size"}, {opts.L2CacheSize, "l2-cache-size"}, {opts.RefcountCacheSize, "refcount-cache-size"}, {opts.L2CacheEntrySize, "l2-cache-entry-size"}} {
		if x.v != nil && *x.v < 0 {
			return cc, fmt.Errorf("Parameter '%s' expects a non-negative number below 2^64", x.name)
		}
	}
	// The L2 cache that maps the whole image.
	entriesPerCluster := clusterSize / l2EntryBytes
	tables := (virtualSize + clusterSize*entriesPerCluster - 1) / (clusterSize * entriesPerCluster)
	maxL2 := max(tables, 1) * clusterSize
	minRefcount := minRefcountEntries * clusterSize

	var l2Size, rcSize int64
	set := 0
	for _, v := range []*int64{opts.CacheSize, opts.L2CacheSize, opts.RefcountCacheSize} {
		if v != nil {
			set++
		}
	}
	switch {
	case set == 3:
		return cc, fmt.Errorf("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time")
	case opts.CacheSize != nil && opts.L2CacheSize != nil:
		if *opts.L2CacheSize > *opts.CacheSize {
			return cc, fmt.Errorf("l2-cache-size may not exceed cache-size")
		}
		l2Size, rcSize = *opts.L2CacheSize, *opts.CacheSize-*opts.L2CacheSize
	case opts.CacheSize != nil && opts.RefcountCacheSize != nil:
		if *opts.RefcountCacheSize > *opts.CacheSize {
			return cc, fmt.Errorf("refcount-cache-size may not exceed cache-size")
		}
		l2Size, rcSize = *opts.CacheSize-*opts.RefcountCacheSize, *opts.RefcountCacheSize
	case opts.CacheSize != nil:
		// As much as possible to the L2 cache, then the rest.
		total := *opts.CacheSize
		if total >= maxL2+minRefcount {
			l2Size, rcSize = maxL2, total-maxL2
		} else {
			rcSize = min(total, minRefcount)
			l2Size = total - rcSize
		}
	default:
		l2Size = min(maxL2, defaultL2CacheMax)
		if opts.L2CacheSize != nil {
			// Never more than what maps the whole image.
			l2Size = min(*opts.L2CacheSize, maxL2)
		}
		rcSize = minRefcount
		if opts.RefcountCacheSize != nil {
			rcSize = *opts.RefcountCacheSize
		}
	}

	// The entry size: whole tables when the cache maps the whole image,
	// else 4 KiB slices (or the cluster size if smaller).
	entry := clusterSize
	if l2Size < maxL2 {
		entry = min(4096, clusterSize)
	}
	if opts.L2CacheEntrySize != nil {
		e := *opts.L2CacheEntrySize
		if e < 512 || e > clusterSize || e&(e-1) != 0 {
			return cc, fmt.Errorf("L2 cache entry size must be a power of two between 512 and the cluster size (%d)", clusterSize)
		}
		entry = e
	}
	if l2Size > maxCacheBytes {
		return cc, fmt.Errorf("L2 cache size too big")
	}
	if rcSize > maxCacheBytes {
		return cc, fmt.Errorf("Refcount cache size too big")
	}
	cc.l2EntrySize = entry
	cc.l2Entries = int(max(l2Size/entry, minL2CacheEntries))
	cc.rbEntries = int(max(rcSize/clusterSize, minRefcountEntries))
	cc.cleanSeconds = defaultCleanInterval
	if opts.CacheCleanInterval != nil {
		v := *opts.CacheCleanInterval
		if v < 0 || v > 1<<32-1 {
			return cc, fmt.Errorf("Cache clean interval too big")
		}
		cc.cleanSeconds = v
	}
	return cc, nil
}
