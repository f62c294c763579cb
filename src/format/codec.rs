//! Byte-level encoding used inside chunks: LEB128 varints, zigzag, length-prefixed bytes.

use super::FormatError;

/// Maps a signed value to an unsigned one, small magnitudes to small numbers.
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Undoes [`zigzag`].
pub fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// Appends values to a chunk buffer.
#[derive(Default)]
pub struct Encoder {
    /// The encoded bytes so far.
    pub buf: Vec<u8>,
}

impl Encoder {
    /// Appends one raw byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Appends an unsigned LEB128 varint.
    pub fn uvar(&mut self, v: u64) {
        rltrace_wire::put_varint(v, |b| self.buf.push(b));
    }

    /// Appends a signed value as a zigzag varint.
    pub fn svar(&mut self, v: i64) {
        self.uvar(zigzag(v));
    }

    /// Appends a length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.uvar(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// Appends a length-prefixed UTF-8 string.
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

/// Reads values from a decompressed chunk payload; every read is bounds-checked.
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    /// File offset of the chunk, for error messages.
    chunk_offset: u64,
}

impl<'a> Decoder<'a> {
    /// Starts decoding `data`, the payload of the chunk at `chunk_offset`.
    pub fn new(data: &'a [u8], chunk_offset: u64) -> Self {
        Decoder {
            data,
            pos: 0,
            chunk_offset,
        }
    }

    /// Continues decoding `data` at `pos` (a chunk read one record at a time).
    pub fn resume(data: &'a [u8], chunk_offset: u64, pos: usize) -> Self {
        Decoder {
            data,
            pos,
            chunk_offset,
        }
    }

    /// Splits off the next `len` bytes as a decoder of their own, whose errors still name
    /// their place in the chunk; this one moves past them.
    pub fn take(&mut self, len: usize) -> Result<Decoder<'a>, FormatError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.error("record runs past the end of its chunk"))?;
        let sub = Decoder {
            data: &self.data[..end],
            pos: self.pos,
            chunk_offset: self.chunk_offset,
        };
        self.pos = end;
        Ok(sub)
    }

    /// Bytes consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// True once every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Builds an error that names where decoding stopped.
    pub fn error(&self, what: impl Into<String>) -> FormatError {
        FormatError::Corrupt {
            offset: self.chunk_offset,
            within: self.pos as u64,
            what: what.into(),
        }
    }

    /// Reads one raw byte.
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| self.error("record runs past the end of its chunk"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads an unsigned LEB128 varint of at most 10 bytes. An error names the byte where
    /// decoding stopped.
    pub fn uvar(&mut self) -> Result<u64, FormatError> {
        use rltrace_wire::VarintError;
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let (what, n) = match rltrace_wire::get_varint(rest) {
            Ok((v, n)) => {
                self.pos += n;
                return Ok(v);
            }
            Err(VarintError::Short(n)) => ("record runs past the end of its chunk", n),
            Err(VarintError::Overflow(n)) => ("varint overflows 64 bits", n),
            Err(VarintError::TooLong(n)) => ("varint longer than 10 bytes", n),
        };
        self.pos += n;
        Err(self.error(what))
    }

    /// Reads a varint that must fit in `u32`.
    pub fn uvar32(&mut self) -> Result<u32, FormatError> {
        let v = self.uvar()?;
        u32::try_from(v).map_err(|_| self.error(format!("value {v} does not fit in 32 bits")))
    }

    /// Reads an optional id stored as id + 1, 0 meaning none.
    pub fn opt_id(&mut self, what: &str) -> Result<Option<u32>, FormatError> {
        match self.uvar()? {
            0 => Ok(None),
            v => u32::try_from(v - 1)
                .map(Some)
                .map_err(|_| self.error(format!("{what} id out of range"))),
        }
    }

    /// Reads a zigzag varint.
    pub fn svar(&mut self) -> Result<i64, FormatError> {
        Ok(unzigzag(self.uvar()?))
    }

    /// Reads a length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], FormatError> {
        let len = self.uvar()?;
        if len > max as u64 {
            return Err(self.error(format!(
                "byte string of {len} bytes exceeds the limit of {max}"
            )));
        }
        let len = len as usize;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.error("byte string runs past the end of its chunk"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Reads a length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str(&mut self, max: usize) -> Result<String, FormatError> {
        let b = self.bytes(max)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.error("string is not valid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        let values = [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX];
        let mut e = Encoder::default();
        for v in values {
            e.uvar(v);
            e.svar(v as i64);
        }
        let mut d = Decoder::new(&e.buf, 0);
        for v in values {
            assert_eq!(d.uvar().unwrap(), v);
            assert_eq!(d.svar().unwrap(), v as i64);
        }
        assert!(d.is_empty());
    }

    #[test]
    fn overlong_varint_is_an_error() {
        let bytes = [0xffu8; 11];
        let mut d = Decoder::new(&bytes, 16);
        let err = d.uvar().unwrap_err().to_string();
        assert!(err.contains("offset 16"), "{err}");
    }

    #[test]
    fn oversized_string_is_refused_before_allocation() {
        let mut e = Encoder::default();
        e.uvar(1 << 40);
        let mut d = Decoder::new(&e.buf, 0);
        assert!(d.bytes(1024).is_err());
    }
}
