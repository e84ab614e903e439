package imap

import "mailproxy/protocols"

// Notice implements protocols.Handler.
func (Handler) Notice(n protocols.Notice) string {
	switch n {
	case protocols.NoticePanic:
		return "* BYE Internal error, try again later\r\n"
	case protocols.NoticeTimeout:
		return "* BYE Login timeout, closing connection\r\n"
	case protocols.NoticeBusy:
		return "* BYE Too many connections, try again later\r\n"
	case protocols.NoticeShutdown:
		return "* BYE Server shutting down, reconnect later\r\n"
	}
	return ""
}
