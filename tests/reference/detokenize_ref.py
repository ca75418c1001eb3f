"""Golden detokenisers for tests/test_detokenize.c, written from method §9.2 with Python's own str.replace and re.

Usage: detokenize_ref.py IN.jsonl OUT.jsonl   (lines {"detok": name, "text": s} -> lines {"text": result})
"""
import json
import re
import sys


def wikitext(s):
    s = s.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for a, b in [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". "),
                 (" ! ", "! "), (" ? ", "? "), (" , ", ", ")]:
        s = s.replace(a, b)
    for o, c in [("(", ")"), ("[", "]"), ("{", "}"), ('"', '"'), ("'", "'")]:
        s = re.sub(re.escape(o) + r"\s*([^" + re.escape(c) + r"]*?)\s*" + re.escape(c), lambda m: o + m.group(1) + c, s)
    for a, b in [("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u00b0 ", "\u00b0"), (" \n", "\n"),
                 ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")]:
        s = s.replace(a, b)
    return s


def ptb(s):
    for a, b in [(" 's", "'s"), ("s ' ", "s' "), (" n't", "n't"), (" \n ", "\n"), ("\\/", "/")]:
        s = s.replace(a, b)
    for _ in range(10):
        s = s.replace(" N ", " 1 ")
    for a, b in [("$ 1", "$1"), ("# 1", "#1"), ("<unk>", "?")]:
        s = s.replace(a, b)
    return s


def lm1b(s):
    s = s.replace("http : / / ", "http://")
    s = s.replace("https : / / ", "https://")
    s = re.sub(r" '(\w+)", r"'\1", s)
    s = re.sub(r" (\w+) \. ", r" \1. ", s)
    s = re.sub(r" (\w+) \.$", r" \1.", s)
    s = s.replace(" ? ", "? ")
    s = re.sub(r" \?$", "?", s)
    s = s.replace(" ! ", "! ")
    s = re.sub(r" \!$", "!", s)
    for a, b in [(" , ", ", "), (" : ", ": "), (" ; ", "; "), (" / ", "/")]:
        s = s.replace(a, b)
    s = re.sub(r'" ([^"]+) "', r'"\1"', s)
    s = re.sub(r"' ([^']+) '", r"'\1'", s)
    s = re.sub(r"\( ([^()]+) \)", r"(\1)", s)
    s = re.sub(r"\[ ([^\[\]]+) \]", r"[\1]", s)
    s = s.replace("$ ", "$")
    s = s.replace("\u00a3 ", "\u00a3")
    return s


def lambada(s):
    s = s.replace("\u201c", '"').replace("\u201d", '"')
    return "\n" + s.strip()


RULES = {"wikitext": wikitext, "ptb": ptb, "lm1b": lm1b, "lambada": lambada, "none": lambda s: s,
         "scientific": lambda s: lm1b(wikitext(s)),
         "openwebtext": lambda s: re.sub("\n\n\n+", "\n\n", s).strip()}

with open(sys.argv[1], encoding="utf-8") as fin, open(sys.argv[2], "w", encoding="utf-8") as fout:
    for line in fin:
        row = json.loads(line)
        fout.write(json.dumps({"text": RULES[row["detok"]](row["text"])}) + "\n")
