package admin

import (
	_ "embed"
	"net/http"
)

// statusPage is the one HTML page of GET /: no framework and nothing
// loaded from elsewhere. Its script reads GET /status every few seconds and
// calls the drain and undrain endpoints with the token pasted into it,
// which it keeps in the tab's sessionStorage only.
//
//go:embed page/status.html
var statusPage []byte

func (a *API) page(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// Everything the page needs is in it; it may only talk to this API.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	w.Write(statusPage)
}
