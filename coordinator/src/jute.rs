//! Jute, ZooKeeper's binary record encoding: big-endian integers, length-prefixed buffers and
//! strings (length -1 encodes null), count-prefixed vectors.
//!
//! The reader never trusts a length from the wire: every length is checked against what is left
//! in the frame before anything is allocated, so a hostile length cannot make us reserve memory.

use thiserror::Error;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The frame ended in the middle of a field.
    #[error("record truncated while reading {field}: needed {needed} more bytes, {left} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// A length or count below -1.
    #[error("negative length {len} for {field}")]
    NegativeLength {
        /// The field being read.
        field: &'static str,
        /// The length found on the wire.
        len: i32,
    },
    /// A string that is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A null where the protocol requires a value.
    #[error("{field} is null where a value is required")]
    UnexpectedNull {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes left over after the last field of a record that must fill its frame.
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
    /// A value outside the range the protocol allows.
    #[error("invalid value {value} for {field}")]
    InvalidValue {
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: i64,
    },
}

/// Reads jute fields from one frame.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless every byte has been read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field, needed: n, left: self.buf.len() });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// A 4-byte big-endian int.
    pub fn int(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An 8-byte big-endian long.
    pub fn long(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// A one-byte boolean (any non-zero byte is true, as Java's `readBool`).
    pub fn boolean(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        Ok(self.take(1, field)?[0] != 0)
    }

    /// A length that may be -1 (null); anything else negative is an error. The length is checked
    /// against the bytes left (each element at least `min_elem` bytes) before the caller allocates.
    fn length(&mut self, field: &'static str, min_elem: usize) -> Result<Option<usize>, DecodeError> {
        let len = self.int(field)?;
        if len == -1 {
            return Ok(None);
        }
        if len < 0 {
            return Err(DecodeError::NegativeLength { field, len });
        }
        let len = len as usize;
        let needed = len.saturating_mul(min_elem.max(1));
        if min_elem > 0 && needed > self.buf.len() {
            return Err(DecodeError::Truncated { field, needed, left: self.buf.len() });
        }
        Ok(Some(len))
    }

    /// A buffer; `None` for null.
    pub fn buffer(&mut self, field: &'static str) -> Result<Option<Vec<u8>>, DecodeError> {
        match self.length(field, 1)? {
            None => Ok(None),
            Some(n) => Ok(Some(self.take(n, field)?.to_vec())),
        }
    }

    /// A string; `None` for null.
    pub fn ustring_opt(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        match self.length(field, 1)? {
            None => Ok(None),
            Some(n) => {
                let b = self.take(n, field)?;
                String::from_utf8(b.to_vec()).map(Some).map_err(|_| DecodeError::InvalidUtf8 { field })
            }
        }
    }

    /// A string that must not be null.
    pub fn ustring(&mut self, field: &'static str) -> Result<String, DecodeError> {
        self.ustring_opt(field)?.ok_or(DecodeError::UnexpectedNull { field })
    }

    /// A vector count; null reads as an empty vector, as the Java server treats it. `min_elem` is
    /// the smallest encoded size of one element, used to refuse counts the frame cannot hold.
    pub fn count(&mut self, field: &'static str, min_elem: usize) -> Result<usize, DecodeError> {
        Ok(self.length(field, min_elem)?.unwrap_or(0))
    }

    /// A vector of strings (null reads as empty).
    pub fn strings(&mut self, field: &'static str) -> Result<Vec<String>, DecodeError> {
        let n = self.count(field, 4)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.ustring(field)?);
        }
        Ok(out)
    }
}

/// Appends jute fields to a buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer that starts with a 4-byte placeholder for the frame length, filled by
    /// [`Writer::into_frame`].
    pub fn framed() -> Self {
        Self { buf: vec![0; 4] }
    }

    /// Fills the length placeholder written by [`Writer::framed`] and returns the frame.
    pub fn into_frame(mut self) -> Vec<u8> {
        let len = (self.buf.len() - 4) as i32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf
    }

    /// The bytes written.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    /// A 4-byte int.
    pub fn int(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// An 8-byte long.
    pub fn long(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A one-byte boolean.
    pub fn boolean(&mut self, v: bool) -> &mut Self {
        self.buf.push(v as u8);
        self
    }

    /// A buffer (`None` is written as null).
    pub fn buffer(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.int(-1),
            Some(b) => {
                self.int(b.len() as i32);
                self.buf.extend_from_slice(b);
                self
            }
        }
    }

    /// A non-null string.
    pub fn ustring(&mut self, v: &str) -> &mut Self {
        self.buffer(Some(v.as_bytes()))
    }

    /// A vector of strings.
    pub fn strings<S: AsRef<str>>(&mut self, v: &[S]) -> &mut Self {
        self.int(v.len() as i32);
        for s in v {
            self.ustring(s.as_ref());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_primitives() {
        let mut w = Writer::new();
        w.int(-2).long(0x0102030405060708).boolean(true).buffer(None).ustring("/a").strings(&["x"]);
        assert_eq!(
            w.into_inner(),
            vec![
                0xff, 0xff, 0xff, 0xfe, 1, 2, 3, 4, 5, 6, 7, 8, 1, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 2, b'/', b'a', 0,
                0, 0, 1, 0, 0, 0, 1, b'x'
            ]
        );
    }

    #[test]
    fn round_trip_and_finish() {
        let mut w = Writer::new();
        w.ustring("héllo").buffer(Some(b"\x00\x01")).strings(&["a", "bc"]);
        let bytes = w.into_inner();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.ustring("s").unwrap(), "héllo");
        assert_eq!(r.buffer("b").unwrap(), Some(vec![0, 1]));
        assert_eq!(r.strings("v").unwrap(), vec!["a".to_string(), "bc".to_string()]);
        r.finish().unwrap();
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocation() {
        // A vector claiming two billion strings in a 4-byte frame.
        let bytes = 0x7fff_ffffi32.to_be_bytes();
        let err = Reader::new(&bytes).strings("children").unwrap_err();
        assert!(matches!(err, DecodeError::Truncated { field: "children", .. }), "{err:?}");
        let bytes = (-5i32).to_be_bytes();
        assert_eq!(
            Reader::new(&bytes).buffer("data").unwrap_err(),
            DecodeError::NegativeLength { field: "data", len: -5 }
        );
        let bytes = [0, 0, 0, 2, 0xff, 0xfe];
        assert_eq!(Reader::new(&bytes).ustring("path").unwrap_err(), DecodeError::InvalidUtf8 { field: "path" });
        let bytes = [0, 0];
        assert!(matches!(Reader::new(&bytes).int("xid"), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn framed_writer_prefixes_length() {
        let mut w = Writer::framed();
        w.int(7);
        assert_eq!(w.into_frame(), vec![0, 0, 0, 4, 0, 0, 0, 7]);
    }
}
