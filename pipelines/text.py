"""Text files every reader shares: tag lists and line-numbered records.

Errors name the file and line, and a file that is not UTF-8 is reported as such
(which line, which byte, and the bytes around it), never as a bare UnicodeDecodeError.
`read_text` reads a file whole; `text_lines` streams one (manifests of millions of lines).
"""


def not_utf8(path, line_no, line, start, offset=None):
    """What is wrong with byte `start` of `line` (bytes of line `line_no` of `path`, which
    begins at file offset `offset`, when known): "PATH:LINE: not UTF-8 text (byte 0xff at
    offset N, in b'...')"."""
    found = line[max(0, start - 24) : start + 24].rstrip(b"\r\n")
    at = "" if offset is None else f" at offset {offset + start}"
    return f"{path}:{line_no}: not UTF-8 text (byte 0x{line[start]:02x}{at}, in {found!r})"


def _decode_error(path, line_no, line, start, offset):
    return ValueError(f"{not_utf8(path, line_no, line, start, offset)}; save the file as UTF-8.")


def read_text(path, encoding="utf-8-sig"):
    """The whole text of a UTF-8 file (a BOM is dropped); ValueError naming the file and
    line of the first byte that is not UTF-8."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        begin = data.rfind(b"\n", 0, error.start) + 1
        end = data.find(b"\n", error.start)
        line = data[begin : None if end < 0 else end]
        raise _decode_error(path, data.count(b"\n", 0, error.start) + 1, line, error.start - begin, begin) from None


def text_lines(path):
    """(line number, line with its line end) of a UTF-8 text file, read one line at a time
    (a BOM is dropped); ValueError naming the file and line of the first byte that is not
    UTF-8, raised when the reading reaches it."""
    with open(path, "rb") as f:
        offset = 0
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _decode_error(path, line_no, raw, error.start, offset) from None
            yield line_no, line.removeprefix("\ufeff") if line_no == 1 else line
            offset += len(raw)


def numbered_lines(path):
    """(line number, stripped line) for the non-blank lines of a UTF-8 text file
    (tolerates a BOM and CRLF)."""
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            yield line_no, line.strip()


def lines_listing(lines_of, most=5):
    """"'a' (lines 1, 4); 'b' (line 2)" for {name: line numbers}, at most `most` lines each."""
    return "; ".join(
        f"{name!r} (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines[:most]))}"
        f"{', ...' if len(lines) > most else ''})"
        for name, lines in sorted(lines_of.items())
    )


def repeated_lines(numbered):
    """{value: its line numbers} of the values on more than one of (line number, value) pairs."""
    lines_of = {}
    for line_no, value in numbered:
        lines_of.setdefault(value, []).append(line_no)
    return {value: lines for value, lines in lines_of.items() if len(lines) > 1}


def read_lines(path):
    """Non-empty stripped lines of a UTF-8 text file (tolerates a BOM and CRLF)."""
    return [line for _, line in numbered_lines(path)]


def read_unique_lines(path, what="tag"):
    """`read_lines` of a list whose entries must be unique (a tag list): ValueError naming
    every entry listed more than once, with its lines."""
    numbered = list(numbered_lines(path))
    repeated = repeated_lines(numbered)
    if repeated:
        raise ValueError(f"{path}: {len(repeated)} {what}(s) listed more than once: {lines_listing(repeated)}.")
    return [line for _, line in numbered]
