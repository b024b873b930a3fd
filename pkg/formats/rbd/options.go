// Package rbd is the "rbd" protocol driver: a node whose data is a Ceph
// RADOS block device image, reached through librados and librbd
// (github.com/ceph/go-ceph, cgo).
//
// The driver itself is built only with the build tag "ceph" (files
// rbd_ceph*.go), so that the default build stays pure Go and builds
// where the Ceph libraries are missing; without the tag a stub is
// registered under the same name, with the same options, whose open
// says how to build blockd with rbd support. `make build` adds the tag
// when librbd's header is installed (scripts/buildtags.sh).
//
// The options are qemu-storage-daemon 7.2's BlockdevOptionsRbd; the
// create options its BlockdevCreateOptionsRbd.
package rbd

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsRbd's members.
type Options struct {
	Pool      string  `json:"pool"`
	Namespace *string `json:"namespace,omitempty"`
	Image     string  `json:"image"`
	Conf      *string `json:"conf,omitempty"`
	// Snapshot opens the image as it was at that snapshot, read-only.
	Snapshot *string         `json:"snapshot,omitempty"`
	Encrypt  *EncryptOptions `json:"encrypt,omitempty"`
	User     *string         `json:"user,omitempty"`
	// AuthClientRequired lists the authentication modes the client
	// accepts, in order (auth_client_required).
	AuthClientRequired *[]AuthMode `json:"auth-client-required,omitempty"`
	KeySecret          *string     `json:"key-secret,omitempty"`
	// Server lists the monitors (mon_host), overriding the conf's.
	Server *[]ServerAddress `json:"server,omitempty"`
}

// EncryptOptions is RbdEncryptionOptions (both of its variants, luks and
// luks2, have only a key-secret). blockd does not open encrypted rbd
// images yet; the members are decoded so that the refusal is clear.
type EncryptOptions struct {
	Format    EncryptFormat `json:"format"`
	KeySecret string        `json:"key-secret"`
}

// CreateEncryptOptions is RbdEncryptionCreateOptions.
type CreateEncryptOptions struct {
	Format    EncryptFormat `json:"format"`
	KeySecret string        `json:"key-secret"`
	CipherAlg *CipherAlg    `json:"cipher-alg,omitempty"`
}

// EncryptFormat is RbdImageEncryptionFormat.
type EncryptFormat string

// EnumValues implements qmp.Enum.
func (EncryptFormat) EnumValues() []string { return []string{"luks", "luks2"} }

// CipherAlg is QCryptoCipherAlgorithm.
type CipherAlg string

// EnumValues implements qmp.Enum.
func (CipherAlg) EnumValues() []string {
	return []string{"aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128", "serpent-128", "serpent-192",
		"serpent-256", "twofish-128", "twofish-192", "twofish-256", "sm4"}
}

// AuthMode is RbdAuthMode.
type AuthMode string

// EnumValues implements qmp.Enum.
func (AuthMode) EnumValues() []string { return []string{"cephx", "none"} }

// ServerAddress is InetSocketAddressBase: one monitor.
type ServerAddress struct {
	Host string `json:"host"`
	Port string `json:"port"`
}

// CreateOptions are BlockdevCreateOptionsRbd's members.
type CreateOptions struct {
	Location Options `json:"location"`
	Size     uint64  `json:"size"`
	// ClusterSize is the object size (a power of two of at least 4 KiB).
	ClusterSize *uint64               `json:"cluster-size,omitempty"`
	Encrypt     *CreateEncryptOptions `json:"encrypt,omitempty"`
}

// buildHint is what a blockd without rbd support says to do.
const buildHint = "blockd was built without rbd support: install librbd-dev and librados-dev and run 'make build' " +
	"(it adds the build tag 'ceph' when librbd is present), or build with 'go build -tags ceph ./cmd/blockd'"

// errNoSecrets: blockd has no secret objects, so no key-secret can name one.
func errNoSecret(id string) error {
	// compat(qsd-7.2): its words for a secret that does not exist, and
	// what to do instead.
	return fmt.Errorf("No secret with id '%s' (blockd does not support secret objects yet: "+
		"give the key in a keyring file named by the Ceph configuration instead)", id)
}

var errEncrypt = block.Errorf(block.ErrNotSupported, "blockd does not support encrypted rbd images yet (encrypt)")

// check refuses what blockd cannot do, before anything connects.
func (o *Options) check(readOnly bool) error {
	if o.Encrypt != nil {
		return errEncrypt
	}
	if o.KeySecret != nil {
		return errNoSecret(*o.KeySecret)
	}
	if o.Snapshot != nil && !readOnly {
		// compat(qsd-7.2): its words.
		return errors.New("rbd snapshots are read-only")
	}
	return nil
}

// monHost is the server list as librados' mon_host.
func (o *Options) monHost() string {
	if o.Server == nil {
		return ""
	}
	var hosts []string
	for _, s := range *o.Server {
		hosts = append(hosts, net.JoinHostPort(s.Host, s.Port))
	}
	return strings.Join(hosts, ",")
}

// authModes is auth-client-required as librados' auth_client_required.
func (o *Options) authModes() string {
	if o.AuthClientRequired == nil {
		return ""
	}
	var ms []string
	for _, m := range *o.AuthClientRequired {
		ms = append(ms, string(m))
	}
	return strings.Join(ms, ";")
}
