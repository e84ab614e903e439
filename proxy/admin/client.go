package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client calls the admin API; `mailproxy ctl` is a thin shell around it.
type Client struct {
	// Addr is the API's host:port (or a base URL such as
	// "http://127.0.0.1:9025").
	Addr string
	// Token is sent as a bearer token when set; POST calls and user
	// lookups need it when the server has a token_file.
	Token string
	// HTTP is the client to use; default one with a 10 s timeout.
	HTTP *http.Client
}

// APIError is an answer other than 200: the server's message and code.
type APIError struct {
	StatusCode int
	Message    string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.StatusCode)
}

// Status calls GET /status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.do(ctx, http.MethodGet, "/status", &st)
}

// User calls GET /users/{name}.
func (c *Client) User(ctx context.Context, name string) (*UserStatus, error) {
	var us UserStatus
	return &us, c.do(ctx, http.MethodGet, "/users/"+url.PathEscape(name), &us)
}

// Drain calls POST /pools/{pool}/backends/{backend}/drain.
func (c *Client) Drain(ctx context.Context, pool, backend string) (*Result, error) {
	return c.action(ctx, pool, backend, "drain")
}

// Undrain calls POST /pools/{pool}/backends/{backend}/undrain.
func (c *Client) Undrain(ctx context.Context, pool, backend string) (*Result, error) {
	return c.action(ctx, pool, backend, "undrain")
}

// Kick calls POST /pools/{pool}/backends/{backend}/kick.
func (c *Client) Kick(ctx context.Context, pool, backend string) (*Result, error) {
	return c.action(ctx, pool, backend, "kick")
}

// Weight calls POST /pools/{pool}/backends/{backend}/weight.
func (c *Client) Weight(ctx context.Context, pool, backend string, weight int) (*Result, error) {
	var res Result
	path := fmt.Sprintf("/pools/%s/backends/%s/weight", url.PathEscape(pool), url.PathEscape(backend))
	return &res, c.doBody(ctx, http.MethodPost, path, WeightChange{Weight: &weight}, &res)
}

// Pin calls POST /users/{user}/pin; backend "" unpins.
func (c *Client) Pin(ctx context.Context, user, pool, backend string) (*UserResult, error) {
	var res UserResult
	return &res, c.doBody(ctx, http.MethodPost, "/users/"+url.PathEscape(user)+"/pin", UserChange{Pool: pool, Backend: backend}, &res)
}

// Move calls POST /users/{user}/move.
func (c *Client) Move(ctx context.Context, user, pool, backend string) (*UserResult, error) {
	var res UserResult
	return &res, c.doBody(ctx, http.MethodPost, "/users/"+url.PathEscape(user)+"/move", UserChange{Pool: pool, Backend: backend}, &res)
}

func (c *Client) action(ctx context.Context, pool, backend, action string) (*Result, error) {
	var res Result
	path := fmt.Sprintf("/pools/%s/backends/%s/%s", url.PathEscape(pool), url.PathEscape(backend), action)
	return &res, c.do(ctx, http.MethodPost, path, &res)
}

func (c *Client) base() string {
	if strings.Contains(c.Addr, "://") {
		return strings.TrimSuffix(c.Addr, "/")
	}
	return "http://" + c.Addr
}

// do makes one call and decodes a 200 answer into out; any other answer
// becomes an *APIError with the server's message.
func (c *Client) do(ctx context.Context, method, path string, out any) error {
	return c.doBody(ctx, method, path, nil, out)
}

// doBody is do with a JSON body (nil: none).
func (c *Client) doBody(ctx context.Context, method, path string, in, out any) error {
	var reqBody io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		reqBody = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base()+path, reqBody)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin API: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return &APIError{StatusCode: resp.StatusCode, Message: msg}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("admin API: decode answer: %w", err)
	}
	return nil
}
