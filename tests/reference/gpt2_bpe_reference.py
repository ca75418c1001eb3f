#!/usr/bin/python3
"""Independent GPT-2 byte-level BPE encoder in Python, written from the algorithm of OpenAI's GPT-2 encoder
(docs/tokenizer.md): byte-to-unicode map, the pre-tokenizer regex evaluated by the `regex` module (whose \\s is
Unicode White_Space, like OpenAI's), and the plain "merge every occurrence of the lowest-ranked pair" loop.

Usage: gpt2_bpe_reference.py ENCODER_JSON VOCAB_BPE < strings.json > ids.json
  stdin: a JSON array of strings; stdout: a JSON array with the list of ids of each string.
Needs Debian's python3-regex (run with /usr/bin/python3).
"""
import json
import sys

import regex

PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def byte_alphabet():
    """Byte value -> the character that stands for it in encoder.json / vocab.bpe."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    for i, b in enumerate(others):
        table[b] = chr(256 + i)
    return table


def merge_word(symbols, ranks):
    """Repeatedly merges all occurrences (left to right, non-overlapping) of the adjacent pair of lowest rank."""
    while len(symbols) > 1:
        best = None
        for pair in zip(symbols, symbols[1:]):
            rank = ranks.get(pair)
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, pair)
        if best is None:
            break
        left, right = best[1]
        merged = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                merged.append(left + right)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def main():
    encoder_path, vocab_path = sys.argv[1], sys.argv[2]
    with open(encoder_path, encoding="utf-8") as f:
        encoder = json.load(f)
    with open(vocab_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    ranks = {}
    for line in lines[1:]:
        if line:
            left, right = line.split(" ")
            ranks[(left, right)] = len(ranks)
    alphabet = byte_alphabet()
    strings = json.load(sys.stdin)
    result = []
    for text in strings:
        ids = []
        for piece in PATTERN.findall(text):
            symbols = [alphabet[b] for b in piece.encode("utf-8")]
            ids.extend(encoder[s] for s in merge_word(symbols, ranks))
        result.append(ids)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
