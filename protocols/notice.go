package protocols

// Notice names one of the few things the proxy itself says to a client,
// always just before it closes the connection; Handler.Notice words it in
// the protocol.
type Notice int

// The notices.
const (
	NoticePanic    Notice = iota // an internal error ended the session
	NoticeTimeout                // login_timeout ran out before a login
	NoticeBusy                   // a connection limit refused the connection
	NoticeShutdown               // the server is shutting down and closes the session
)
