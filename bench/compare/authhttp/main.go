// Command authhttp is the auth_http responder that nginx's mail proxy needs
// in bench/compare: every login is accepted and sent to -backend. nginx
// asks it once per login over a new HTTP/1.0 connection; a real deployment
// would check the password or look the user up here.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	backend := flag.String("backend", "", "host:port of the IMAP backend (an IP address: nginx does not resolve)")
	flag.Parse()
	host, port, err := net.SplitHostPort(*backend)
	if err != nil {
		log.Fatalf("-backend: %v", err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	log.Fatal(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Auth-Status", "OK")
		h.Set("Auth-Server", host)
		h.Set("Auth-Port", port)
		w.WriteHeader(http.StatusOK)
	})))
}
