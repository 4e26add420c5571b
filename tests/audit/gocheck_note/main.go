// Command gocheck_note is the independent reference for tests/audit/test_note.py.
//
// It reads a JSON array of requests on stdin and writes a JSON array of answers.
// Signed notes go through Go's golang.org/x/mod/sumdb/note (Debian package
// golang-golang-x-mod-dev); checkpoint bodies through golang.org/x/mod/sumdb/tlog.
// x/mod knows no cosignature/v1, so this file implements one note.Verifier and
// note.Signer for it straight from c2sp.org/tlog-cosignature, sharing no code
// with the Python module under test.
package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"unicode"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type cosigKey struct {
	Name string `json:"name"`
	Pub  []byte `json:"pub"`  // 32-byte Ed25519 public key
	Seed []byte `json:"seed"` // 32-byte seed, for signing
	Time uint64 `json:"time"` // timestamp to sign with
}

type request struct {
	Op        string     `json:"op"`
	Name      string     `json:"name"`
	Text      string     `json:"text"`
	Note      []byte     `json:"note"` // the signed note, base64 in JSON: raw bytes
	Pub       []byte     `json:"pub"`
	VKeys     []string   `json:"vkeys"`
	SKeys     []string   `json:"skeys"`
	Cosigners []cosigKey `json:"cosigners"`
	N         int64      `json:"n"`
	Hash      []byte     `json:"hash"`
}

type sig struct {
	Name string `json:"name"`
	Hash uint32 `json:"hash"`
}

type answer struct {
	Error      string `json:"error,omitempty"`
	Text       string `json:"text,omitempty"`
	Note       string `json:"note,omitempty"`
	SKey       string `json:"skey,omitempty"`
	VKey       string `json:"vkey,omitempty"`
	Sigs       []sig  `json:"sigs,omitempty"`
	Unverified []sig  `json:"unverified,omitempty"`
	Spaces     []rune `json:"spaces,omitempty"`
	N          int64  `json:"n,omitempty"`
	Hash       []byte `json:"hash,omitempty"`
	Body       string `json:"body,omitempty"`
}

// cosigner is a cosignature/v1 note.Verifier and note.Signer (c2sp.org/tlog-cosignature).
type cosigner struct {
	name string
	hash uint32
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	time uint64
}

func newCosigner(k cosigKey) *cosigner {
	h := sha256.New()
	h.Write([]byte(k.Name))
	h.Write([]byte{'\n', 0x04})
	c := &cosigner{name: k.Name, time: k.Time}
	if len(k.Seed) > 0 {
		c.priv = ed25519.NewKeyFromSeed(k.Seed)
		c.pub = c.priv.Public().(ed25519.PublicKey)
	} else {
		c.pub = ed25519.PublicKey(k.Pub)
	}
	h.Write(c.pub)
	c.hash = binary.BigEndian.Uint32(h.Sum(nil))
	return c
}

func (c *cosigner) Name() string    { return c.name }
func (c *cosigner) KeyHash() uint32 { return c.hash }

func message(t uint64, msg []byte) []byte {
	return append([]byte(fmt.Sprintf("cosignature/v1\ntime %d\n", t)), msg...)
}

func (c *cosigner) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	if t > 1<<63-1 {
		return false
	}
	return ed25519.Verify(c.pub, message(t, msg), sig[8:])
}

func (c *cosigner) Sign(msg []byte) ([]byte, error) {
	out := binary.BigEndian.AppendUint64(nil, c.time)
	return append(out, ed25519.Sign(c.priv, message(c.time, msg))...), nil
}

func sigs(list []note.Signature) []sig {
	out := []sig{}
	for _, s := range list {
		out = append(out, sig{s.Name, s.Hash})
	}
	return out
}

func run(r request) (a answer) {
	fail := func(err error) answer { return answer{Error: err.Error()} }
	switch r.Op {
	case "open":
		var vs []note.Verifier
		for _, vk := range r.VKeys {
			v, err := note.NewVerifier(vk)
			if err != nil {
				return fail(err)
			}
			vs = append(vs, v)
		}
		for _, k := range r.Cosigners {
			vs = append(vs, newCosigner(k))
		}
		n, err := note.Open(r.Note, note.VerifierList(vs...))
		if err != nil {
			return fail(err)
		}
		return answer{Text: n.Text, Sigs: sigs(n.Sigs), Unverified: sigs(n.UnverifiedSigs)}
	case "sign":
		var ss []note.Signer
		for _, sk := range r.SKeys {
			s, err := note.NewSigner(sk)
			if err != nil {
				return fail(err)
			}
			ss = append(ss, s)
		}
		for _, k := range r.Cosigners {
			ss = append(ss, newCosigner(k))
		}
		msg, err := note.Sign(&note.Note{Text: r.Text}, ss...)
		if err != nil {
			return fail(err)
		}
		return answer{Note: string(msg)}
	case "genkey":
		skey, vkey, err := note.GenerateKey(rand.Reader, r.Name)
		if err != nil {
			return fail(err)
		}
		return answer{SKey: skey, VKey: vkey}
	case "vkey":
		vkey, err := note.NewEd25519VerifierKey(r.Name, ed25519.PublicKey(r.Pub))
		if err != nil {
			return fail(err)
		}
		return answer{VKey: vkey}
	case "newverifier":
		v, err := note.NewVerifier(r.VKeys[0])
		if err != nil {
			return fail(err)
		}
		return answer{Sigs: []sig{{v.Name(), v.KeyHash()}}}
	case "spaces":
		out := []rune{}
		for c := rune(0); c <= unicode.MaxRune; c++ {
			if unicode.IsSpace(c) {
				out = append(out, c)
			}
		}
		return answer{Spaces: out}
	case "parsetree":
		t, err := tlog.ParseTree([]byte(r.Text))
		if err != nil {
			return fail(err)
		}
		return answer{N: t.N, Hash: t.Hash[:]}
	case "formattree":
		var h tlog.Hash
		copy(h[:], r.Hash)
		return answer{Body: string(tlog.FormatTree(tlog.Tree{N: r.N, Hash: h}))}
	}
	return answer{Error: "unknown op " + r.Op}
}

func main() {
	var reqs []request
	if err := json.NewDecoder(os.Stdin).Decode(&reqs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out := make([]answer, len(reqs))
	for i, r := range reqs {
		out[i] = run(r)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
