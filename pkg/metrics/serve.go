package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Listen opens the endpoint addr names: "unix:PATH" (a stale socket file
// is replaced) or "tcp:HOST:PORT".
func Listen(addr string) (net.Listener, error) {
	kind, where, ok := strings.Cut(addr, ":")
	switch {
	case !ok || where == "":
	case kind == "unix":
		if st, err := os.Lstat(where); err == nil && st.Mode()&os.ModeSocket != 0 {
			os.Remove(where)
		}
		return net.Listen("unix", where)
	case kind == "tcp":
		return net.Listen("tcp", where)
	}
	return nil, fmt.Errorf("metrics address '%s': expected unix:PATH or tcp:HOST:PORT", addr)
}

// Serve answers GET /metrics on l until l is closed.
func (r *Registry) Serve(l net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(r.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	err := srv.Serve(l)
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
