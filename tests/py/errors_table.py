"""errors_table.py -- reads the client error table (CIRCLE_ERROR_MAP in
src/error.h) and writes docs/errors.md from it, so the documented codes
and statuses are the ones the server sends.

    python tests/py/errors_table.py          # rewrites docs/errors.md
    python tests/py/errors_table.py --check  # exits 1 when it is stale

tests/py/test_errors.py runs the check; tests/py/test_openapi.py compares
the table with openapi.yaml.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADER = ROOT / "src" / "error.h"
DOC = ROOT / "docs" / "errors.md"
BEGIN = "<!-- errors table: written by tests/py/errors_table.py from src/error.h -->"
END = "<!-- end of errors table -->"

GRPC = {3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 8: "RESOURCE_EXHAUSTED",
        12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}
ROW = re.compile(r'X\((\w+),\s*"(\w+)",\s*(\d+),\s*(\d+),\s*((?:"[^"]*"\s*)+)\)')


def rows(text=None):
    """The table's rows in order: dicts of name, code, http, grpc, meaning."""
    text = HEADER.read_text(encoding="utf-8") if text is None else text
    block = re.search(r"#define CIRCLE_ERROR_MAP\(X\)(.*?)\n\n", text, re.S)
    if not block:
        raise ValueError("src/error.h has no CIRCLE_ERROR_MAP")
    body = block.group(1).replace("\\\n", " ")
    out = []
    for name, code, http, grpc, meaning in ROW.findall(body):
        out.append({"name": name, "code": code, "http": int(http), "grpc": int(grpc),
                    "meaning": "".join(re.findall(r'"([^"]*)"', meaning))})
    if body.count("X(") != len(out):
        raise ValueError("a CIRCLE_ERROR_MAP row does not read as X(NAME, \"code\", "
                         "http, grpc, \"meaning\")")
    return out


def table(rs=None):
    """The Markdown table of every row, one line per (code, HTTP status)."""
    lines = ["| Code | HTTP | gRPC | Meaning |", "|---|---|---|---|"]
    for r in rows() if rs is None else rs:
        lines.append(f"| `{r['code']}` | {r['http']} | {r['grpc']} {GRPC[r['grpc']]} | "
                     f"{r['meaning']} |")
    return "\n".join(lines)


def render(doc_text):
    """doc_text with the part between the markers replaced by the table."""
    start, end = doc_text.index(BEGIN) + len(BEGIN), doc_text.index(END)
    return doc_text[:start] + "\n" + table() + "\n" + doc_text[end:]


def main(argv):
    text = DOC.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run python {sys.argv[0]}")
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
