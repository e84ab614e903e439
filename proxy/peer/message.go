package peer

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// A heartbeat is one UDP datagram, big-endian:
//
//	0   4  magic "mpHB"
//	4   1  version (1)
//	5   1  role: 0 standby, 1 active
//	6   1  flags: bit 0 = leaving (the sender is shutting down),
//	          bit 1 = a payload follows the node name
//	7   1  n, length of the node name (1..255)
//	8   4  priority (int32)
//	12  8  epoch: the sender's start, Unix nanoseconds
//	20  8  sequence number within the epoch, from 1
//	28  8  sent: the sender's wall clock, Unix nanoseconds
//	36  n  node name
//	(with bit 1: 2 bytes payload length p, then p bytes of payload)
//	end 32 HMAC-SHA256 with the shared secret over every byte before it
//
// The MAC covers every field, so nothing in a datagram is trusted before it
// is checked; replays are refused by the replay guard (replay.go).
const (
	magic      = "mpHB"
	version    = 1
	headerLen  = 36
	macLen     = sha256.Size
	maxNodeLen = 255
	flagLeave  = 1 << 0
	flagData   = 1 << 1
	// MaxPayload is the longest payload a heartbeat carries (Node.Share).
	MaxPayload = 8 << 10
	// MaxDatagram is the longest heartbeat: a larger read buffer is never
	// needed.
	MaxDatagram = headerLen + maxNodeLen + 2 + MaxPayload + macLen
)

// Errors of Decode. Every one means the datagram is ignored.
var (
	ErrMalformed = errors.New("malformed heartbeat")
	ErrBadMAC    = errors.New("heartbeat MAC does not match: wrong secret or forged")
)

// Message is one heartbeat.
type Message struct {
	Node     string
	Priority int32
	Role     Role
	Leaving  bool      // the sender is shutting down: take over now, do not wait for dead_after
	Epoch    int64     // the sender's start, Unix nanoseconds; a restart starts a higher one
	Seq      uint64    // increases by one per datagram within an epoch
	Sent     time.Time // the sender's wall clock
	Payload  []byte    // what the sender shares with us (Node.Share); nil: none
}

// Encode appends the datagram for m, authenticated with secret, to dst.
func (m *Message) Encode(dst []byte, secret []byte) ([]byte, error) {
	if m.Node == "" || len(m.Node) > maxNodeLen {
		return nil, fmt.Errorf("node name must be 1 to %d bytes, not %d", maxNodeLen, len(m.Node))
	}
	if m.Role != Standby && m.Role != Active {
		return nil, fmt.Errorf("cannot send role %d", m.Role)
	}
	if len(m.Payload) > MaxPayload {
		return nil, fmt.Errorf("payload of %d bytes is over %d", len(m.Payload), MaxPayload)
	}
	start := len(dst)
	dst = append(dst, magic...)
	var flags byte
	if m.Leaving {
		flags |= flagLeave
	}
	if m.Payload != nil {
		flags |= flagData
	}
	dst = append(dst, version, byte(m.Role), flags, byte(len(m.Node)))
	dst = binary.BigEndian.AppendUint32(dst, uint32(m.Priority))
	dst = binary.BigEndian.AppendUint64(dst, uint64(m.Epoch))
	dst = binary.BigEndian.AppendUint64(dst, m.Seq)
	dst = binary.BigEndian.AppendUint64(dst, uint64(m.Sent.UnixNano()))
	dst = append(dst, m.Node...)
	if m.Payload != nil {
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(m.Payload)))
		dst = append(dst, m.Payload...)
	}
	return append(dst, sum(secret, dst[start:])...), nil
}

// Decode checks b's length, magic, version and MAC, in that order, and only
// then reads the fields. It never keeps b.
func Decode(b []byte, secret []byte) (*Message, error) {
	if len(b) < headerLen+1+macLen || string(b[:4]) != magic {
		return nil, ErrMalformed
	}
	if b[4] != version {
		return nil, fmt.Errorf("%w: version %d", ErrMalformed, b[4])
	}
	name := headerLen + int(b[7])
	body := name
	if b[6]&flagData != 0 && len(b) >= name+2 {
		body += 2 + int(binary.BigEndian.Uint16(b[name:]))
	}
	if b[7] == 0 || len(b) != body+macLen {
		return nil, ErrMalformed
	}
	if !hmac.Equal(b[body:], sum(secret, b[:body])) {
		return nil, ErrBadMAC
	}
	role, flags := Role(b[5]), b[6]
	if role != Standby && role != Active || flags&^(flagLeave|flagData) != 0 {
		return nil, fmt.Errorf("%w: role %d, flags %#x", ErrMalformed, b[5], flags)
	}
	var payload []byte
	if flags&flagData != 0 {
		payload = append([]byte{}, b[name+2:body]...)
	}
	return &Message{
		Payload:  payload,
		Role:     role,
		Leaving:  flags&flagLeave != 0,
		Priority: int32(binary.BigEndian.Uint32(b[8:])),
		Epoch:    int64(binary.BigEndian.Uint64(b[12:])),
		Seq:      binary.BigEndian.Uint64(b[20:]),
		Sent:     time.Unix(0, int64(binary.BigEndian.Uint64(b[28:]))),
		Node:     string(b[headerLen:name]),
	}, nil
}

func sum(secret, b []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write(b)
	return h.Sum(nil)
}
