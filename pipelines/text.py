"""Text files every reader shares: tag lists and line-numbered records.

Errors name the file and line, and a file that is not UTF-8 is reported as such
(which line, which byte), never as a bare UnicodeDecodeError.
"""


def _decode_error(path, data, error):
    line = data.count(b"\n", 0, error.start) + 1
    return ValueError(
        f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
        "save the file as UTF-8."
    )


def read_text(path, encoding="utf-8-sig"):
    """The whole text of a UTF-8 file (a BOM is dropped); ValueError naming the file and
    line of the first byte that is not UTF-8."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise _decode_error(path, data, error) from None


def numbered_lines(path):
    """(line number, stripped line) for the non-blank lines of a UTF-8 text file
    (tolerates a BOM and CRLF)."""
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            yield line_no, line.strip()


def read_lines(path):
    """Non-empty stripped lines of a UTF-8 text file (tolerates a BOM and CRLF)."""
    return [line for _, line in numbered_lines(path)]
