//! Turning the uploaded bytes into UTF-8, whatever encoding the file used.
//!
//! The encoding is decided once, from the first bytes: a byte-order mark
//! (UTF-8, UTF-16LE/BE) wins; otherwise valid UTF-8 is taken as UTF-8, and
//! anything else goes to `chardetng`, which in practice answers
//! windows-1252 for Western European exports (`Müller`, `Zoë`). Bytes that
//! are invalid in the chosen encoding become U+FFFD, and the row that holds
//! them is rejected with `bad_encoding` rather than stored garbled.

use encoding_rs::{Decoder, Encoding, UTF_8};

/// How many bytes to look at before deciding (unless the body is shorter):
/// enough for chardetng to tell the legacy encodings apart, small enough that
/// rows of a slowly sent body start flowing early.
pub const SNIFF_BYTES: usize = 16 * 1024;

/// A streaming decoder that decides its encoding from the first bytes.
pub struct Utf8Decoder {
    pending: Vec<u8>,
    decoder: Option<Decoder>,
    encoding: Option<&'static Encoding>,
    forced: Option<&'static Encoding>,
}

impl Utf8Decoder {
    /// `forced`: an encoding named by the caller (`?encoding=`), used instead of detection.
    pub fn new(forced: Option<&'static Encoding>) -> Self {
        Self {
            pending: Vec::new(),
            decoder: None,
            encoding: None,
            forced,
        }
    }

    /// The encoding in use, once decided.
    pub fn encoding(&self) -> Option<&'static Encoding> {
        self.encoding
    }

    fn decide(&mut self, at_eof: bool) {
        let bytes = &self.pending;
        let (encoding, decoder) = if let Some(forced) = self.forced {
            (forced, forced.new_decoder_with_bom_removal())
        } else if let Some((enc, _)) = Encoding::for_bom(bytes) {
            (enc, enc.new_decoder_with_bom_removal())
        } else if utf8_prefix_is_valid(bytes, at_eof) {
            (UTF_8, UTF_8.new_decoder_with_bom_removal())
        } else {
            let mut detector =
                chardetng::EncodingDetector::new(chardetng::Iso2022JpDetection::Deny);
            detector.feed(bytes, at_eof);
            let enc = detector.guess(None, chardetng::Utf8Detection::Deny);
            (enc, enc.new_decoder_without_bom_handling())
        };
        self.encoding = Some(encoding);
        self.decoder = Some(decoder);
    }

    /// Decode `bytes`, appending UTF-8 to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        if self.decoder.is_none() {
            self.pending.extend_from_slice(bytes);
            if self.pending.len() < SNIFF_BYTES {
                return;
            }
            self.decide(false);
            let pending = std::mem::take(&mut self.pending);
            self.decode(&pending, false, out);
            return;
        }
        self.decode(bytes, false, out);
    }

    /// End of input: flush what is left.
    pub fn finish(&mut self, out: &mut String) {
        if self.decoder.is_none() {
            self.decide(true);
            let pending = std::mem::take(&mut self.pending);
            self.decode(&pending, true, out);
        } else {
            self.decode(&[], true, out);
        }
    }

    fn decode(&mut self, mut bytes: &[u8], last: bool, out: &mut String) {
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        loop {
            let need = decoder
                .max_utf8_buffer_length(bytes.len())
                .unwrap_or(bytes.len() * 3 + 16);
            out.reserve(need);
            let (result, read, _had_errors) = decoder.decode_to_string(bytes, out, last);
            bytes = &bytes[read..];
            match result {
                encoding_rs::CoderResult::InputEmpty => break,
                encoding_rs::CoderResult::OutputFull => continue,
            }
        }
    }
}

/// Valid UTF-8, allowing a multi-byte character cut at the end of the sample.
fn utf8_prefix_is_valid(bytes: &[u8], at_eof: bool) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => !at_eof && e.error_len().is_none(),
    }
}

/// Resolve an encoding label such as `latin1`, `windows-1252`, `utf-16le`.
pub fn encoding_for_label(label: &str) -> Option<&'static Encoding> {
    Encoding::for_label(label.trim().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8], chunk: usize) -> (String, &'static str) {
        let mut d = Utf8Decoder::new(None);
        let mut out = String::new();
        for c in bytes.chunks(chunk.max(1)) {
            d.push(c, &mut out);
        }
        d.finish(&mut out);
        (out, d.encoding().map(|e| e.name()).unwrap_or("?"))
    }

    #[test]
    fn latin1_names_are_decoded_as_windows_1252() {
        let (s, enc) = decode_all(
            b"name,email\nM\xfcller,m@example.com\nZo\xeb,z@example.com\n",
            7,
        );
        assert_eq!(enc, "windows-1252");
        assert!(s.contains("Müller") && s.contains("Zoë"), "{s}");
    }

    #[test]
    fn utf16_with_bom_is_decoded() {
        let text = "name,email\nZoë,z@example.com\n";
        let mut bytes = vec![0xFF, 0xFE];
        for u in text.encode_utf16() {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        let (s, enc) = decode_all(&bytes, 3);
        assert_eq!(enc, "UTF-16LE");
        assert_eq!(s, text);
    }

    #[test]
    fn a_utf8_bom_is_removed_and_split_characters_survive() {
        let (s, enc) = decode_all("\u{feff}a,Zoë\n".as_bytes(), 1);
        assert_eq!(enc, "UTF-8");
        assert_eq!(s, "a,Zoë\n");
    }
}
