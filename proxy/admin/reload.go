package admin

import (
	"context"
	"io"
	"net/http"
	"strings"
)

// ReloadResult is the answer to POST /reload.
type ReloadResult struct {
	Reloaded bool     `json:"reloaded"`
	Notes    []string `json:"notes"` // what the new file changes that only a restart applies
}

// reload runs Options.Reload: 200 with the notes, or 422 with the reasons
// the new config was refused (the old one stays in force).
func (a *API) reload(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(r) {
		a.refuse(w, r)
		return
	}
	a.log.Info("reload requested", "client", r.RemoteAddr)
	notes, err := a.opts.Reload(r.Context())
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if notes == nil {
		notes = []string{}
	}
	writeJSON(w, http.StatusOK, ReloadResult{Reloaded: true, Notes: notes})
}

// Reload calls POST /reload.
func (c *Client) Reload(ctx context.Context) (*ReloadResult, error) {
	var res ReloadResult
	return &res, c.do(ctx, http.MethodPost, "/reload", &res)
}

func printReload(w io.Writer, r *ReloadResult) error {
	var b strings.Builder
	b.WriteString("reloaded\n")
	for _, n := range r.Notes {
		b.WriteString("note: " + n + "\n")
	}
	_, err := w.Write([]byte(b.String()))
	return err
}
