// Command gocheck_witness is an independent transparency log for tests/witness/test_go_log.py.
//
// It plays the log against our witness over real HTTP: its checkpoints are
// signed with Go's golang.org/x/mod/sumdb/note (Ed25519), its Merkle tree and
// consistency proofs come from golang.org/x/mod/sumdb/tlog (Debian package
// golang-golang-x-mod-dev), and the cosignatures the witness returns are
// verified here, straight from c2sp.org/tlog-cosignature and
// c2sp.org/tlog-witness, sharing no code with the Python under test.
//
//	gocheck_witness genkey ORIGIN   prints {"skey": ..., "vkey": ...}
//	gocheck_witness run < config    runs the scenario, prints a JSON report
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type config struct {
	URL         string `json:"url"`
	Origin      string `json:"origin"`
	SKey        string `json:"skey"`
	WitnessVKey string `json:"witness_vkey"`
}

type step struct {
	Name   string `json:"name"`
	Status int    `json:"status"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// cosigner verifies cosignature/v1 signatures (tlog-cosignature "Format" and
// "Ed25519 signed message"); it is a note.Verifier so note.Open can use it.
type cosigner struct {
	name string
	hash uint32
	pub  ed25519.PublicKey
	// last timestamp seen by Verify
	time uint64
}

// parseWitnessVKey reads name+hex(keyID)+base64(0x04 || key) (signed-note "Verifier keys").
func parseWitnessVKey(vkey string) (*cosigner, error) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return nil, errors.New("witness vkey is not name+id+key")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != 1+ed25519.PublicKeySize || raw[0] != 0x04 {
		return nil, errors.New("witness vkey is not a type 0x04 Ed25519 key")
	}
	c := &cosigner{name: parts[0], pub: ed25519.PublicKey(raw[1:])}
	// Key ID: SHA-256(name || "\n" || 0x04 || public key)[:4].
	h := sha256.Sum256(append([]byte(c.name+"\n\x04"), c.pub...))
	c.hash = binary.BigEndian.Uint32(h[:4])
	if fmt.Sprintf("%08x", c.hash) != parts[1] {
		return nil, fmt.Errorf("witness vkey ID %s is not %08x", parts[1], c.hash)
	}
	return c, nil
}

func (c *cosigner) Name() string    { return c.name }
func (c *cosigner) KeyHash() uint32 { return c.hash }

func (c *cosigner) Verify(msg, sig []byte) bool {
	// timestamped_signature: u64 timestamp (big-endian) || 64-byte Ed25519 signature.
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	if t > 1<<63-1 {
		return false
	}
	signed := append([]byte(fmt.Sprintf("cosignature/v1\ntime %d\n", t)), msg...)
	if !ed25519.Verify(c.pub, signed, sig[8:]) {
		return false
	}
	c.time = t
	return true
}

type log struct {
	origin string
	hashes []tlog.Hash // at tlog.StoredHashIndex positions
	n      int64       // records in the tree
}

func (l *log) reader() tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			if x >= int64(len(l.hashes)) {
				return nil, fmt.Errorf("no stored hash %d", x)
			}
			out[i] = l.hashes[x]
		}
		return out, nil
	})
}

// grow appends records until the tree has "to" records.
func (l *log) grow(to int64) error {
	for ; l.n < to; l.n++ {
		hs, err := tlog.StoredHashes(l.n, []byte(fmt.Sprintf("record %d\n", l.n)), l.reader())
		if err != nil {
			return err
		}
		l.hashes = append(l.hashes, hs...)
	}
	return nil
}

func (l *log) checkpoint(n int64, signer note.Signer) ([]byte, error) {
	root, err := tlog.TreeHash(n, l.reader())
	if err != nil {
		return nil, err
	}
	text := fmt.Sprintf("%s\n%d\n%s\n", l.origin, n, base64.StdEncoding.EncodeToString(root[:]))
	return note.Sign(&note.Note{Text: text}, signer)
}

func body(old int64, proof tlog.TreeProof, checkpoint []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", old)
	for _, h := range proof {
		b.WriteString(base64.StdEncoding.EncodeToString(h[:]) + "\n")
	}
	b.WriteString("\n")
	b.Write(checkpoint)
	return b.Bytes()
}

var client = &http.Client{Timeout: 10 * time.Second}

func post(url string, data []byte) (int, string, []byte, error) {
	resp, err := client.Post(url+"/add-checkpoint", "text/plain", bytes.NewReader(data))
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header.Get("Content-Type"), out, err
}

// checkCosigned verifies a 200 answer: only signature lines, one of them a
// cosignature/v1 by the witness over checkpoint's text, with a timestamp that
// is not zero and within a minute of now; the log's signature still verifies.
func checkCosigned(checkpoint, answer []byte, logVerifier note.Verifier, w *cosigner) error {
	if len(answer) == 0 || !bytes.HasSuffix(answer, []byte("\n")) {
		return errors.New("answer is empty or does not end in a newline")
	}
	found := false
	for _, line := range strings.Split(strings.TrimSuffix(string(answer), "\n"), "\n") {
		if !strings.HasPrefix(line, "\u2014 ") {
			return fmt.Errorf("answer line %q is not a signature line", line)
		}
		fields := strings.SplitN(strings.TrimPrefix(line, "\u2014 "), " ", 2)
		if len(fields) == 2 && fields[0] == w.name {
			raw, err := base64.StdEncoding.DecodeString(fields[1])
			if err != nil || len(raw) < 4 || binary.BigEndian.Uint32(raw) != w.hash {
				return errors.New("the witness's line has another key ID")
			}
			found = true
		}
	}
	if !found {
		return errors.New("no signature line by the witness")
	}
	w.time = 0
	n, err := note.Open(append(append([]byte{}, checkpoint...), answer...), note.VerifierList(logVerifier, w))
	if err != nil {
		return fmt.Errorf("note.Open: %v", err)
	}
	if len(n.Sigs) != 2 {
		return fmt.Errorf("%d verified signatures, want the log's and the witness's", len(n.Sigs))
	}
	now := uint64(time.Now().Unix())
	if w.time == 0 || w.time+60 < now || w.time > now+60 {
		return fmt.Errorf("cosignature timestamp %d is zero or not near now (%d)", w.time, now)
	}
	return nil
}

func run(cfg config) ([]step, error) {
	signer, err := note.NewSigner(cfg.SKey)
	if err != nil {
		return nil, err
	}
	w, err := parseWitnessVKey(cfg.WitnessVKey)
	if err != nil {
		return nil, err
	}
	l := &log{origin: cfg.Origin}
	if err := l.grow(20); err != nil {
		return nil, err
	}
	// Another key with the log's name: its signatures must not count.
	otherSKey, _, err := note.GenerateKey(rand.Reader, cfg.Origin)
	if err != nil {
		return nil, err
	}
	other, err := note.NewSigner(otherSKey)
	if err != nil {
		return nil, err
	}
	var steps []step
	record := func(name string, status int, want int, check func() error) {
		s := step{Name: name, Status: status, OK: status == want}
		if !s.OK {
			s.Detail = fmt.Sprintf("status %d, want %d", status, want)
		} else if check != nil {
			if err := check(); err != nil {
				s.OK, s.Detail = false, err.Error()
			}
		}
		steps = append(steps, s)
	}
	// The log's own verifier, from its signing key.
	logVerifier, err := verifierOf(cfg.SKey)
	if err != nil {
		return nil, err
	}

	// 1. A first checkpoint, from size 0: no proof.
	cp5, err := l.checkpoint(5, signer)
	if err != nil {
		return nil, err
	}
	status, _, answer, err := post(cfg.URL, body(0, nil, cp5))
	if err != nil {
		return nil, err
	}
	record("first", status, 200, func() error { return checkCosigned(cp5, answer, logVerifier, w) })

	// 2. An extension with a consistency proof from Go's tlog.
	cp12, err := l.checkpoint(12, signer)
	if err != nil {
		return nil, err
	}
	proof, err := tlog.ProveTree(12, 5, l.reader())
	if err != nil {
		return nil, err
	}
	status, _, answer, err = post(cfg.URL, body(5, proof, cp12))
	if err != nil {
		return nil, err
	}
	record("extend", status, 200, func() error { return checkCosigned(cp12, answer, logVerifier, w) })

	// 3. A stale old size: 409, the stored size as text/x.tlog.size.
	cp20, err := l.checkpoint(20, signer)
	if err != nil {
		return nil, err
	}
	proof, err = tlog.ProveTree(20, 5, l.reader())
	if err != nil {
		return nil, err
	}
	status, ctype, answer, err := post(cfg.URL, body(5, proof, cp20))
	if err != nil {
		return nil, err
	}
	record("conflict", status, 409, func() error {
		if ctype != "text/x.tlog.size" {
			return fmt.Errorf("Content-Type %q", ctype)
		}
		if string(answer) != "12\n" {
			return fmt.Errorf("body %q, want \"12\\n\"", answer)
		}
		return nil
	})

	// 4. A proof that does not verify: 422.
	proof, err = tlog.ProveTree(20, 12, l.reader())
	if err != nil {
		return nil, err
	}
	bad := append(tlog.TreeProof{}, proof...)
	bad[len(bad)-1][0] ^= 1
	status, _, _, err = post(cfg.URL, body(12, bad, cp20))
	if err != nil {
		return nil, err
	}
	record("bad-proof", status, 422, nil)

	// 5. Signed by another key of the same name: no trusted signature, 403.
	forged, err := l.checkpoint(20, other)
	if err != nil {
		return nil, err
	}
	status, _, _, err = post(cfg.URL, body(12, proof, forged))
	if err != nil {
		return nil, err
	}
	record("other-key", status, 403, nil)

	// 6. The monitoring endpoint: the checkpoint of size 12, log signature and cosignature.
	sum := sha256.Sum256([]byte(cfg.Origin))
	resp, err := client.Get(cfg.URL + "/" + hex.EncodeToString(sum[:]) + "/checkpoint")
	if err != nil {
		return nil, err
	}
	monitored, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	record("monitor", resp.StatusCode, 200, func() error {
		n, err := note.Open(monitored, note.VerifierList(logVerifier, w))
		if err != nil {
			return fmt.Errorf("note.Open: %v", err)
		}
		if len(n.Sigs) != 2 || len(n.UnverifiedSigs) != 0 {
			return fmt.Errorf("%d verified and %d other signatures, want 2 and 0", len(n.Sigs), len(n.UnverifiedSigs))
		}
		lines := strings.SplitN(n.Text, "\n", 3)
		if lines[0] != cfg.Origin || lines[1] != "12" {
			return fmt.Errorf("monitored checkpoint is %q", n.Text)
		}
		return nil
	})

	// 7. The right proof from 12 to 20.
	status, _, answer, err = post(cfg.URL, body(12, proof, cp20))
	if err != nil {
		return nil, err
	}
	record("extend-again", status, 200, func() error { return checkCosigned(cp20, answer, logVerifier, w) })
	return steps, nil
}

// verifierOf derives the vkey of a Go skey (PRIVATE+KEY+name+hash+base64(0x01 || seed)).
func verifierOf(skey string) (note.Verifier, error) {
	parts := strings.SplitN(skey, "+", 5)
	if len(parts) != 5 {
		return nil, errors.New("malformed skey")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize {
		return nil, errors.New("malformed skey key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(parts[2], pub)
	if err != nil {
		return nil, err
	}
	return note.NewVerifier(vkey)
}

func main() {
	out := json.NewEncoder(os.Stdout)
	switch {
	case len(os.Args) == 3 && os.Args[1] == "genkey":
		skey, vkey, err := note.GenerateKey(rand.Reader, os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		_ = out.Encode(map[string]string{"skey": skey, "vkey": vkey})
	case len(os.Args) == 2 && os.Args[1] == "run":
		var cfg config
		if err := json.NewDecoder(os.Stdin).Decode(&cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		steps, err := run(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_ = out.Encode(map[string]any{"steps": steps})
	default:
		fmt.Fprintln(os.Stderr, "usage: gocheck_witness genkey ORIGIN | gocheck_witness run < config")
		os.Exit(2)
	}
}
