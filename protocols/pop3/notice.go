package pop3

import "mailproxy/protocols"

// Notice implements protocols.Handler.
func (Handler) Notice(n protocols.Notice) string {
	switch n {
	case protocols.NoticePanic:
		return "-ERR [SYS/TEMP] Internal error, try again later\r\n"
	case protocols.NoticeTimeout:
		return "-ERR Login timeout, closing connection\r\n"
	case protocols.NoticeBusy:
		return "-ERR [SYS/TEMP] Too many connections, try again later\r\n"
	case protocols.NoticeShutdown:
		return "-ERR [SYS/TEMP] Server shutting down, reconnect later\r\n"
	}
	return ""
}
