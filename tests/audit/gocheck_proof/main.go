// Command gocheck_proof verifies what `tuf-signer audit prove` and `audit
// consistency` print (and the AuditLog RPCs return) with Go's
// golang.org/x/mod/sumdb/note and sumdb/tlog (Debian: golang-golang-x-mod-dev),
// reading the texts straight from c2sp.org/tlog-proof and c2sp.org/tlog-checkpoint
// and sharing no code with the Python under test.
//
// It reads a JSON array of requests on stdin and writes a JSON array of answers:
//
//	{"op": "inclusion", "proof": <tlog-proof@v1 text>, "leaf": <record line>, "vkey": <log vkey>}
//	{"op": "consistency", "proof": <hash lines, empty line, new note>, "old": <old note>, "vkey": ...}
//
// Byte fields are base64 in JSON. An answer holds "error", or what was proven.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type request struct {
	Op    string `json:"op"`
	Proof []byte `json:"proof"`
	Leaf  []byte `json:"leaf"`
	Old   []byte `json:"old"`
	VKey  string `json:"vkey"`
}

type answer struct {
	Error   string `json:"error,omitempty"`
	Index   int64  `json:"index"`
	Size    int64  `json:"size"`
	OldSize int64  `json:"old_size"`
	Origin  string `json:"origin,omitempty"`
}

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

// open verifies a signed checkpoint with the log's vkey (signed-note) and
// parses its body (tlog-checkpoint "Note text"): origin, size, base64 root.
func open(msg []byte, vkey string) (checkpoint, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return checkpoint{}, err
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		return checkpoint{}, err
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 {
		return checkpoint{}, fmt.Errorf("checkpoint has fewer than 3 lines")
	}
	if lines[0] != v.Name() {
		return checkpoint{}, fmt.Errorf("origin %q is not the key's name %q", lines[0], v.Name())
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return checkpoint{}, fmt.Errorf("bad size %q", lines[1])
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return checkpoint{}, fmt.Errorf("bad root %q", lines[2])
	}
	var h tlog.Hash
	copy(h[:], root)
	return checkpoint{lines[0], size, h}, nil
}

// split cuts a proof text at its first empty line: the lines before it and the
// checkpoint note after it. A text that starts with the empty line has no lines.
func split(text []byte) ([]string, []byte, error) {
	if bytes.HasPrefix(text, []byte("\n")) {
		return nil, text[1:], nil
	}
	i := bytes.Index(text, []byte("\n\n"))
	if i < 0 {
		return nil, nil, fmt.Errorf("no empty line before the checkpoint")
	}
	return strings.Split(string(text[:i]), "\n"), text[i+2:], nil
}

func decodeHashes(lines []string) ([]tlog.Hash, error) {
	hashes := []tlog.Hash{}
	for _, line := range lines {
		b, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(b) != tlog.HashSize {
			return nil, fmt.Errorf("not a base64 hash: %q", line)
		}
		var h tlog.Hash
		copy(h[:], b)
		hashes = append(hashes, h)
	}
	return hashes, nil
}

func inclusion(r request) answer {
	lines, rest, err := split(r.Proof)
	if err != nil {
		return answer{Error: err.Error()}
	}
	// tlog-proof@v1 "Format": the header line, an optional "extra" line,
	// "index N", then the audit path, one base64 hash per line.
	if len(lines) < 2 || lines[0] != "c2sp.org/tlog-proof@v1" {
		return answer{Error: "not a c2sp.org/tlog-proof@v1 text"}
	}
	lines = lines[1:]
	if strings.HasPrefix(lines[0], "extra ") {
		lines = lines[1:]
	}
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "index ") {
		return answer{Error: "no index line"}
	}
	index, err := strconv.ParseInt(strings.TrimPrefix(lines[0], "index "), 10, 64)
	if err != nil {
		return answer{Error: err.Error()}
	}
	hashes, err := decodeHashes(lines[1:])
	if err != nil {
		return answer{Error: err.Error()}
	}
	c, err := open(rest, r.VKey)
	if err != nil {
		return answer{Error: err.Error()}
	}
	err = tlog.CheckRecord(tlog.RecordProof(hashes), c.size, c.root, index, tlog.RecordHash(r.Leaf))
	if err != nil {
		return answer{Error: err.Error()}
	}
	return answer{Index: index, Size: c.size, Origin: c.origin}
}

func consistency(r request) answer {
	lines, rest, err := split(r.Proof)
	if err != nil {
		return answer{Error: err.Error()}
	}
	hashes, err := decodeHashes(lines)
	if err != nil {
		return answer{Error: err.Error()}
	}
	newer, err := open(rest, r.VKey)
	if err != nil {
		return answer{Error: err.Error()}
	}
	older, err := open(r.Old, r.VKey)
	if err != nil {
		return answer{Error: err.Error()}
	}
	err = tlog.CheckTree(tlog.TreeProof(hashes), newer.size, newer.root, older.size, older.root)
	if err != nil {
		return answer{Error: err.Error()}
	}
	return answer{OldSize: older.size, Size: newer.size, Origin: newer.origin}
}

func main() {
	var reqs []request
	if err := json.NewDecoder(os.Stdin).Decode(&reqs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out := make([]answer, len(reqs))
	for i, r := range reqs {
		switch r.Op {
		case "inclusion":
			out[i] = inclusion(r)
		case "consistency":
			out[i] = consistency(r)
		default:
			out[i] = answer{Error: "unknown op " + r.Op}
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
