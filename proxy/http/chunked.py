"""Chunked transfer coding undone incrementally, for HTTP/1.0 clients (sans-IO).

An HTTP/1.0 client cannot read chunked coding, so a chunked upstream body reaches it as plain
bytes ended by the close. The framer (``_speedups``) has already checked the chunked framing of
every byte it lets through, so this only has to follow it: a chunk's data may span any number
of reads (a 2 MiB chunk arrives in pieces and leaves in pieces, nothing held back beyond a
partial size line), and the trailer section after the last chunk is dropped, as HTTP/1.0 has
no place for it.
"""


class Dechunker:
    __slots__ = ("remaining", "skip", "line", "done")

    def __init__(self):
        self.remaining = 0  # data bytes left in the current chunk
        self.skip = 0  # bytes of the CRLF after a chunk's data still to pass over
        self.line = b""  # a chunk-size line that spans reads
        self.done = False  # the last chunk was seen: the rest is trailers

    def feed(self, data):
        """The payload bytes in ``data``, the next piece of a chunked body."""
        out = []
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            remaining = self.remaining
            if remaining:
                end = pos + remaining if pos + remaining < n else n
                out.append(data[pos:end])
                self.remaining = remaining - (end - pos)
                if not self.remaining:
                    self.skip = 2
                pos = end
            elif self.skip:
                take = self.skip if self.skip < n - pos else n - pos
                self.skip -= take
                pos += take
            else:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self.line += data[pos:]
                    break
                line = self.line + data[pos:nl]
                self.line = b""
                pos = nl + 1
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size:
                    self.remaining = size
                else:
                    self.done = True
        if len(out) == 1:
            return out[0]
        return b"".join(out)
