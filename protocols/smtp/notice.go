package smtp

import "mailproxy/protocols"

// Notice implements protocols.Handler.
func (Handler) Notice(n protocols.Notice) string {
	switch n {
	case protocols.NoticePanic:
		return "421 4.3.0 Internal error, try again later\r\n"
	case protocols.NoticeTimeout:
		return "421 4.4.2 Timeout, closing connection\r\n"
	case protocols.NoticeBusy:
		return "421 4.7.0 Too many connections, try again later\r\n"
	case protocols.NoticeShutdown:
		return "421 4.3.2 Server shutting down, try again later\r\n"
	}
	return ""
}
