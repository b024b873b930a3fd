package chardev

import (
	"encoding/json"

	"github.com/blockd/blockd/pkg/qmp"
)

// Kind is ChardevBackendKind: every backend qsd 7.2's schema names,
// whether or not qsd (or blockd) can open it.
type Kind string

// EnumValues implements qmp.Enum.
func (Kind) EnumValues() []string {
	return []string{"file", "serial", "parallel", "pipe", "socket", "udp", "pty", "null", "mux", "msmouse",
		"wctablet", "braille", "testdev", "stdio", "console", "spicevmc", "spiceport", "qemu-vdagent", "dbus",
		"vc", "ringbuf", "memory"}
}

// Common is ChardevCommon, the members every backend has.
type Common struct {
	Logfile   *string `json:"logfile,omitempty"`
	Logappend *bool   `json:"logappend,omitempty"`
}

// FileOptions is ChardevFile.
type FileOptions struct {
	Common
	In     *string `json:"in,omitempty"`
	Out    string  `json:"out"`
	Append *bool   `json:"append,omitempty"`
}

// HostdevOptions is ChardevHostdev (serial, parallel, pipe).
type HostdevOptions struct {
	Common
	Device string `json:"device"`
}

// SocketOptions is ChardevSocket.
type SocketOptions struct {
	Common
	Addr      SocketAddressLegacy `json:"addr"`
	TLSCreds  *string             `json:"tls-creds,omitempty"`
	TLSAuthz  *string             `json:"tls-authz,omitempty"`
	Server    *bool               `json:"server,omitempty"`
	Wait      *bool               `json:"wait,omitempty"`
	Nodelay   *bool               `json:"nodelay,omitempty"`
	Telnet    *bool               `json:"telnet,omitempty"`
	TN3270    *bool               `json:"tn3270,omitempty"`
	Websocket *bool               `json:"websocket,omitempty"`
	Reconnect *int64              `json:"reconnect,omitempty"`
}

// UDPOptions is ChardevUdp.
type UDPOptions struct {
	Common
	Remote SocketAddressLegacy  `json:"remote"`
	Local  *SocketAddressLegacy `json:"local,omitempty"`
}

// MuxOptions is ChardevMux.
type MuxOptions struct {
	Common
	Chardev string `json:"chardev"`
}

// StdioOptions is ChardevStdio.
type StdioOptions struct {
	Common
	Signal *bool `json:"signal,omitempty"`
}

// SpiceChannelOptions is ChardevSpiceChannel.
type SpiceChannelOptions struct {
	Common
	Type string `json:"type"`
}

// SpicePortOptions is ChardevSpicePort.
type SpicePortOptions struct {
	Common
	FQDN string `json:"fqdn"`
}

// VDAgentOptions is ChardevQemuVDAgent.
type VDAgentOptions struct {
	Common
	Mouse     *bool `json:"mouse,omitempty"`
	Clipboard *bool `json:"clipboard,omitempty"`
}

// DBusOptions is ChardevDBus.
type DBusOptions struct {
	Common
	Name string `json:"name"`
}

// VCOptions is ChardevVC.
type VCOptions struct {
	Common
	Width  *int64 `json:"width,omitempty"`
	Height *int64 `json:"height,omitempty"`
	Cols   *int64 `json:"cols,omitempty"`
	Rows   *int64 `json:"rows,omitempty"`
}

// RingbufOptions is ChardevRingbuf (ringbuf and its alias memory).
type RingbufOptions struct {
	Common
	Size *int64 `json:"size,omitempty"`
}

// Backend is ChardevBackend: a union on "type" whose variant's members
// sit under "data". Options holds a pointer to the variant's struct
// (*RingbufOptions for ringbuf and memory, *Common for the backends
// that take nothing more, …).
type Backend struct {
	Type    Kind `json:"type"`
	Options any  `json:"data"`
}

