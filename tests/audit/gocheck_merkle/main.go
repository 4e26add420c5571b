// Independent cross-check of tuf_signer.audit._merkle against Go's
// golang.org/x/mod/sumdb/tlog (Debian: golang-golang-x-mod-dev).
//
// Reads one JSON case from stdin (written by tests/audit/test_merkle.py):
// the leaves' data, the hashes our stored_hashes_for_append returned for each
// append, and our inclusion and consistency proofs. Writes JSON to stdout:
// what tlog computes from our stored hashes, its verdict on each of our proofs,
// and its own proofs for the same requests, for Python to compare.
package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"

	"golang.org/x/mod/sumdb/tlog"
)

type storedHash struct {
	Level int    `json:"level"`
	Index int64  `json:"index"`
	Hash  string `json:"hash"`
}

type proofCase struct {
	Index int64    `json:"index"` // inclusion: leaf index; consistency: old size
	Size  int64    `json:"size"`  // tree size (consistency: new size)
	Leaf  string   `json:"leaf"`  // inclusion: leaf hash
	Root  string   `json:"root"`  // root of Size
	Old   string   `json:"old"`   // consistency: root of Index
	Proof []string `json:"proof"` // our proof
}

type input struct {
	Leaves      []string       `json:"leaves"`
	Stored      [][]storedHash `json:"stored"`
	Inclusion   []proofCase    `json:"inclusion"`
	Consistency []proofCase    `json:"consistency"`
}

type output struct {
	StoredProblems  []string   `json:"stored_problems"`
	TreeHashes      []string   `json:"tree_hashes"` // TreeHash(n) from OUR stored hashes, n = 1..len
	Inclusion       []string   `json:"inclusion"`   // CheckRecord error, "" when it verifies
	Consistency     []string   `json:"consistency"` // CheckTree error, "" when it verifies
	GoInclusion     [][]string `json:"go_inclusion"`
	GoConsistency   [][]string `json:"go_consistency"`
	GoStoredIndexes []int64    `json:"go_stored_indexes"`
}

func mustHash(s string) tlog.Hash {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != tlog.HashSize {
		panic(fmt.Sprintf("bad hash %q", s))
	}
	var h tlog.Hash
	copy(h[:], b)
	return h
}

func hexes(hs []tlog.Hash) []string {
	out := []string{}
	for _, h := range hs {
		out = append(out, hex.EncodeToString(h[:]))
	}
	return out
}

func reader(store []tlog.Hash) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			if x < 0 || x >= int64(len(store)) {
				return nil, fmt.Errorf("no stored hash %d", x)
			}
			out[i] = store[x]
		}
		return out, nil
	})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	out := output{StoredProblems: []string{}}

	// Our stored hashes, placed where tlog's StoredHashIndex puts each (level, index).
	ours := []tlog.Hash{}
	// tlog's own stored hashes, computed from the leaf data.
	theirs := []tlog.Hash{}
	for n, data := range in.Leaves {
		d, err := hex.DecodeString(data)
		if err != nil {
			panic(err)
		}
		goHashes, err := tlog.StoredHashes(int64(n), d, reader(theirs))
		if err != nil {
			panic(err)
		}
		theirs = append(theirs, goHashes...)
		if len(in.Stored[n]) != len(goHashes) {
			out.StoredProblems = append(out.StoredProblems,
				fmt.Sprintf("append %d: %d hashes, tlog stores %d", n, len(in.Stored[n]), len(goHashes)))
		}
		for k, s := range in.Stored[n] {
			at := tlog.StoredHashIndex(s.Level, s.Index)
			out.GoStoredIndexes = append(out.GoStoredIndexes, at)
			if at != int64(len(ours)) {
				out.StoredProblems = append(out.StoredProblems,
					fmt.Sprintf("append %d: node (%d, %d) is stored hash %d, expected %d",
						n, s.Level, s.Index, at, len(ours)))
			}
			h := mustHash(s.Hash)
			if k < len(goHashes) && h != goHashes[k] {
				out.StoredProblems = append(out.StoredProblems,
					fmt.Sprintf("append %d: hash %d differs from tlog.StoredHashes", n, k))
			}
			ours = append(ours, h)
		}
	}
	if int64(len(ours)) != tlog.StoredHashCount(int64(len(in.Leaves))) {
		out.StoredProblems = append(out.StoredProblems,
			fmt.Sprintf("%d stored hashes, tlog.StoredHashCount says %d",
				len(ours), tlog.StoredHashCount(int64(len(in.Leaves)))))
	}

	for n := 1; n <= len(in.Leaves); n++ {
		h, err := tlog.TreeHash(int64(n), reader(ours))
		if err != nil {
			panic(err)
		}
		out.TreeHashes = append(out.TreeHashes, hex.EncodeToString(h[:]))
	}

	for _, c := range in.Inclusion {
		proof := tlog.RecordProof{}
		for _, p := range c.Proof {
			proof = append(proof, mustHash(p))
		}
		err := tlog.CheckRecord(proof, c.Size, mustHash(c.Root), c.Index, mustHash(c.Leaf))
		out.Inclusion = append(out.Inclusion, errText(err))
		goProof, err := tlog.ProveRecord(c.Size, c.Index, reader(theirs))
		if err != nil {
			panic(err)
		}
		out.GoInclusion = append(out.GoInclusion, hexes(goProof))
	}

	for _, c := range in.Consistency {
		proof := tlog.TreeProof{}
		for _, p := range c.Proof {
			proof = append(proof, mustHash(p))
		}
		err := tlog.CheckTree(proof, c.Size, mustHash(c.Root), c.Index, mustHash(c.Old))
		out.Consistency = append(out.Consistency, errText(err))
		goProof, err := tlog.ProveTree(c.Size, c.Index, reader(theirs))
		if err != nil {
			panic(err)
		}
		out.GoConsistency = append(out.GoConsistency, hexes(goProof))
	}

	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
