// Command authhttp is the auth_http responder that nginx's mail proxy needs
// in bench/compare and bench/peers.sh: every login is accepted and sent to
// -backend (IMAP), -pop3 or -smtp by the protocol nginx names, and a user
// whose name starts with "idle" to -idle when that is set. Each may list
// several backends, comma-separated: a user whose name ends in the number
// N goes to the (N mod count)th. nginx asks it
// once per login over a new HTTP/1.0 connection; a real deployment would
// check the password or look the user up here.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	backend := flag.String("backend", "", "host:port of the IMAP backend (an IP address: nginx does not resolve)")
	pop3 := flag.String("pop3", "", "host:port of the POP3 backend")
	smtp := flag.String("smtp", "", "host:port of the SMTP backend")
	idle := flag.String("idle", "", "host:port for users called idle*")
	flag.Parse()
	split := func(list string) [][2]string {
		var out [][2]string
		for _, hp := range strings.Split(list, ",") {
			if hp == "" {
				continue
			}
			h, p, err := net.SplitHostPort(hp)
			if err != nil {
				log.Fatalf("%s: %v", hp, err)
			}
			out = append(out, [2]string{h, p})
		}
		return out
	}
	by := map[string][][2]string{"imap": split(*backend), "pop3": split(*pop3), "smtp": split(*smtp)}
	idleTo := split(*idle)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	log.Fatal(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := r.Header.Get("Auth-User")
		list := by[r.Header.Get("Auth-Protocol")]
		if len(idleTo) > 0 && strings.HasPrefix(user, "idle") {
			list = idleTo
		}
		h := w.Header()
		if len(list) == 0 {
			h.Set("Auth-Status", "no backend for this protocol")
			w.WriteHeader(http.StatusOK)
			return
		}
		n, _ := strconv.Atoi(strings.TrimLeft(user, "abcdefghijklmnopqrstuvwxyz"))
		to := list[n%len(list)]
		h.Set("Auth-Status", "OK")
		h.Set("Auth-Server", to[0])
		h.Set("Auth-Port", to[1])
		w.WriteHeader(http.StatusOK)
	})))
}