// variant returns a fresh struct for kind's data.
func variant(k Kind) any {
	switch k {
	case "file":
		return new(FileOptions)
	case "serial", "parallel", "pipe":
		return new(HostdevOptions)
	case "socket":
		return new(SocketOptions)
	case "udp":
		return new(UDPOptions)
	case "mux":
		return new(MuxOptions)
	case "stdio":
		return new(StdioOptions)
	case "spicevmc":
		return new(SpiceChannelOptions)
	case "spiceport":
		return new(SpicePortOptions)
	case "qemu-vdagent":
		return new(VDAgentOptions)
	case "dbus":
		return new(DBusOptions)
	case "vc":
		return new(VCOptions)
	case "ringbuf", "memory":
		return new(RingbufOptions)
	}
	return new(Common) // pty, null, msmouse, wctablet, braille, testdev, console
}

// UnmarshalQMP implements qmp.Unmarshaler: the tag, then the variant,
// then the union's own unexpected members, in the order qsd checks them.
func (b *Backend) UnmarshalQMP(raw json.RawMessage, path string) error {
	var head struct {
		Type Kind            `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := qmp.Decode(raw, path, &head, &map[string]json.RawMessage{}); err != nil {
		return err
	}
	opts := variant(head.Type)
	if err := qmp.Decode(head.Data, path+".data", opts); err != nil {
		return err
	}
	if err := qmp.Decode(raw, path, &head); err != nil {
		return err
	}
	b.Type, b.Options = head.Type, opts
	return nil
}

// AddrType is SocketAddressType.
type AddrType string

// EnumValues implements qmp.Enum.
func (AddrType) EnumValues() []string { return []string{"inet", "unix", "vsock", "fd"} }

// UnixSocketAddress is UnixSocketAddress.
type UnixSocketAddress struct {
	Path     string `json:"path"`
	Abstract *bool  `json:"abstract,omitempty"`
	Tight    *bool  `json:"tight,omitempty"`
}

// InetSocketAddress is InetSocketAddress.
type InetSocketAddress struct {
	Host      string  `json:"host"`
	Port      string  `json:"port"`
	Numeric   *bool   `json:"numeric,omitempty"`
	To        *uint16 `json:"to,omitempty"`
	IPv4      *bool   `json:"ipv4,omitempty"`
	IPv6      *bool   `json:"ipv6,omitempty"`
	KeepAlive *bool   `json:"keep-alive,omitempty"`
	MPTCP     *bool   `json:"mptcp,omitempty"`
}

// VsockSocketAddress is VsockSocketAddress.
type VsockSocketAddress struct {
	CID  string `json:"cid"`
	Port string `json:"port"`
}

// FdSocketAddress is the fd variant of SocketAddressLegacy (String).
type FdSocketAddress struct {
	Str string `json:"str"`
}

// SocketAddressLegacy is SocketAddressLegacy: {"type", "data"}. Exactly
// one of the pointers is set after decoding.
type SocketAddressLegacy struct {
	Type  AddrType            `json:"type"`
	Inet  *InetSocketAddress  `json:"-"`
	Unix  *UnixSocketAddress  `json:"-"`
	Vsock *VsockSocketAddress `json:"-"`
	Fd    *FdSocketAddress    `json:"-"`
}

// UnmarshalQMP implements qmp.Unmarshaler.
func (a *SocketAddressLegacy) UnmarshalQMP(raw json.RawMessage, path string) error {
	var head struct {
		Type AddrType        `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := qmp.Decode(raw, path, &head, &map[string]json.RawMessage{}); err != nil {
		return err
	}
	out := SocketAddressLegacy{Type: head.Type}
	var data any
	switch head.Type {
	case "inet":
		out.Inet = new(InetSocketAddress)
		data = out.Inet
	case "unix":
		out.Unix = new(UnixSocketAddress)
		data = out.Unix
	case "vsock":
		out.Vsock = new(VsockSocketAddress)
		data = out.Vsock
	default:
		out.Fd = new(FdSocketAddress)
		data = out.Fd
	}
	if err := qmp.Decode(head.Data, path+".data", data); err != nil {
		return err
	}
	if err := qmp.Decode(raw, path, &head); err != nil {
		return err
	}
	*a = out
	return nil
}
