//! Watching quoted fields so that one unclosed quote cannot swallow a file.
//!
//! `csv_core` reads a quote that never closes as one field running to the
//! end of the file. [`QuoteWatch`] follows the same bytes with the same
//! quoting rules (RFC 4180: a quote opens a field only at its start, `""`
//! inside is a literal quote) and says when a quoted field has run past a
//! line end and then past the field limit, or the input ended inside it.
//! The intake then rejects the row where the quote opened and reads again
//! from the line after the opening one: the bytes to read again are those
//! after that line end, which the field limit bounds, so memory stays
//! bounded.

/// Where the watched bytes are, in quoting terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a field (after a delimiter or a line end).
    FieldStart,
    /// Inside an unquoted field, where a quote is a literal character.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// A quote inside a quoted field: it closes the field, or with a second
    /// quote stands for one literal quote.
    QuoteInQuoted,
}

/// The quoting state of the bytes given to the CSV parser so far.
#[derive(Debug)]
pub struct QuoteWatch {
    delimiter: u8,
    limit: usize,
    state: State,
    /// Bytes of the open quoted field so far.
    quoted_bytes: usize,
    /// Whether the open quoted field has run past a line end.
    past_line_end: bool,
    /// The bytes after the open field's first line end: read again if the
    /// quote turns out not to close.
    replay: Vec<u8>,
}

impl QuoteWatch {
    /// `limit`: the longest quoted field that may span lines
    /// (`ROWPIPE_MAX_FIELD_BYTES`).
    pub fn new(delimiter: u8, limit: usize) -> Self {
        Self {
            delimiter,
            limit,
            state: State::FieldStart,
            quoted_bytes: 0,
            past_line_end: false,
            replay: Vec::new(),
        }
    }

    /// Start over at the start of a record (after a resync).
    pub fn reset(&mut self) {
        self.state = State::FieldStart;
        self.quoted_bytes = 0;
        self.past_line_end = false;
        self.replay.clear();
    }

    /// Whether the bytes seen so far end inside a quoted field.
    pub fn in_quoted_field(&self) -> bool {
        self.state == State::Quoted
    }

    /// Whether the open quoted field has run past a line end.
    pub fn past_line_end(&self) -> bool {
        self.past_line_end
    }

