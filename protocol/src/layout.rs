//! The canonical byte layout that orders, readings and token operations are signed in.
//!
//! Every signed message is: an ASCII domain-separation tag that names the message and its
//! version (for example `gridmesh/reading/v2`), then fixed-width fields in a fixed order, all
//! integers big-endian. A message therefore has one exact length, and no two kinds of message
//! can be confused with each other. Signatures are computed over exactly these bytes, never
//! over JSON. `docs/protocol.md` lists every field with its offset.
//!
//! Field encodings:
//! - identifier: 32 bytes, its ASCII text right-padded with zero bytes;
//! - short text (firmware version): 16 bytes, ASCII, right-padded with zero bytes;
//! - integers: big-endian two's complement (`i64`) or unsigned (`u8`, `u16`, `u32`, `u64`);
//! - digests: 32 raw bytes.

/// Width of an identifier field.
pub const ID_WIDTH: usize = crate::ids::MAX_ID_LEN;
/// Width of the firmware-version field.
pub const SHORT_TEXT_WIDTH: usize = 16;

/// Why bytes do not decode as the expected message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The bytes do not start with the expected domain-separation tag.
    #[error("not a `{expected}` message (the bytes start with {found:?})")]
    WrongTag {
        /// The tag this decoder reads.
        expected: &'static str,
        /// The first bytes found, lossily printed.
        found: String,
    },
    /// The message has the wrong length for its layout.
    #[error("a `{tag}` message is {expected} bytes long, but {found} bytes were given")]
    WrongLength {
        /// The message's tag.
        tag: &'static str,
        /// Its fixed length.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// A field holds a value its type does not allow.
    #[error("field `{field}` of a `{tag}` message is invalid: {reason}")]
    BadField {
        /// The message's tag.
        tag: &'static str,
        /// The field's name as documented.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Appends fields in the canonical encoding.
#[derive(Debug)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Starts a message with its tag.
    pub fn new(tag: &str, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(tag.as_bytes());
        Writer { buf }
    }

    /// A zero-padded text field of `width` bytes (the text must already be validated to fit).
    pub fn text(&mut self, text: &str, width: usize) -> &mut Self {
        debug_assert!(text.len() <= width, "text field overflow");
        let bytes = &text.as_bytes()[..text.len().min(width)];
        self.buf.extend_from_slice(bytes);
        self.buf.resize(self.buf.len() + width - bytes.len(), 0);
        self
    }

    /// An identifier field (32 bytes).
    pub fn id(&mut self, id: &str) -> &mut Self {
        self.text(id, ID_WIDTH)
    }

    /// Raw bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// A big-endian two's complement `i64`.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// The finished message.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields in the canonical encoding, checking tag and length up front.
#[derive(Debug)]
pub struct Reader<'a> {
    tag: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks that `bytes` is a `tag` message of exactly `len` bytes and positions after the tag.
    pub fn new(bytes: &'a [u8], tag: &'static str, len: usize) -> Result<Self, LayoutError> {
        if !bytes.starts_with(tag.as_bytes()) {
            let shown = &bytes[..bytes.len().min(tag.len())];
            return Err(LayoutError::WrongTag {
                expected: tag,
                found: String::from_utf8_lossy(shown).into_owned(),
            });
        }
        if bytes.len() != len {
            return Err(LayoutError::WrongLength {
                tag,
                expected: len,
                found: bytes.len(),
            });
        }
        Ok(Reader {
            tag,
            rest: &bytes[tag.len()..],
        })
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, tail) = self.rest.split_at(N);
        self.rest = tail;
        head.try_into().expect("split_at gives N bytes")
    }

    /// An error about `field`.
    pub fn bad(&self, field: &'static str, reason: impl ToString) -> LayoutError {
        LayoutError::BadField {
            tag: self.tag,
            field,
            reason: reason.to_string(),
        }
    }

    /// A zero-padded ASCII text field of `N` bytes.
    pub fn text<const N: usize>(&mut self, field: &'static str) -> Result<String, LayoutError> {
        let raw = self.take::<N>();
        let end = raw.iter().position(|&b| b == 0).unwrap_or(N);
        if raw[end..].iter().any(|&b| b != 0) {
            return Err(self.bad(field, "bytes after the zero padding"));
        }
        if !raw[..end].is_ascii() {
            return Err(self.bad(field, "not ASCII"));
        }
        Ok(String::from_utf8(raw[..end].to_vec()).expect("ASCII is UTF-8"))
    }

    /// An identifier field, validated with `parse`.
    pub fn id<T, E: ToString>(
        &mut self,
        field: &'static str,
        parse: impl FnOnce(String) -> Result<T, E>,
    ) -> Result<T, LayoutError> {
        let text = self.text::<ID_WIDTH>(field)?;
        parse(text).map_err(|e| self.bad(field, e))
    }

    /// 32 raw bytes.
    pub fn digest(&mut self) -> [u8; 32] {
        self.take::<32>()
    }

    /// `N` reserved bytes (the caller checks they are zero).
    pub fn take_reserved<const N: usize>(&mut self) -> [u8; N] {
        self.take::<N>()
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }

    /// A big-endian `i64`.
    pub fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take())
    }

    /// A big-endian `i64` that must not be negative.
    pub fn non_negative(&mut self, field: &'static str) -> Result<i64, LayoutError> {
        let v = self.i64();
        if v < 0 {
            return Err(self.bad(field, format!("{v} is negative")));
        }
        Ok(v)
    }
}
