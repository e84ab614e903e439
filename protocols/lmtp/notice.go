package lmtp

import (
	"mailproxy/protocols"
	"mailproxy/protocols/smtp"
)

// Notice implements protocols.Handler: LMTP's notices are SMTP's.
func (Handler) Notice(n protocols.Notice) string { return smtp.Handler{}.Notice(n) }