    /// The bytes to read again after giving up on the open quoted field.
    pub fn take_replay(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.replay)
    }

    /// Follow `bytes`. Returns the offset just after the byte at which the
    /// open quoted field, having spanned a line end, grew past the limit:
    /// the quote is taken as unterminated there.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let ends_field = |b: u8| b == self.delimiter || b == b'\n' || b == b'\r';
        let mut i = 0;
        while i < bytes.len() {
            if matches!(self.state, State::FieldStart | State::Unquoted) {
                // Outside a quoted field only a quote matters, and only at
                // a field's start: skip to the next quote at once (most
                // files have none), the state set by the byte before it.
                let next = memchr::memchr(b'"', &bytes[i..]).map_or(bytes.len(), |k| i + k);
                if next > i {
                    self.state = if ends_field(bytes[next - 1]) {
                        State::FieldStart
                    } else {
                        State::Unquoted
                    };
                }
                if next == bytes.len() {
                    return None;
                }
                if self.state == State::FieldStart {
                    self.state = State::Quoted;
                    self.quoted_bytes = 0;
                    self.past_line_end = false;
                    self.replay.clear();
                }
                i = next + 1;
                continue;
            }
            let b = bytes[i];
            i += 1;
            match self.state {
                State::QuoteInQuoted if b != b'"' => {
                    self.state = if ends_field(b) {
                        State::FieldStart
                    } else {
                        State::Unquoted
                    };
                    self.past_line_end = false;
                    self.replay.clear();
                    continue;
                }
                State::QuoteInQuoted => self.state = State::Quoted,
                State::Quoted if b == b'"' => self.state = State::QuoteInQuoted,
                State::Quoted | State::FieldStart | State::Unquoted => {}
            }
            // Inside the quoted field (its closing quote not yet known).
            self.quoted_bytes += 1;
            if self.past_line_end {
                self.replay.push(b);
            } else if b == b'\n' || b == b'\r' {
                self.past_line_end = true;
            }
            if self.past_line_end && self.quoted_bytes > self.limit {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watch one byte at a time, as it was before the quote skip: the
    /// oracle the fast path is held to.
    fn feed_bytewise(w: &mut QuoteWatch, bytes: &[u8]) -> Option<usize> {
        let ends_field = |b: u8| b == w.delimiter || b == b'\n' || b == b'\r';
        for (i, &b) in bytes.iter().enumerate() {
            match w.state {
                State::FieldStart if b == b'"' => {
                    w.state = State::Quoted;
                    w.quoted_bytes = 0;
                    w.past_line_end = false;
                    w.replay.clear();
                    continue;
                }
                State::FieldStart | State::Unquoted => {
                    w.state = if ends_field(b) {
                        State::FieldStart
                    } else {
                        State::Unquoted
                    };
                    continue;
                }
                State::QuoteInQuoted if b != b'"' => {
                    w.state = if ends_field(b) {
                        State::FieldStart
                    } else {
                        State::Unquoted
                    };
                    w.past_line_end = false;
                    w.replay.clear();
                    continue;
                }
                State::QuoteInQuoted => w.state = State::Quoted,
                State::Quoted if b == b'"' => w.state = State::QuoteInQuoted,
                State::Quoted => {}
            }
            w.quoted_bytes += 1;
            if w.past_line_end {
                w.replay.push(b);
            } else if b == b'\n' || b == b'\r' {
                w.past_line_end = true;
            }
            if w.past_line_end && w.quoted_bytes > w.limit {
                return Some(i + 1);
            }
        }
        None
    }

    #[test]
    fn skipping_to_the_next_quote_follows_the_same_states_as_every_byte() {
        // A small deterministic generator: quotes, delimiters, line ends
        // and letters in every order, fed in chunks of every size.
        let alphabet = b"\"\",;\n\rab";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for case in 0..3000 {
            let len = (case % 40) + 1;
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let chunk = (case % 7) + 1;
            let mut fast = QuoteWatch::new(b',', 5);
            let mut slow = QuoteWatch::new(b',', 5);
            for part in text.chunks(chunk) {
                let (f, s) = (fast.feed(part), feed_bytewise(&mut slow, part));
                assert_eq!(
                    f,
                    s,
                    "{:?} in chunks of {chunk}",
                    String::from_utf8_lossy(&text)
                );
                assert_eq!(fast.state, slow.state);
                assert_eq!(fast.quoted_bytes, slow.quoted_bytes);
                assert_eq!(fast.past_line_end, slow.past_line_end);
                assert_eq!(fast.replay, slow.replay);
                if f.is_some() {
                    fast.reset();
                    slow.reset();
                }
            }
        }
    }

    #[test]
    fn closed_and_escaped_quotes_end_inside_no_field() {
        let mut w = QuoteWatch::new(b',', 8);
        assert_eq!(w.feed(b"a,\"b\nc\",\"x\"\"y\"\n"), None);
        assert!(!w.in_quoted_field());
        assert_eq!(
            w.feed(b"q\"x,y\n"),
            None,
            "a quote inside an unquoted field"
        );
        assert!(!w.in_quoted_field());
    }

    #[test]
    fn a_quote_open_past_a_line_end_and_the_limit_is_given_up_with_what_followed() {
        let mut w = QuoteWatch::new(b',', 8);
        assert_eq!(w.feed(b"a,\"bc\nde,f\nmore"), Some(12));
        assert_eq!(w.take_replay(), b"de,f\nm");
    }

    #[test]
    fn a_long_quoted_field_on_one_line_is_not_given_up() {
        let mut w = QuoteWatch::new(b',', 8);
        assert_eq!(w.feed(b"\"0123456789012345\",x\n"), None);
        assert!(!w.in_quoted_field());
    }
}
