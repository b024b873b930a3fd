package nbd

import (
	"encoding/json"
	"fmt"
	"net"

	"github.com/blockd/blockd/pkg/qmp"
)

// Options are BlockdevOptionsNbd's members.
type Options struct {
	Server      SocketAddress `json:"server"`
	Export      *string       `json:"export,omitempty"`
	TLSCreds    *string       `json:"tls-creds,omitempty"`
	TLSHostname *string       `json:"tls-hostname,omitempty"`
	// XDirtyBitmap names a metadata context to read block status from
	// instead of base:allocation, as QEMU's x-dirty-bitmap does: the
	// whole name, "qemu:dirty-bitmap:NAME" (dirty then reads as a hole)
	// or "qemu:allocation-depth".
	XDirtyBitmap   *string `json:"x-dirty-bitmap,omitempty"`
	ReconnectDelay *uint32 `json:"reconnect-delay,omitempty"`
	OpenTimeout    *uint32 `json:"open-timeout,omitempty"`
}

// AddrType is SocketAddressType.
type AddrType string

// EnumValues implements qmp.Enum.
func (AddrType) EnumValues() []string { return []string{"inet", "unix", "vsock", "fd"} }

// UnixAddress is UnixSocketAddress.
type UnixAddress struct {
	Path     string `json:"path"`
	Abstract *bool  `json:"abstract,omitempty"`
	Tight    *bool  `json:"tight,omitempty"`
}

// InetAddress is InetSocketAddress.
type InetAddress struct {
	Host      string  `json:"host"`
	Port      string  `json:"port"`
	Numeric   *bool   `json:"numeric,omitempty"`
	To        *uint16 `json:"to,omitempty"`
	IPv4      *bool   `json:"ipv4,omitempty"`
	IPv6      *bool   `json:"ipv6,omitempty"`
	KeepAlive *bool   `json:"keep-alive,omitempty"`
	MPTCP     *bool   `json:"mptcp,omitempty"`
}

// SocketAddress is QMP's SocketAddress, a flat union on "type". blockd's
// client connects to unix and inet addresses; vsock and fd are refused
// at open. Its schema shape is declared in pkg/blockdev.
type SocketAddress struct {
	Type AddrType `json:"type"`
	Unix *UnixAddress
	Inet *InetAddress
}

// UnmarshalQMP implements qmp.Unmarshaler: the tag, then the variant's
// members, strictly, with QMP's wording for what is wrong.
func (a *SocketAddress) UnmarshalQMP(raw json.RawMessage, path string) error {
	var head struct {
		Type AddrType `json:"type"`
	}
	var rest map[string]json.RawMessage
	if err := qmp.Decode(raw, path, &head, &rest); err != nil {
		return err
	}
	a.Type = head.Type
	switch head.Type {
	case "unix":
		a.Unix = new(UnixAddress)
		return qmp.Decode(raw, path, &head, a.Unix)
	case "inet":
		a.Inet = new(InetAddress)
		return qmp.Decode(raw, path, &head, a.Inet)
	}
	return nil // refused at open, with a clear message
}

// UnmarshalJSON lets encoding/json decode it too.
func (a *SocketAddress) UnmarshalJSON(b []byte) error { return a.UnmarshalQMP(b, "server") }

// dial addresses: the network and address net.Dial takes.
func (a *SocketAddress) dialArgs() (network, addr string, err error) {
	switch {
	case a.Unix != nil:
		if a.Unix.Abstract != nil && *a.Unix.Abstract {
			return "", "", fmt.Errorf("blockd's nbd driver does not support abstract UNIX sockets")
		}
		return "unix", a.Unix.Path, nil
	case a.Inet != nil:
		network := "tcp"
		if a.Inet.IPv4 != nil && *a.Inet.IPv4 {
			network = "tcp4"
		} else if a.Inet.IPv6 != nil && *a.Inet.IPv6 {
			network = "tcp6"
		}
		return network, net.JoinHostPort(a.Inet.Host, a.Inet.Port), nil
	}
	return "", "", fmt.Errorf("blockd's nbd driver does not support socket address type '%s'", a.Type)
}

// describe names the address in connection errors as qsd does.
func (a *SocketAddress) describe() string {
	if a.Unix != nil {
		return a.Unix.Path
	}
	if a.Inet != nil {
		return a.Inet.Host + ":" + a.Inet.Port
	}
	return string(a.Type)
}

// filename is the node's filename, an NBD URI in QEMU's form.
func filename(a *SocketAddress, export string) string {
	path := ""
	if export != "" {
		path = "/" + export
	}
	if a.Unix != nil {
		return "nbd+unix://" + path + "?socket=" + a.Unix.Path
	}
	if a.Inet != nil {
		return "nbd://" + a.Inet.Host + ":" + a.Inet.Port + path
	}
	return "nbd:"
}
